"""Human Preference Score v2: open_clip ViT-H-14 fine-tuned on human preferences between generated images.

A checkpoint file (``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` from the Hugging Face repo
``xswu/HPSv2``) holds the whole ViT-H-14 state; a release name downloads it once through huggingface_hub. As in the
reference implementation, the score is the cosine of the normalised image and prompt embeddings (typically
0.2-0.35), used as iqs unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import check_batch, pick_device
from .open_clip_models import image_text_cosine, load_open_clip

HPS_REPO = "xswu/HPSv2"
RELEASES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
_HOW_TO_GET = (f"download {' or '.join(RELEASES.values())} from https://huggingface.co/{HPS_REPO} and pass "
               f"checkpoint=<its path>, or checkpoint={'/'.join(RELEASES)} to download it")


def resolve_checkpoint(checkpoint: str) -> str:
    """A local path for a release name (downloaded once into the Hugging Face cache) or the path given."""
    if checkpoint not in RELEASES:
        return checkpoint
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(HPS_REPO, RELEASES[checkpoint])
    except Exception as error:  # offline, hub unreachable, missing file: all end the same way for the user
        raise FileNotFoundError(f"could not get HPS {checkpoint} ({type(error).__name__}: {error}); "
                                f"{_HOW_TO_GET}") from error


class HPSv2Score:
    name = "hpsv2"
    reference_steps = None

    def __init__(self, checkpoint: str = "v2.1", model: str = "ViT-H-14", device=None):
        self.model, self.tokenizer = load_open_clip(model, resolve_checkpoint(checkpoint), pick_device(device),
                                                    how_to_get=_HOW_TO_GET)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_batch(images, prompts)
        iqs = image_text_cosine(self.model, self.tokenizer, images, prompts)
        return {"iqs": iqs, self.name: iqs}
