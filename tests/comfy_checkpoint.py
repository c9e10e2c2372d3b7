"""A tiny random SD1.5 checkpoint that ComfyUI loads as a real one, built offline for tests.

ComfyUI recognises SD1.x by tensor shapes (UNet width 320, text width 768), so the model is shrunk in depth, not
width: one UNet resolution level with one res block and one transformer block and no middle block; the CLIP-L text
encoder and the VAE at full size (ComfyUI builds those from fixed configs). Keys follow the standard single-file
layout (``model.diffusion_model.*``, ``cond_stage_model.transformer.text_model.*``, ``first_stage_model.*``).
Layer-norm biases are non-zero so prompt weighting behaves as on a trained model.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_WIDTH = 320
TEXT_WIDTH = 768
TIME_WIDTH = 4 * UNET_WIDTH
CLIP_LAYERS = 12
VAE_CHANNELS = (128, 256, 512, 512)


class _Weights:
    """Collects random tensors under single-file key names."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}

    def _random(self, shape, scale: float) -> torch.Tensor:
        return (torch.randn(shape, generator=self.generator) * scale).half()

    def norm(self, key: str, width: int) -> None:
        self.tensors[f"{key}.weight"] = 1 + self._random((width,), 0.05)
        self.tensors[f"{key}.bias"] = self._random((width,), 0.05)

    def linear(self, key: str, width_in: int, width_out: int, bias: bool = True) -> None:
        self.tensors[f"{key}.weight"] = self._random((width_out, width_in), 1 / math.sqrt(width_in))
        if bias:
            self.tensors[f"{key}.bias"] = self._random((width_out,), 0.02)

    def conv(self, key: str, width_in: int, width_out: int, kernel: int) -> None:
        fan_in = width_in * kernel * kernel
        self.tensors[f"{key}.weight"] = self._random((width_out, width_in, kernel, kernel), 1 / math.sqrt(fan_in))
        self.tensors[f"{key}.bias"] = self._random((width_out,), 0.02)

    def embedding(self, key: str, count: int, width: int) -> None:
        self.tensors[f"{key}.weight"] = self._random((count, width), 0.02)


def _unet(w: _Weights, prefix: str = "model.diffusion_model.") -> None:
    c = UNET_WIDTH
    w.linear(f"{prefix}time_embed.0", c, TIME_WIDTH)
    w.linear(f"{prefix}time_embed.2", TIME_WIDTH, TIME_WIDTH)
    w.conv(f"{prefix}input_blocks.0.0", 4, c, 3)
    _unet_level_block(w, f"{prefix}input_blocks.1", c)
    for index in range(2):  # one output block per input block, each reading a skip connection
        _unet_level_block(w, f"{prefix}output_blocks.{index}", 2 * c)
    w.norm(f"{prefix}out.0", c)
    w.conv(f"{prefix}out.2", c, 4, 3)


def _unet_level_block(w: _Weights, key: str, width_in: int) -> None:
    c = UNET_WIDTH
    w.norm(f"{key}.0.in_layers.0", width_in)
    w.conv(f"{key}.0.in_layers.2", width_in, c, 3)
    w.linear(f"{key}.0.emb_layers.1", TIME_WIDTH, c)
    w.norm(f"{key}.0.out_layers.0", c)
    w.conv(f"{key}.0.out_layers.3", c, c, 3)
    if width_in != c:
        w.conv(f"{key}.0.skip_connection", width_in, c, 1)
    t = f"{key}.1"
    w.norm(f"{t}.norm", c)
    w.conv(f"{t}.proj_in", c, c, 1)
    block = f"{t}.transformer_blocks.0"
    for attention, context in (("attn1", c), ("attn2", TEXT_WIDTH)):
        w.linear(f"{block}.{attention}.to_q", c, c, bias=False)
        w.linear(f"{block}.{attention}.to_k", context, c, bias=False)
        w.linear(f"{block}.{attention}.to_v", context, c, bias=False)
        w.linear(f"{block}.{attention}.to_out.0", c, c)
    w.linear(f"{block}.ff.net.0.proj", c, 8 * c)  # GEGLU: two halves of 4c
    w.linear(f"{block}.ff.net.2", 4 * c, c)
    for index in (1, 2, 3):
        w.norm(f"{block}.norm{index}", c)
    w.conv(f"{t}.proj_out", c, c, 1)


