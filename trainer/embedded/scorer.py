"""The embedded world's image quality score (IQS), the `toy` reward backend.

IQS = ALIGNMENT_WEIGHT * alignment + (1 - ALIGNMENT_WEIGHT) * fidelity, in [0, 1].

alignment: mean over the caption's six properties (background colour and pattern, object colours, textures,
    sizes, counts, shapes) of the pixel checker's agreement (`checker.check`). Ground-truth renders score 1
    (up to rare tiny dotted objects that happen to contain no dot).
fidelity: min(1, SSIM(image, reference) / SSIM_SATURATION), where the reference is the same prompt and initial
    noise sampled with `reference_steps` steps. SSIM, unlike PSNR, stops rising once the remaining differences are
    invisible speckle, so the term saturates: an image counts as converged when it is as close to the long-run
    sample as a typical image at the largest step option is. SSIM_SATURATION is fixed from the training split
    only (see README, "The embedded demo model"), before any policy is judged.
Both terms are deterministic functions of the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .checker import PROPERTIES, check
from .world import parse_caption

ALIGNMENT_WEIGHT = 0.5
SSIM_SATURATION = 0.997  # `python -m adadiff.trainer.embedded.calibrate`: 10th percentile, 100 training prompts
REFERENCE_STEPS = 100


def gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004, 7x7 Gaussian window, per channel), [B]."""
    channels = images.shape[1]
    window = gaussian_window().expand(channels, 1, -1, -1).to(images)
    blur = lambda t: F.conv2d(t, window, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(images), blur(references)
    var_x = blur(images * images) - mu_x**2
    var_y = blur(references * references) - mu_y**2
    cov = blur(images * references) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(1)


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

    def __init__(self, reference_steps: int | None = REFERENCE_STEPS, ssim_saturation: float = SSIM_SATURATION,
                 alignment_weight: float = ALIGNMENT_WEIGHT):
        if not 0 < ssim_saturation <= 1 or not 0 <= alignment_weight <= 1:
            raise ValueError(f"need 0 < ssim_saturation <= 1 and 0 <= alignment_weight <= 1, got "
                             f"{ssim_saturation} and {alignment_weight}")
        self.reference_steps = reference_steps
        self.ssim_saturation = ssim_saturation
        self.alignment_weight = alignment_weight

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """images, references: [B, 3, H, W] in [0, 1]. Returns [B] tensors: iqs, alignment, fidelity, ssim and
        the six per-property alignment parts."""
        if references is None:
            raise ValueError("ToyIQS needs the reference images rendered at reference_steps")
        if images.shape != references.shape or len(prompts) != images.shape[0]:
            raise ValueError(f"images {tuple(images.shape)}, references {tuple(references.shape)} and "
                             f"{len(prompts)} prompts do not match")
        parts = alignment_components(images, prompts)
        parts["ssim"] = ssim(images.float().cpu(), references.float().cpu())
        parts["fidelity"] = (parts["ssim"] / self.ssim_saturation).clamp(0, 1)
        w = self.alignment_weight
        parts["iqs"] = w * parts["alignment"] + (1 - w) * parts["fidelity"]
        return parts
