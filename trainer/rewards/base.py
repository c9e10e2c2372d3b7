"""What every IQS backend provides, and the checks shared by all of them.

A backend scores generated images for their prompts: ``score(images, prompts, references=None)`` returns a dict of
``[B]`` tensors with key ``"iqs"`` (the reward the trainer uses) plus one key per component. ``reference_steps``
is None, or the step count at which the trainer must also render a reference image per (prompt, seed) from the same
initial noise and pass it as ``references``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class RewardBackend(Protocol):
    name: str
    reference_steps: int | None

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]: ...


def check_batch(images: torch.Tensor, prompts: Sequence[str]) -> None:
    """Fail loudly on the mistakes that would otherwise give plausible-looking but wrong scores."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    if images.is_floating_point() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be floats in [0, 1] (decode and rescale the pipeline output first)")


def pick_device(device: str | torch.device | None) -> torch.device:
    """The device a scoring model runs on: the one asked for, else CUDA when present."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
