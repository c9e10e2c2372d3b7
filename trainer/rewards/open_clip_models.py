"""Load an open_clip model from a pretrained name or a local weights file, and feed it images as tensors.

Pretrained names (e.g. ``ViT-L-14`` + ``openai``) download through open_clip on users' machines; a path is read
locally with ``weights_only=True``. Images arrive as [B, 3, H, W] tensors in [0, 1]; the model's own preprocessing
(shorter side resized with antialiased bicubic, centre crop, normalisation) is applied on tensors, which is what
open_clip's PIL transform does up to resampling rounding.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def looks_like_path(value: str) -> bool:
    return Path(value).suffix.lower() in _WEIGHT_SUFFIXES or "/" in value or "\\" in value


def load_open_clip(architecture: str, pretrained: str | None, device: torch.device, *, how_to_get: str):
    """(model in eval mode, tokenizer). `how_to_get` ends the error message when a weights file is missing."""
    import open_clip

    if ":" in architecture:  # 'hf-hub:org/repo' or 'local-dir:/path' carries its own weights
        pretrained = None
    elif not pretrained:
        raise ValueError(f"{architecture} needs weights: a pretrained name or a weights file; {how_to_get}")
    elif looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}; {how_to_get}")
        pretrained = str(path)
    if pretrained and architecture not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {architecture!r}; see open_clip.list_models()")
    quick_gelu = bool(pretrained) and tag_uses_quick_gelu(architecture, pretrained)
    try:
        model = open_clip.create_model(architecture, pretrained=pretrained, device=device, require_pretrained=True,
                                       force_quick_gelu=quick_gelu)
    except Exception as error:  # shape mismatches surface as RuntimeError, AssertionError or KeyError
        raise ValueError(f"could not load {architecture} weights {pretrained!r}: {error}; {how_to_get}") from error
    return model.eval().requires_grad_(False), open_clip.get_tokenizer(architecture)


def tag_uses_quick_gelu(architecture: str, pretrained: str) -> bool:
    """OpenAI's weights need QuickGELU; open_clip only warns when the architecture lacks it, and the embeddings
    come out wrong. A pretrained tag says what it was trained with; for a file, name a '-quickgelu' architecture."""
    import open_clip

    return bool(open_clip.get_pretrained_cfg(architecture, pretrained).get("quick_gelu", False))


def clip_pixels(model, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> the normalised square input the model's image tower expects."""
    import open_clip

    config = open_clip.get_model_preprocess_cfg(model)
    size = config["size"] if isinstance(config["size"], int) else config["size"][0]
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    resized = (max(size, round(height * scale)), max(size, round(width * scale)))
    images = F.interpolate(images.float(), size=resized, mode="bicubic", antialias=True, align_corners=False)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    images = images[..., top:top + size, left:left + size].clamp(0, 1)
    mean = torch.tensor(config["mean"], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings [B, E]."""
    device = next(model.parameters()).device
    return F.normalize(model.encode_image(clip_pixels(model, images.to(device))), dim=-1)


def text_embeddings(model, tokenizer, prompts) -> torch.Tensor:
    """L2-normalised text embeddings [B, E]; prompts over the context length are cut by the tokenizer."""
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(tokenizer(list(prompts)).to(device)), dim=-1)


def image_text_cosine(model, tokenizer, images: torch.Tensor, prompts) -> torch.Tensor:
    """Cosine similarity of each image with its own prompt [B], as float32 on the CPU."""
    cosine = (image_embeddings(model, images) * text_embeddings(model, tokenizer, prompts)).sum(-1)
    return cosine.float().cpu()
