"""IQS backends loaded through their real open_clip paths from weight files written here (random weights, no hub).

A tiny open_clip architecture stands in for ViT-L-14 / ViT-H-14: the loading, preprocessing and scoring code is the
same for every architecture, only the file size differs.
"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from PIL import Image

from adadiff.trainer.rewards import KNOWN_REWARDS, RewardBackend, build_reward, parse_weights
from adadiff.trainer.rewards.aesthetic import AestheticHead
from adadiff.trainer.rewards.open_clip_models import clip_pixels

TINY = "adadiff-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
PROMPTS = ["a red circle", "two blue squares on a green background"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(reference model with the written weights, path of a .pt state_dict, path of a .safetensors copy)."""
    folder = tmp_path_factory.mktemp("clip")
    config_file = folder / f"{TINY}.json"
    config_file.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None).eval()
    torch.save(model.state_dict(), folder / "tiny.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "tiny.safetensors")
    return model, folder / "tiny.pt", folder / "tiny.safetensors"


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(1)
    head = AestheticHead(TINY_CONFIG["embed_dim"]).eval()
    path = tmp_path_factory.mktemp("aesthetic") / "head.pth"
    torch.save(head.state_dict(), path)
    return head, path


def images(batch=2, size=48, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_cosine(model, batch, prompts):
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(clip_pixels(model, batch)), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer(TINY)(prompts)), dim=-1)
    return (image * text).sum(-1)


def test_tensor_preprocessing_matches_open_clips_own_transform(tiny_clip):
    model = tiny_clip[0]
    batch = images(size=32)  # already the model's size: no resampling, so the two must agree to rounding
    transform = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    pil = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for image in batch]
    theirs = torch.stack([transform(p) for p in pil])
    ours = clip_pixels(model, (batch * 255).round() / 255)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_tensor_preprocessing_resamples_like_open_clips_pil_transform(tiny_clip):
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 12, 8, generator=torch.Generator().manual_seed(2)),
                                             size=(96, 64), mode="bilinear")
    smooth = (smooth * 255).round() / 255
    transform = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    pil = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for image in smooth]
    theirs = torch.stack([transform(p) for p in pil])
    ours = clip_pixels(tiny_clip[0], smooth)
    assert ours.shape == theirs.shape and (ours - theirs).abs().mean() < 0.01  # ~1/255 of a pixel or less


def test_tensor_preprocessing_resizes_shorter_side_and_crops_centre(tiny_clip):
    wide = torch.zeros(1, 3, 40, 80)
    wide[..., :, 20:60] = 1.0  # the centre square is white, the sides black
    pixels = clip_pixels(tiny_clip[0], wide)
    assert pixels.shape == (1, 3, 32, 32)
    white = (1.0 - torch.tensor(open_clip.OPENAI_DATASET_MEAN)) / torch.tensor(open_clip.OPENAI_DATASET_STD)
    assert torch.allclose(pixels[0, :, 16, 16], white, atol=1e-3)


@pytest.mark.parametrize("weights", [1, 2], ids=["pt", "safetensors"])
def test_clip_score_uses_the_written_weights(tiny_clip, weights):
    model, path = tiny_clip[0], tiny_clip[weights]
    backend = build_reward("clip", model=TINY, pretrained=str(path), device="cpu")
    assert isinstance(backend, RewardBackend) and backend.name == "clip" and backend.reference_steps is None
    batch = images()
    result = backend.score(batch, PROMPTS)
    assert set(result) == {"iqs", "clip"} and result["iqs"].shape == (2,)
    assert torch.allclose(result["iqs"], reference_cosine(model, batch, PROMPTS).clamp(min=0), atol=1e-5)
    assert ((result["iqs"] >= 0) & (result["iqs"] <= 1)).all()


def test_clip_from_an_open_clip_local_dir(tiny_clip, tmp_path):
    """'local-dir:' (and 'hf-hub:') architectures carry their own weights; no pretrained is needed."""
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_clip[0].state_dict().items()},
              tmp_path / "open_clip_model.safetensors")
    backend = build_reward("clip", model=f"local-dir:{tmp_path}", pretrained=None, device="cpu")
    batch = images()
    assert torch.allclose(backend.score(batch, PROMPTS)["iqs"],
                          reference_cosine(tiny_clip[0], batch, PROMPTS).clamp(min=0), atol=1e-5)


