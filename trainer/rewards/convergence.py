"""Convergence to the long run: how much an image looks like the same seed's image at a reference step count.

The quality contract of step-skipping methods (PSNR / SSIM / LPIPS to the full-compute output), turned into an IQS:
no weights, no network, any model and sampler. Each option's image is compared with the image the same prompt and
initial noise give at ``reference_steps`` (default: the largest option), which the trainer renders once per prompt
and seed and hands over as ``references``.

``iqs = min(similarity, converged_at)``: an image whose similarity reaches ``converged_at`` counts as converged, and
converged options tie, so the fit's top-k (ties go to fewer steps) ranks the cheapest converged options first and
the evaluation's oracle is "the fewest steps that converge". ``converged_at=1`` keeps the raw similarity. The raw
``ssim`` and ``psnr`` (and ``lpips`` when that is the metric) are recorded next to it.

SSIM is Wang et al. 2004 with the usual constants: an 11-tap Gaussian window (sigma 1.5) over the valid region,
K1 = 0.01, K2 = 0.03, data range 1, averaged over the colour channels (the same numbers as scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import check_batch, pick_device

METRICS = ("ssim", "lpips")
PSNR_CAP_DB = 100.0  # identical images: a finite number, so table means stay finite
_WINDOW, _SIGMA, _K1, _K2 = 11, 1.5, 0.01, 0.03
# LPIPS's backbone weights as torchvision caches them; LPIPS never gets them any other way here (no download).
_LPIPS_BACKBONES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                    "squeeze": "squeezenet1_1-b8a52dc0.pth"}


def gaussian_window(size: int, sigma: float = _SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of two [B, C, H, W] batches in [0, 1] -> [B] (float64 arithmetic, float32 result)."""
    x, y = images.double(), references.double()
    size = min(_WINDOW, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # an odd window that fits small images
    taps = gaussian_window(size).to(x.device)
    channels = x.shape[1]

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian over the valid region, per channel
        t = F.conv2d(t, taps.view(1, 1, 1, -1).expand(channels, 1, 1, size), groups=channels)
        return F.conv2d(t, taps.view(1, 1, -1, 1).expand(channels, 1, size, 1), groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = _K1 ** 2, _K2 ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.mean((1, 2, 3)).float()


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1), capped at PSNR_CAP_DB for identical images."""
    mse = (images.double() - references.double()).pow(2).mean((1, 2, 3))
    return (10 * torch.log10(1 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).float()


class ConvergenceScore:
    """IQS = similarity of each image to the same seed's image at ``reference_steps`` (see the module docstring)."""

    name = "convergence"

    def __init__(self, reference_steps: int | None = None, metric: str = "ssim", converged_at: float = 0.95,
                 lpips_net: str = "alex", options: Sequence[int] | None = None, device=None):
        """``options`` (the table's step options, given by the trainer) sets the default reference: the largest."""
        if metric not in METRICS:
            raise ValueError(f"unknown convergence metric {metric!r}; use one of {', '.join(METRICS)}")
        if not 0 < float(converged_at) <= 1:
            raise ValueError(f"converged_at must be in (0, 1], got {converged_at}")
        largest = max(options) if options else None
        if reference_steps is None and largest is None:
            raise ValueError("the convergence reward needs reference_steps (or the step options, whose largest is "
                             "the default reference)")
        reference_steps = largest if reference_steps is None else int(reference_steps)
        if reference_steps < 1 or (largest is not None and reference_steps < largest):
            raise ValueError(f"reference_steps must be at least the largest step option ({largest}), got "
                             f"{reference_steps}: the reference is the long run the options are compared with")
        self.reference_steps = reference_steps
        self.metric = metric
        self.converged_at = float(converged_at)
        self._lpips = _load_lpips(lpips_net, pick_device(device)) if metric == "lpips" else None

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_batch(images, prompts)
        if references is None or references.shape != images.shape:
            shape = None if references is None else tuple(references.shape)
            raise ValueError(f"the convergence reward compares every image with its reference image: expected "
                             f"references of shape {tuple(images.shape)}, got {shape}")
        result = {"ssim": ssim(images, references), "psnr": psnr(images, references)}
        similarity = result["ssim"]
        if self._lpips is not None:
            device = next(self._lpips.parameters()).device
            distance = self._lpips(images.to(device) * 2 - 1, references.to(device) * 2 - 1).flatten().float().cpu()
            result["lpips"] = distance
            similarity = 1 - distance
        result["iqs"] = similarity.clamp(max=self.converged_at)
        return result


def _load_lpips(net: str, device: torch.device) -> torch.nn.Module:
    """LPIPS (Zhang et al. 2018) from the ``lpips`` package, only when it and its backbone's weights are on disk."""
    if importlib.util.find_spec("lpips") is None:
        raise ValueError("metric=lpips needs the lpips package (pip install lpips) and its backbone's ImageNet "
                         "weights; or use metric=ssim, which needs neither")
    if net not in _LPIPS_BACKBONES:
        raise ValueError(f"unknown lpips_net {net!r}; use one of {', '.join(_LPIPS_BACKBONES)}")
    weights = Path(torch.hub.get_dir()) / "checkpoints" / _LPIPS_BACKBONES[net]
    if not weights.is_file():
        raise ValueError(f"metric=lpips needs torchvision's {net} weights at {weights}, which are missing; copy "
                         f"{_LPIPS_BACKBONES[net]} there (torchvision downloads it on a machine with internet), or "
                         "use metric=ssim, which needs no weights")
    import lpips

    return lpips.LPIPS(net=net, verbose=False).eval().to(device)
