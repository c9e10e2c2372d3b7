"""The embedded world's image quality score (IQS), the `toy` reward backend.

IQS = ALIGNMENT_WEIGHT * alignment + (1 - ALIGNMENT_WEIGHT) * fidelity, in [0, 1]; no reference image is needed.

alignment: mean over the caption's six properties (background colour and pattern, object colours, textures,
    sizes, counts, shapes) of the pixel checker's agreement (`checker.check`). Ground-truth renders score 1
    (up to rare tiny dotted objects that happen to contain no dot).
fidelity: how cleanly the image is rendered, per pixel, averaged over the image. Every pixel of this world is a
    palette shade, so a pixel outside any grainy region is clean when it lies within CLEAN_TOLERANCE of its
    nearest shade (half the smallest distance between two shades): blur at edges, smeared textures and speckle
    make pixels unclean, and invisible speckle does not. A pixel of a region the caption calls grainy counts as
    its region's grain completeness instead: the region's brightness spread over the world's (the fine random
    detail that few-step samplers smooth away), over GRAIN_SATURATION and capped at 1. GRAIN_SATURATION is the
    completeness the model's own long runs reach on training prompts (`python -m adadiff.trainer.embedded.calibrate`),
    so the term saturates once an image is as clean as the model makes it, and was fixed before any policy was
    judged.
Both terms are deterministic functions of the pixels and the caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from .checker import PALETTE, PROPERTIES, SHADE_IS_DARK, check, grain_spread, nearest_shades, shade_region
from .world import GRAIN_STD, Scene, parse_caption

ALIGNMENT_WEIGHT = 0.5
CLEAN_TOLERANCE = 0.5 * float(min(np.linalg.norm(a - b) for i, a in enumerate(PALETTE) for b in PALETTE[i + 1:]))
GRAIN_SATURATION = 0.803  # `calibrate`: 10th percentile at 50 steps, 169 training prompts with grain, guidance 2


@lru_cache(maxsize=None)
def expected_grain_spread(shade: int) -> float:
    """The brightness spread the world's grain gives a region of palette shade `shade` (clipping at 0 and 1
    included), from a fixed-seed sample of the grain distribution."""
    grain = np.random.default_rng(0).normal(0.0, GRAIN_STD, 200_000).clip(-2 * GRAIN_STD, 2 * GRAIN_STD)
    base = PALETTE[shade].astype(np.float64)
    return float(((base[None] + grain[:, None]).clip(0, 1) - base[None]).mean(-1).std())


def grainy_regions(shades: np.ndarray, scene: Scene) -> list[np.ndarray]:
    """Masks of the pixels the caption says are grainy: the background's main shade, each grainy group's colour."""
    wanted = [("background", scene.background_colour)] if scene.background_pattern == "grainy" else []
    wanted += [("object", g.colour) for g in scene.groups if g.texture == "grainy"]
    return [shade_region(shades, kind, colour) & ~SHADE_IS_DARK[shades] for kind, colour in wanted]


def fidelity_parts(image: np.ndarray, scene: Scene, grain_saturation: float = GRAIN_SATURATION) -> dict[str, float]:
    """fidelity, cleanliness (share of clean pixels outside grainy regions) and grain (mean completeness of the
    grainy regions, 1 when the caption asks for none) of one [H, W, 3] image."""
    shades = nearest_shades(image[None])[0]
    clean = np.linalg.norm(image - PALETTE[shades], axis=-1) <= CLEAN_TOLERANCE
    score = clean.astype(np.float64)
    grainy = np.zeros(shades.shape, dtype=bool)
    completeness = []
    for region in grainy_regions(shades, scene):
        if not region.any():
            continue
        shade = int(np.bincount(shades[region]).argmax())
        value = min(1.0, grain_spread(image, shades, region) / expected_grain_spread(shade) / grain_saturation)
        score[region] = value
        grainy |= region
        completeness.append(value)
    return {"fidelity": float(score.mean()), "cleanliness": float(clean[~grainy].mean()) if (~grainy).any() else 1.0,
            "grain": float(np.mean(completeness)) if completeness else 1.0}


def alignment_components(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-property checker agreement of each image with its caption, [B] each, plus their mean."""
    pixels = images.permute(0, 2, 3, 1).float().cpu().numpy()
    rows = [check(image, parse_caption(prompt)) for image, prompt in zip(pixels, prompts)]
    parts = {key: torch.tensor([r[key] for r in rows], dtype=torch.float32) for key in PROPERTIES}
    parts["alignment"] = torch.stack([parts[k] for k in PROPERTIES]).mean(0)
    return parts


class ToyIQS:
    """IQS of the embedded world: caption alignment plus a fidelity term that saturates once an image is clean."""

    name = "toy"
    reference_steps = None  # judged from the image and its caption alone

    def __init__(self, grain_saturation: float = GRAIN_SATURATION, alignment_weight: float = ALIGNMENT_WEIGHT):
        if not 0 < grain_saturation <= 1 or not 0 <= alignment_weight <= 1:
            raise ValueError(f"need 0 < grain_saturation <= 1 and 0 <= alignment_weight <= 1, got "
                             f"{grain_saturation} and {alignment_weight}")
        self.grain_saturation = grain_saturation
        self.alignment_weight = alignment_weight

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """images: [B, 3, H, W] in [0, 1]. Returns [B] tensors: iqs, alignment, fidelity, cleanliness, grain and
        the six per-property alignment parts."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        parts = alignment_components(images, prompts)
        pixels = images.permute(0, 2, 3, 1).float().cpu().numpy().astype(np.float64)
        rows = [fidelity_parts(image, parse_caption(p), self.grain_saturation) for image, p in zip(pixels, prompts)]
        for key in ("fidelity", "cleanliness", "grain"):
            parts[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        w = self.alignment_weight
        parts["iqs"] = w * parts["alignment"] + (1 - w) * parts["fidelity"]
        return parts
