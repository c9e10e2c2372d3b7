"""A weighted sum of other backends' iqs, keeping each component's score next to it."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .base import check_batch


class CompositeScore:
    name = "composite"

    def __init__(self, parts: Mapping[str, tuple[float, object]]):
        """`parts`: component name -> (weight, backend)."""
        if not parts:
            raise ValueError("a composite reward needs at least one component, e.g. composite:clip=0.5,aesthetic=0.5")
        self.parts = dict(parts)
        wanted = {backend.reference_steps for _, backend in self.parts.values()} - {None}
        if len(wanted) > 1:
            raise ValueError(f"the components need references at different step counts {sorted(wanted)}; "
                             "combine only backends that agree")
        self.reference_steps = wanted.pop() if wanted else None

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              references: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_batch(images, prompts)
        result, total = {}, torch.zeros(images.shape[0])
        for name, (weight, backend) in self.parts.items():
            part = backend.score(images, prompts, references if backend.reference_steps is not None else None)
            result[name] = part["iqs"]
            total = total + weight * part["iqs"]
        result["iqs"] = total
        return result
