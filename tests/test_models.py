"""Loading diffusers folders, schedulers, prompt encoding and model identity, on a tiny random pipeline."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel, UniPCMultistepScheduler)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adadiff.policy import PolicyConfig, choose_steps, init_policy, policy_features
from adadiff.trainer.model_configs.clip_vocab import write_clip_vocab
from adadiff.trainer.models import (encode_prompts, fingerprint, load_pipeline, model_info, prompt_token_limit,
                                    token_lengths)

WIDTH = 32


def tiny_pipeline(tmp_path) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    write_clip_vocab(tmp_path / "vocab")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab" / "vocab.json"), str(tmp_path / "vocab" / "merges.txt"),
                              model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=WIDTH, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=WIDTH,
                                attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_pipeline(folder / "build").save_pretrained(folder / "pipe")
    return folder / "pipe"


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return load_pipeline(str(tiny_folder))


def test_folder_loads_as_a_working_pipeline(pipe):
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.dtype == torch.float32
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_dtype_is_applied(tiny_folder):
    loaded = load_pipeline(str(tiny_folder), dtype=torch.bfloat16)
    assert loaded.unet.dtype == loaded.text_encoder.dtype == loaded.vae.dtype == torch.bfloat16


@pytest.mark.parametrize("name, cls", [("ddim", DDIMScheduler), ("dpm++2m", DPMSolverMultistepScheduler),
                                       ("euler", EulerDiscreteScheduler), ("euler_a", EulerAncestralDiscreteScheduler),
                                       ("unipc", UniPCMultistepScheduler), ("HeunDiscreteScheduler",
                                                                            HeunDiscreteScheduler)])
def test_schedulers_by_name_keep_the_models_noise_schedule(tiny_folder, pipe, name, cls):
    loaded = load_pipeline(str(tiny_folder), scheduler=name)
    assert type(loaded.scheduler) is cls
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"):
        assert loaded.scheduler.config[key] == pipe.scheduler.config[key]
    if name == "dpm++2m":
        assert loaded.scheduler.config.algorithm_type == "dpmsolver++" and loaded.scheduler.config.solver_order == 2


@pytest.mark.parametrize("name", ["dpm3000", "AutoencoderKL", "SchedulerMixin"])
def test_unknown_scheduler_lists_the_allowed_ones(tiny_folder, name):
    with pytest.raises(ValueError, match="ddim, dpm\\+\\+2m, euler, euler_a, unipc"):
        load_pipeline(str(tiny_folder), scheduler=name)


def test_missing_weight_file_is_named(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="unet/diffusion_pytorch_model.safetensors"):
        load_pipeline(str(broken))


def test_missing_or_unsupported_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_pipeline(str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(str(tmp_path / "nowhere"))
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="diffusers folder"):
        load_pipeline(str(tmp_path / "model.onnx"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path / "empty"))


def test_encoding_is_clip_last_hidden_state_with_end_token_padding(pipe):
    prompts = ["a red circle", "two blue squares on a green background, highly detailed"]
    embeds, pooled = encode_prompts(pipe, prompts)
    assert embeds.shape == (2, 77, WIDTH) and pooled is None
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert (ids[0, 5:] == 49407).all()  # start, 3 words, end, then end-token padding as the hosts do
    with torch.no_grad():
        expected = pipe.text_encoder(ids).last_hidden_state
    assert torch.allclose(embeds, expected, atol=1e-6)
    alone, _ = encode_prompts(pipe, prompts[:1])
    assert torch.allclose(alone[0], embeds[0], atol=1e-5)  # no attention mask: batch-mates do not matter


def test_encoded_prompts_feed_a_policy_of_the_models_width(tiny_folder, pipe):
    embeds, pooled = encode_prompts(pipe, ["a red circle", "a cat"])
    info = model_info(str(tiny_folder), pipe)
    policy = init_policy(PolicyConfig(token_dim=info["token_dim"], pooled_dim=info["pooled_dim"]), seed=0,
                         info={"model_family": info["model_family"]})
    choice = choose_steps(policy, policy_features(embeds, pooled=pooled))
    assert choice.probs.shape == (2, len(policy.config.options))


def test_long_prompts_are_counted_before_and_reported_while_encoding(pipe, caplog):
    long_prompt = " ".join(["cat"] * 80)
    assert prompt_token_limit(pipe) == 75
    assert token_lengths(pipe, ["a red circle", long_prompt]) == [3, 80]
    with caplog.at_level(logging.WARNING, logger="adadiff.trainer.models"):
        embeds, _ = encode_prompts(pipe, ["a red circle", long_prompt])
    assert embeds.shape[1] == 77
    assert "1 of 2 prompts exceed 75 tokens" in caplog.text


def test_model_info_and_fingerprint(tiny_folder, pipe, tmp_path):
    info = model_info(str(tiny_folder), pipe)
    assert info == {"model_family": "custom", "name": tiny_folder.name, "fingerprint": info["fingerprint"],
                    "token_dim": WIDTH, "pooled_dim": 0}
    assert info["fingerprint"].startswith("sha256:") and info["fingerprint"] == fingerprint(tiny_folder)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_folder, changed)
    weights = changed / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint(changed) != info["fingerprint"]
