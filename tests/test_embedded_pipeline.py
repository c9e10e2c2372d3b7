"""The packaged embedded model loads offline as a standard StableDiffusionPipeline and generates."""

import os

import pytest
import torch

from adadiff.trainer.embedded import MODEL_DIR, held_out_prompts, load_embedded_pipeline
from adadiff.trainer.embedded.sampling import render_steps

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").exists(), reason="model not exported")


@pytest.fixture(scope="module")
def pipe():
    os.environ["HF_HUB_OFFLINE"] = "1"
    return load_embedded_pipeline()


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