def test_clip_score_differs_between_prompts(tiny_clip):
    backend = build_reward("clip", model=TINY, pretrained=str(tiny_clip[1]), device="cpu")
    batch = images(batch=1).repeat(2, 1, 1, 1)
    raw = reference_cosine(tiny_clip[0], batch, PROMPTS)
    assert raw[0] != raw[1]
    assert torch.allclose(backend.score(batch, PROMPTS)["iqs"], raw.clamp(min=0), atol=1e-5)


def test_missing_weights_file_is_named_with_a_remedy(tmp_path):
    missing = tmp_path / "nowhere" / "clip.pt"
    with pytest.raises(FileNotFoundError, match=str(missing).replace("\\", "\\\\") + ".*pretrained="):
        build_reward("clip", model=TINY, pretrained=str(missing))


def test_weights_of_another_architecture_are_refused(tiny_clip):
    with pytest.raises(ValueError, match="could not load ViT-B-32 weights"):
        build_reward("clip", model="ViT-B-32", pretrained=str(tiny_clip[1]), device="cpu")


def test_bad_batches_are_refused(tiny_clip):
    backend = build_reward("clip", model=TINY, pretrained=str(tiny_clip[1]), device="cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        backend.score(images() * 2 - 1, PROMPTS)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        backend.score(images(), PROMPTS[:1])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backend.score(images()[:, :1], PROMPTS)


def test_aesthetic_is_the_head_on_normalised_image_embeddings(tiny_clip, head_file):
    head, path = head_file
    backend = build_reward("aesthetic", head=str(path), model=TINY, pretrained=str(tiny_clip[1]), device="cpu")
    batch = images()
    with torch.no_grad():
        embedding = torch.nn.functional.normalize(tiny_clip[0].encode_image(clip_pixels(tiny_clip[0], batch)), dim=-1)
        expected = head(embedding) / 10
    result = backend.score(batch, PROMPTS)
    assert set(result) == {"iqs", "aesthetic"}
    assert torch.allclose(result["iqs"], expected, atol=1e-5)


def test_aesthetic_head_layout_matches_the_published_predictor():
    keys = set(AestheticHead().state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert [layer.out_features for layer in AestheticHead().layers if hasattr(layer, "out_features")] == \
        [1024, 128, 64, 16, 1]


def test_aesthetic_errors(tiny_clip, tmp_path):
    missing = tmp_path / "head.pth"
    with pytest.raises(FileNotFoundError, match="head.pth.*improved-aesthetic-predictor"):
        build_reward("aesthetic", head=str(missing), model=TINY, pretrained=str(tiny_clip[1]), device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read the aesthetic predictor head"):
        build_reward("aesthetic", head=str(garbage), model=TINY, pretrained=str(tiny_clip[1]), device="cpu")
    wide = tmp_path / "wide.pth"
    torch.save(AestheticHead(768).state_dict(), wide)
    with pytest.raises(ValueError, match="768-wide"):
        build_reward("aesthetic", head=str(wide), model=TINY, pretrained=str(tiny_clip[1]), device="cpu")


def test_hpsv2_reads_a_checkpoint_with_state_dict_wrapper(tiny_clip, tmp_path):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in tiny_clip[0].state_dict().items()}}, path)
    backend = build_reward("hpsv2", checkpoint=str(path), model=TINY, device="cpu")
    batch = images()
    result = backend.score(batch, PROMPTS)
    assert set(result) == {"iqs", "hpsv2"}
    assert torch.allclose(result["iqs"], reference_cosine(tiny_clip[0], batch, PROMPTS), atol=1e-5)


def test_hpsv2_release_name_offline_explains_how_to_get_it():
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by `make test`) so nothing is downloaded")
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt.*xswu/HPSv2"):
        build_reward("hpsv2", checkpoint="v2.1", model=TINY)


