"""The packaged embedded model loads offline as a standard StableDiffusionPipeline and generates."""

import os

import pytest
import torch

from adadiff.trainer.embedded import MODEL_DIR, held_out_prompts, load_embedded_pipeline
from adadiff.trainer.embedded.sampling import render_steps
from adadiff.trainer.models import encode_prompts, load_pipeline, model_info

# The model ships in the repository and the package (pyproject's package-data): these tests never skip.


@pytest.fixture(scope="module")
def pipe():
    os.environ["HF_HUB_OFFLINE"] = "1"
    return load_embedded_pipeline()


def test_the_name_embedded_resolves_to_the_shipped_model_and_loads(pipe):
    """`--model embedded` loads the packaged model (the same weights), recorded as the embedded family."""
    loaded = load_pipeline("embedded")
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert all(torch.equal(value, pipe.unet.state_dict()[name]) for name, value in loaded.unet.state_dict().items())
    info = model_info("embedded", loaded)
    assert info["model_family"] == "embedded" and info["name"] == "embedded"
    assert info["fingerprint"].startswith("sha256:") and info["token_dim"] == loaded.text_encoder.config.hidden_size
    embeds, _ = encode_prompts(loaded, list(held_out_prompts()[:2]))
    assert embeds.shape[0] == 2 and embeds.shape[-1] == info["token_dim"] and torch.isfinite(embeds).all()


def test_folder_is_small_enough_for_git():
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20


def test_plain_from_pretrained_loads_offline_with_the_documented_settings():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    os.environ["HF_HUB_OFFLINE"] = "1"
    plain = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR))
    assert plain.safety_checker is None
    assert isinstance(plain.scheduler, DDIMScheduler)
    config = plain.scheduler.config
    assert (config.prediction_type, config.beta_schedule, config.timestep_spacing) == (
        "v_prediction", "squaredcos_cap_v2", "trailing")
    assert plain.tokenizer.model_max_length == plain.text_encoder.config.max_position_embeddings
    assert plain.unet.config.sample_size * 2 ** (len(plain.vae.config.block_out_channels) - 1) == 32


def test_short_generation_has_the_right_shape_and_range(pipe):
    out = pipe(list(held_out_prompts()[:2]), num_inference_steps=3, guidance_scale=1.0, output_type="pt").images
    assert out.shape == (2, 3, 32, 32)
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0.01


def test_same_noise_gives_the_same_image(pipe):
    prompts = list(held_out_prompts()[:2])
    a = render_steps(pipe, prompts, seed=0, steps=[2])
    b = render_steps(pipe, prompts, seed=0, steps=[2])
    c = render_steps(pipe, prompts, seed=1, steps=[2])
    assert torch.equal(a, b) and not torch.equal(a, c)
