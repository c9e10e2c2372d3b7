"""The embedded world: captions describe exactly what is rendered; the split is fixed and disjoint."""

import numpy as np
import pytest

from adadiff.trainer.embedded import checker, split, world


def test_captions_round_trip_through_the_parser():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.sample_scene(rng)
        assert world.parse_caption(scene.caption()) == scene


def test_example_caption_of_the_issue_is_in_the_grammar():
    scene = world.parse_caption("three tiny striped blue triangles and a large red circle on a checkered grey background")
    assert scene.groups[0] == world.Group(3, "tiny", "striped", "blue", "triangle")
    assert scene.groups[1] == world.Group(1, "large", "solid", "red", "circle")
    assert (scene.background_pattern, scene.background_colour) == ("checkered", "grey")


@pytest.mark.parametrize("bad", ["a cat on a mat", "seven tiny red squares on a plain grey background",
                                 "a huge red square on a plain grey background", ""])
def test_text_outside_the_grammar_is_rejected(bad):
    with pytest.raises(ValueError):
        world.parse_caption(bad)


def test_rendered_content_matches_its_caption():
    rng = np.random.default_rng(1)
    scores = []
    for _ in range(60):
        scene = world.sample_scene(rng)
        image = world.render(scene, rng)
        assert image.shape == (32, 32, 3) and 0 <= image.min() and image.max() <= 1
        scores.append(checker.check(image, scene))
    for key in ("background", "colour", "size", "count", "shape"):
        assert all(s[key] == 1.0 for s in scores), key
    assert np.mean([s["texture"] for s in scores]) >= 0.95


def test_the_object_pixels_have_exactly_the_captioned_colours():
    scene = world.parse_caption("two small dotted green squares and a large cyan circle on a plain white background")
    image = world.render(scene, np.random.default_rng(3))
    colours = {tuple(int(round(v * 255)) for v in px) for px in image.reshape(-1, 3)}
    allowed = {world.BACKGROUND_COLOURS["white"][0]}
    for name in ("green", "cyan"):
        rgb = np.array(world.OBJECT_COLOURS[name], dtype=np.float32)
        allowed |= {tuple(int(round(v)) for v in rgb), tuple(int(round(v)) for v in rgb * world.DARK)}
    assert colours <= allowed and len(colours) >= 3


def test_renders_are_reproducible_from_the_seed():
    captions = list(split.held_out_prompts()[:5])
    assert np.array_equal(world.render_batch(captions, 4), world.render_batch(captions, 4))
    assert not np.array_equal(world.render_batch(captions, 4), world.render_batch(captions, 5))


def test_held_out_split_is_fixed_distinct_and_never_trained_on():
    held_out = split.held_out_prompts()
    assert len(set(held_out)) == len(held_out) == split.N_HELD_OUT
    assert sum(split.has_held_out_pair(world.parse_caption(c)) for c in held_out) == split.N_HELD_OUT // 2
    training = split.train_prompts(500, seed=3)
    assert not set(training) & set(held_out)
    assert not any(split.is_held_out(c) for c in training)
    assert all(split.is_held_out(c) for c in held_out)


def test_detail_level_reads_the_caption():
    assert world.detail_level("a large red square on a plain grey background") == "simple"
    assert world.detail_level("six tiny striped red squares and four tiny dotted blue circles "
                              "on a checkered grey background") == "detailed"
