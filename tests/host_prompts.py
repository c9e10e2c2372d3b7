"""What the prompt-syntax tests share: the prompts, and a trainer pipeline that reads prompts with the text encoder
of the tiny SD1.5 checkpoint the ComfyUI tests run (tests/comfy_checkpoint.py).

The pipeline is a real diffusers StableDiffusionPipeline whose CLIP-L text encoder carries that checkpoint's
weights (full size, random, non-zero layer-norm biases) and whose tokenizer is CLIP's vocabulary as the trainer
writes it; its UNet and VAE are tiny, fresh and only there so that the trainer's reward-table code can sample
(the checkpoint's own depth-shrunk UNet is a shape ComfyUI accepts but diffusers' converter does not).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adadiff.trainer.model_configs import FAMILIES
from adadiff.trainer.model_configs.clip_vocab import write_clip_vocab
from comfy_checkpoint import write_checkpoint

CLIP_PREFIX = "cond_stage_model.transformer.text_model."
# Channels of the CLIP output raised by A1111_BIAS_SHIFT in the A1111 variant of the checkpoint (see a1111_checkpoint).
A1111_BIAS_CHANNELS = 8
A1111_BIAS_SHIFT = 8.0

# Weighted, nested, escaped, long, BREAK, LoRA tags, prompt editing: each host syntax in turn.
PROMPTS = (
    "a lighthouse at dusk",
    "a (red:1.3) lighthouse, ((stormy sea)), (dusk:0.7), [faded]",
    "a \\(literal\\) (bracket (nested (deep:1.4) twice)) test",
    "a [cat:dog:0.5] on a sofa, [summer|winter] light",
    "a castle <lora:detail_tweaker:0.8> on a hill BREAK a dragon in the sky",
    ", ".join(["a highly detailed (oil painting:1.2) of a castle on a hill"] * 9),
    "(" + ", ".join(["intricate gold ornament"] * 30) + ":1.1), (night sky:1.3)",
    "masterpiece, best quality, " + " ".join(f"word{n}" for n in range(70)) + ", ((sharp focus)), 8k",
)

SUBJECTS = ("a lighthouse at dusk", "a red fox in the snow", "a bowl of fruit on a table")
FORMS = (
    "{}",
    "({}:1.3), highly detailed",
    "{}, ((masterpiece)), [blurry]",
    "\\({}\\), (cinematic (soft light:1.2))",
    ", ".join(["{0}", "intricate details", "volumetric light", "(sharp focus:1.1)"] * 6),
    "{} BREAK dramatic sky, (storm clouds:1.2)",
    "{} <lora:add_detail:0.7>, film grain",
    "[{}:a watercolor painting:0.5]",
)
# The end-to-end set: every form around every subject, then the prompts above, each once (a reward table refuses
# repeats).
AGREEMENT_PROMPTS = tuple(dict.fromkeys(tuple(form.format(subject) for form in FORMS for subject in SUBJECTS) + PROMPTS))


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """CLIP's tokenizer as SD1.5 configures it, its vocabulary files written into ``folder``."""
    write_clip_vocab(folder)
    tokenizer_config = json.loads((FAMILIES["sd15"].folder / "tokenizer" / "tokenizer_config.json").read_text())
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         **{k: v for k, v in tokenizer_config.items() if k != "tokenizer_class"})


def small_text_encoder(folder: Path, width: int = 64, seed: int = 0) -> SimpleNamespace:
    """A text-only stand-in of a pipeline (``tokenizer``, ``text_encoder``) for A1111's emphasis: a 2-layer CLIP of
    ``width`` with weights drawn from a seeded generator (the same on every machine) and, as real CLIP has, output
    states whose mean over tokens and channels is far from zero. A1111's "Original" emphasis divides by that mean;
    the full-size random CLIP-L above has a mean of ~1e-7 for some prompts, which makes the webui's own numbers
    depend on the summation order (thread count, hardware) by percents."""
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                            eos_token_id=49407, pad_token_id=49407)
    text_encoder = CLIPTextModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in text_encoder.state_dict().items():
            if name.endswith("position_ids"):
                continue
            if "norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                tensor.copy_(base + 0.05 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / max(tensor.shape[-1], 1) ** 0.5)
        text_encoder.final_layer_norm.bias[:4] += 2.0  # a few large channels, as CLIP's output has
    return SimpleNamespace(tokenizer=clip_tokenizer(folder), text_encoder=text_encoder)


def checkpoint_text_pipeline(checkpoint: Path, folder: Path) -> StableDiffusionPipeline:
    """The pipeline described above, with its tokenizer files written into ``folder``."""
    family = FAMILIES["sd15"].folder
    tokenizer = clip_tokenizer(folder)
    config = CLIPTextConfig.from_pretrained(family / "text_encoder")
    text_encoder = CLIPTextModel(config)
    weights = {key[len(CLIP_PREFIX):]: value.float() for key, value in load_file(str(checkpoint)).items()
               if key.startswith(CLIP_PREFIX)}
    missing, unexpected = text_encoder.load_state_dict(weights, strict=False)
    assert not unexpected and all("position_ids" in key for key in missing), (missing, unexpected)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.hidden_size, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def a1111_checkpoint(base: Path, folder: Path) -> Path:
    """The checkpoint at ``base`` with its CLIP's final layer-norm bias raised by A1111_BIAS_SHIFT on its first
    A1111_BIAS_CHANNELS channels (in fp16, as stored), written into ``folder`` as ``a1111-<name>``.

    A1111's emphasis divides by each chunk's mean state. On the random CLIP-L that mean is ~1e-7 for some prompts,
    where a real v1.10.1 webui's states differed from the trainer's ``a1111`` reading by 2e-3 (summation order);
    raised this way the mean is ~0.08, as a real CLIP's large channels keep it far from zero, and they differed by
    4e-6 at most. A real webui loads this file; the trainer reads it through :func:`checkpoint_text_pipeline`."""
    path = Path(folder) / f"a1111-{base.name}"
    tensors = load_file(str(base))
    key = f"{CLIP_PREFIX}final_layer_norm.bias"
    bias = tensors[key].clone()
    bias[:A1111_BIAS_CHANNELS] += A1111_BIAS_SHIFT
    tensors[key] = bias
    return write_checkpoint(tensors, path)
