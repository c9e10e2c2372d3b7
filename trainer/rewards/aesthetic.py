"""LAION's improved aesthetic predictor: an MLP on the L2-normalised CLIP ViT-L/14 image embedding.

The head (christophschuhmann/improved-aesthetic-predictor, ``sac+logos+ava1-l14-linearMSE.pth``) predicts a 1-10
rating; iqs = rating / 10. The prompt is not used.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .base import check_batch, pick_device
from .open_clip_models import image_embeddings, load_open_clip, looks_like_path

HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac+logos+ava1-l14-linearMSE.pth")
_HOW_TO_GET_HEAD = f"download it from {HEAD_URL} and pass head=<its path>"


class AestheticHead(nn.Module):
    """The predictor's layer layout, so its published state_dict keys (layers.0 ... layers.7) load as they are."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def load_head(head: str, device: torch.device) -> AestheticHead:
    """The predictor head from a local file, or from a URL (downloaded once into torch's hub cache)."""
    if looks_like_path(head) and not head.startswith(("http://", "https://")):
        path = Path(head).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"aesthetic predictor head not found: {path}; {_HOW_TO_GET_HEAD}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError, or whatever a damaged file makes the unpickler raise
            raise ValueError(f"cannot read the aesthetic predictor head {path} ({error}); "
                             f"{_HOW_TO_GET_HEAD}") from error
    else:
        try:
            state = torch.hub.load_state_dict_from_url(head, map_location="cpu", weights_only=True)
        except OSError as error:
            raise FileNotFoundError(f"could not download the aesthetic predictor head ({error}); "
                                    f"{_HOW_TO_GET_HEAD}") from error
    if "layers.0.weight" not in state:
        raise ValueError(f"{head} is not an improved-aesthetic-predictor head (no layers.0.weight); "
                         f"{_HOW_TO_GET_HEAD}")
    model = AestheticHead(state["layers.0.weight"].shape[1])
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


class AestheticScore:
    name = "aesthetic"
    reference_steps = None

    def __init__(self, head: str = HEAD_URL, model: str = "ViT-L-14-quickgelu", pretrained: str = "openai",
                 device=None):
        device = pick_device(device)
        self.model, _ = load_open_clip(
            model, pretrained, device,
            how_to_get="the predictor was trained on OpenAI CLIP ViT-L/14: use model='ViT-L-14-quickgelu' with "
                       "pretrained='openai' (downloaded once) or a local copy of those weights")
        self.head = load_head(head, device)
        embed_dim = getattr(self.model.visual, "output_dim", None)
        if embed_dim is not None and embed_dim != self.head.layers[0].in_features:
            raise ValueError(f"the aesthetic head reads {self.head.layers[0].in_features}-wide embeddings but "
                             f"{model} makes {embed_dim}-wide ones; use the CLIP model the head was trained on")

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_batch(images, prompts)
        iqs = (self.head(image_embeddings(self.model, images).float()) / 10).cpu()
        return {"iqs": iqs, self.name: iqs}