def test_composite_is_the_weighted_sum_of_its_components(tiny_clip, head_file):
    settings = {"clip": {"model": TINY, "pretrained": str(tiny_clip[1]), "device": "cpu"},
                "aesthetic": {"head": str(head_file[1]), "model": TINY, "pretrained": str(tiny_clip[1]),
                              "device": "cpu"}}
    backend = build_reward("composite:clip=0.25,aesthetic=0.75", **settings)
    assert backend.reference_steps is None
    batch = images()
    result = backend.score(batch, PROMPTS)
    assert set(result) == {"iqs", "clip", "aesthetic"}
    assert torch.allclose(result["iqs"], 0.25 * result["clip"] + 0.75 * result["aesthetic"])
    same = build_reward("composite", weights={"clip": 0.25, "aesthetic": 0.75}, **settings).score(batch, PROMPTS)
    assert torch.allclose(same["iqs"], result["iqs"])


def test_composite_components_with_different_reference_steps_are_refused():
    from adadiff.trainer.rewards.composite import CompositeScore

    class NeedsReference:
        name, reference_steps = "ref", None

    a, b = NeedsReference(), NeedsReference()
    a.reference_steps, b.reference_steps = 50, 100
    with pytest.raises(ValueError, match="different step counts"):
        CompositeScore({"a": (0.5, a), "b": (0.5, b)})
    assert CompositeScore({"a": (1.0, a)}).reference_steps == 50


def test_parse_weights():
    assert parse_weights("clip=0.5, aesthetic=0.5") == {"clip": 0.5, "aesthetic": 0.5}
    assert parse_weights("clip") == {"clip": 1.0}
    with pytest.raises(ValueError, match="name=number"):
        parse_weights("clip=lots")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known rewards: " + ", ".join(KNOWN_REWARDS)):
        build_reward("pickscore")
    with pytest.raises(ValueError, match="known rewards"):
        build_reward("composite:clip=1,pickscore=1")
    with pytest.raises(ValueError, match="components are"):
        build_reward("composite:clip=1", aesthetic={})


def test_unknown_settings_are_refused_before_anything_loads():
    with pytest.raises(ValueError, match="clip reward takes no setting modle; its settings: model, pretrained"):
        build_reward("clip", modle="ViT-B-32")
    with pytest.raises(ValueError, match="aesthetic reward takes no setting colour"):  # clip would download
        build_reward("composite:clip=1,aesthetic=1", aesthetic={"colour": "red"})


def test_device_reaches_every_model_backend(tiny_clip, head_file):
    backend = build_reward("composite:clip=1,aesthetic=1", device="cpu",
                           clip={"model": TINY, "pretrained": str(tiny_clip[1])},
                           aesthetic={"head": str(head_file[1]), "model": TINY, "pretrained": str(tiny_clip[1])})
    for _, part in backend.parts.values():
        assert next(part.model.parameters()).device.type == "cpu"


def test_toy_reward_is_the_embedded_worlds_scorer():
    from adadiff.trainer.embedded import ToyIQS

    backend = build_reward("toy", device="cpu", grain_saturation=0.8)  # device is for model backends: ignored here
    assert type(backend) is ToyIQS and isinstance(backend, RewardBackend) and backend.grain_saturation == 0.8
    assert backend.reference_steps is None and build_reward("composite:toy=1").reference_steps is None


def test_default_architectures_and_tags_exist_in_open_clip():
    """The defaults users get resolve to real open_clip configs and tags (checked without downloading)."""
    from adadiff.trainer.rewards import aesthetic, clip_score, hps

    assert {"ViT-L-14-quickgelu", "ViT-H-14"} <= set(open_clip.list_models())
    assert clip_score.DEFAULT_PRETRAINED in open_clip.list_pretrained_tags_by_model(clip_score.DEFAULT_ARCHITECTURE)
    assert open_clip.get_model_config("ViT-L-14-quickgelu")["quick_gelu"]  # what OpenAI's weights were trained with
    assert open_clip.get_model_config("ViT-L-14")["embed_dim"] == AestheticHead().layers[0].in_features
    assert aesthetic.HEAD_URL.endswith("sac+logos+ava1-l14-linearMSE.pth")
    assert set(hps.RELEASES.values()) == {"HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt"}


def test_openai_tags_get_quick_gelu_even_on_the_plain_architecture():
    from adadiff.trainer.rewards.open_clip_models import tag_uses_quick_gelu

    assert tag_uses_quick_gelu("ViT-L-14", "openai")
    assert not tag_uses_quick_gelu("ViT-H-14", "laion2b_s32b_b79k")  # HPS v2's base: plain GELU
    assert not tag_uses_quick_gelu("ViT-L-14", "/weights/clip.pt")
