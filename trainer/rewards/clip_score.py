"""CLIP score: how well an image matches its prompt, by cosine similarity of open_clip embeddings.

iqs = max(cos(image, prompt), 0), in [0, 1]; 100 * iqs is the usual "CLIP score" (torchmetrics' CLIPScore).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import check_batch, pick_device
from .open_clip_models import image_text_cosine, load_open_clip

DEFAULT_ARCHITECTURE = "ViT-L-14-quickgelu"  # OpenAI CLIP ViT-L/14 (QuickGELU activations)
DEFAULT_PRETRAINED = "openai"


class ClipScore:
    name = "clip"
    reference_steps = None

    def __init__(self, model: str = DEFAULT_ARCHITECTURE, pretrained: str | None = DEFAULT_PRETRAINED, device=None):
        self.model, self.tokenizer = load_open_clip(
            model, pretrained, pick_device(device),
            how_to_get=f"pass pretrained=<an open_clip tag of {model}, e.g. 'openai'> (downloaded once) or the "
                       "path of a local open_clip weights file")

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_batch(images, prompts)
        iqs = image_text_cosine(self.model, self.tokenizer, images, prompts).clamp(min=0)
        return {"iqs": iqs, self.name: iqs}
