"""ToyIQS: ground truth scores about 1, wrong content, noise, blur and smoothed-away grain score low."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adadiff.trainer.embedded import world
from adadiff.trainer.embedded.scorer import CLEAN_TOLERANCE, ToyIQS, expected_grain_spread

SCENES = [world.sample_scene(np.random.default_rng(i)) for i in range(40)]
PROMPTS = [s.caption() for s in SCENES]
GRAINY = "two large grainy red circles and a small blue square on a grainy grey background"


def renders(captions, seed):
    return torch.from_numpy(world.render_batch(captions, seed)).permute(0, 3, 1, 2)


def test_ground_truth_scores_about_one():
    out = ToyIQS().score(renders(PROMPTS, 0), PROMPTS)
    assert out["alignment"].mean() >= 0.98
    assert torch.equal(out["cleanliness"], torch.ones(len(PROMPTS)))
    assert out["fidelity"].mean() >= 0.98 and out["iqs"].mean() >= 0.98
    assert {"iqs", "alignment", "fidelity", "cleanliness", "grain"} <= set(out)
    assert all(v.shape == (len(PROMPTS),) for v in out.values())


def test_wrong_content_scores_low_on_alignment():
    shifted = PROMPTS[1:] + PROMPTS[:1]  # every image judged against another prompt's caption
    assert ToyIQS().score(renders(PROMPTS, 0), shifted)["alignment"].mean() <= 0.6


def test_noise_scores_low():
    truth = renders(PROMPTS, 0)
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    assert ToyIQS().score(noise, PROMPTS)["iqs"].max() <= 0.5
    noisy = (truth + 0.1 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ToyIQS().score(noisy, PROMPTS)["cleanliness"].mean() <= 0.6


def test_blur_costs_cleanliness():
    truth = renders(PROMPTS, 0)
    blurred = F.avg_pool2d(F.pad(truth, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert ToyIQS().score(blurred, PROMPTS)["cleanliness"].mean() <= 0.85


def test_invisible_differences_cost_nothing():
    truth = renders(PROMPTS, 0)
    jitter = (truth + 1 / 255 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    clean, jittered = ToyIQS().score(truth, PROMPTS), ToyIQS().score(jitter, PROMPTS)
    assert torch.equal(jittered["cleanliness"], clean["cleanliness"])
    assert (jittered["fidelity"] - clean["fidelity"]).abs().max() <= 0.1  # grain regions: a 1/255 spread more or less


def test_grain_smoothed_away_scores_low():
    truth = renders([GRAINY] * 4, 3)
    smooth = truth.clone()
    pixels = smooth.permute(0, 2, 3, 1)  # a view: flattening its grainy regions flattens `smooth`
    for rgb in (world.BACKGROUND_COLOURS["grey"][0], world.OBJECT_COLOURS["red"]):
        base = torch.tensor(rgb, dtype=smooth.dtype) / 255
        pixels[(pixels - base).abs().amax(-1) <= 2.5 * world.GRAIN_STD] = base
    scorer = ToyIQS()
    grainy, flat = scorer.score(truth, [GRAINY] * 4), scorer.score(smooth, [GRAINY] * 4)
    assert grainy["grain"].min() >= 0.8 and flat["grain"].max() <= 0.1
    assert (grainy["fidelity"] - flat["fidelity"]).min() >= 0.5
    assert (grainy["alignment"] - flat["alignment"]).min() > 0  # a grainy caption read as plain fills


def test_expected_grain_spread_allows_for_clipping():
    from adadiff.trainer.embedded.checker import PALETTE

    grey = int(np.argmin(np.abs(PALETTE - np.array(world.BACKGROUND_COLOURS["grey"][0]) / 255).sum(-1)))
    black = int(np.argmin(np.abs(PALETTE - np.array(world.BACKGROUND_COLOURS["black"][0]) / 255).sum(-1)))
    assert expected_grain_spread(grey) == pytest.approx(0.959 * world.GRAIN_STD, rel=0.02)  # normal clipped at 2 std
    assert expected_grain_spread(black) < expected_grain_spread(grey)  # offsets below 0 are clipped away
    assert 2 * CLEAN_TOLERANCE * 255 == pytest.approx(43.3, abs=0.1)  # the two closest palette shades


def test_scores_are_deterministic_and_in_range():
    images = renders(PROMPTS, 1)
    a, b = ToyIQS().score(images, PROMPTS), ToyIQS().score(images, PROMPTS)
    for key in a:
        assert torch.equal(a[key], b[key])
        assert 0 <= a[key].min() and a[key].max() <= 1


def test_bad_calls_and_settings_are_refused():
    with pytest.raises(ValueError, match="prompts"):
        ToyIQS().score(renders(PROMPTS[:2], 0), PROMPTS[:1])
    with pytest.raises(ValueError):
        ToyIQS(grain_saturation=0.0)
    assert ToyIQS.name == "toy" and ToyIQS().reference_steps is None