def _clip_text(w: _Weights, prefix: str = "cond_stage_model.transformer.text_model.") -> None:
    d = TEXT_WIDTH
    w.embedding(f"{prefix}embeddings.token_embedding", 49408, d)
    w.embedding(f"{prefix}embeddings.position_embedding", 77, d)
    for layer in range(CLIP_LAYERS):
        key = f"{prefix}encoder.layers.{layer}"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w.linear(f"{key}.self_attn.{projection}", d, d)
        w.norm(f"{key}.layer_norm1", d)
        w.norm(f"{key}.layer_norm2", d)
        w.linear(f"{key}.mlp.fc1", d, 4 * d)
        w.linear(f"{key}.mlp.fc2", 4 * d, d)
    w.norm(f"{prefix}final_layer_norm", d)


def _vae_resnet(w: _Weights, key: str, width_in: int, width_out: int) -> None:
    w.norm(f"{key}.norm1", width_in)
    w.conv(f"{key}.conv1", width_in, width_out, 3)
    w.norm(f"{key}.norm2", width_out)
    w.conv(f"{key}.conv2", width_out, width_out, 3)
    if width_in != width_out:
        w.conv(f"{key}.nin_shortcut", width_in, width_out, 1)


def _vae_middle(w: _Weights, key: str, width: int) -> None:
    _vae_resnet(w, f"{key}.block_1", width, width)
    w.norm(f"{key}.attn_1.norm", width)
    for projection in ("q", "k", "v", "proj_out"):
        w.conv(f"{key}.attn_1.{projection}", width, width, 1)
    _vae_resnet(w, f"{key}.block_2", width, width)


def _vae(w: _Weights, prefix: str = "first_stage_model.") -> None:
    channels = VAE_CHANNELS
    encoder, decoder = f"{prefix}encoder", f"{prefix}decoder"
    w.conv(f"{encoder}.conv_in", 3, channels[0], 3)
    width = channels[0]
    for level, level_width in enumerate(channels):
        for block in range(2):
            _vae_resnet(w, f"{encoder}.down.{level}.block.{block}", width, level_width)
            width = level_width
        if level < len(channels) - 1:
            w.conv(f"{encoder}.down.{level}.downsample.conv", width, width, 3)
    _vae_middle(w, f"{encoder}.mid", width)
    w.norm(f"{encoder}.norm_out", width)
    w.conv(f"{encoder}.conv_out", width, 8, 3)
    w.conv(f"{prefix}quant_conv", 8, 8, 1)
    w.conv(f"{prefix}post_quant_conv", 4, 4, 1)
    w.conv(f"{decoder}.conv_in", 4, channels[-1], 3)
    _vae_middle(w, f"{decoder}.mid", channels[-1])
    width = channels[-1]
    for level in reversed(range(len(channels))):
        for block in range(3):
            _vae_resnet(w, f"{decoder}.up.{level}.block.{block}", width, channels[level])
            width = channels[level]
        if level > 0:
            w.conv(f"{decoder}.up.{level}.upsample.conv", width, width, 3)
    w.norm(f"{decoder}.norm_out", width)
    w.conv(f"{decoder}.conv_out", width, 3, 3)


def build_tiny_sd15(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint (fp16, ~430 MB) to ``path``; return the path."""
    path = Path(path)
    weights = _Weights(seed)
    _unet(weights)
    _clip_text(weights)
    _vae(weights)
    return write_checkpoint(weights.tensors, path)


def write_checkpoint(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``tensors`` to ``path`` through a temporary name, so a parallel run never reads half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    save_file(tensors, str(partial))
    partial.replace(path)
    return path


def cached_tiny_sd15(cache_dir: Path) -> Path:
    """The checkpoint in ``cache_dir``, named after this file's content so a changed recipe builds a new one."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    path = Path(cache_dir) / f"tiny-sd15-{digest}.safetensors"
    if path.exists():
        return path
    for stale in Path(cache_dir).glob("tiny-sd15*.safetensors"):
        stale.unlink(missing_ok=True)
    return build_tiny_sd15(path)
