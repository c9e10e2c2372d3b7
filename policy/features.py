"""Turn what each host hands over into one policy input.

Every host ends up with the same underlying text-encoder output, only wrapped differently:

* ComfyUI CONDITIONING: ``[[cond [B, 77*k, D], {"pooled_output": [B, P], ...}], ...]``
* A1111 ``get_learned_conditioning``: a tensor ``[B, 77*k, D]`` (SD1.x/2.x) or, for SDXL, a dict
  ``{"crossattn": [B, 77*k, 2048], "vector": [B, 2816]}`` whose first 1280 columns are the pooled CLIP-G output
  (the rest are size/crop embeddings);
* diffusers: ``prompt_embeds [B, 77, D]`` and, for SDXL, ``pooled_prompt_embeds [B, 1280]``.

Long prompts arrive as several 77-token chunks concatenated along the token axis; the policy attends over all of
them. Several ComfyUI conditioning entries (e.g. from Conditioning Combine) become several rows of the batch, padded
to the longest and masked, so each is judged as a prompt of its own; the decision for a batch is the most demanding
row's (see :mod:`.decision`). Nothing is converted here: dtype and device are left to the policy, which decides in fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

SDXL_POOLED_WIDTH = 1280


@dataclass(frozen=True)
class PolicyFeatures:
    """A batch of prompts as the policy reads them."""

    tokens: torch.Tensor  # [B, T, D]
    mask: torch.Tensor  # [B, T] bool, True where a token came from the host (False = padding added here)
    pooled: torch.Tensor | None = None  # [B, P] or None when the host gives no pooled vector

    def __post_init__(self):
        if self.tokens.dim() != 3 or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(f"tokens must be [B, T, D] with a [B, T] mask, got {tuple(self.tokens.shape)} and "
                             f"{tuple(self.mask.shape)}")
        if self.pooled is not None and (self.pooled.dim() != 2 or self.pooled.shape[0] != self.tokens.shape[0]):
            raise ValueError(f"pooled vector must be [B, P] for {self.tokens.shape[0]} prompts, got "
                             f"{tuple(self.pooled.shape)}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def token_dim(self) -> int:
        return self.tokens.shape[-1]

    @property
    def pooled_dim(self) -> int:
        return 0 if self.pooled is None else self.pooled.shape[-1]


def check_values(features: PolicyFeatures) -> None:
    """Refuse input no decision can be read from: NaN/Inf anywhere (a broken or fp16-overflowed text encoder; the
    network would return NaN logits, whose argmax is silently the fewest steps) or a row without a real token."""
    bad = [(name, rows) for name, values in (("token states", features.tokens), ("pooled vector", features.pooled))
           if values is not None and (rows := non_finite_rows(values))]
    if bad:
        where = "; ".join(f"{name} of prompt(s) {', '.join(map(str, rows[:5]))}" for name, rows in bad)
        raise ValueError(f"the prompt conditioning holds NaN or Inf values ({where}): the text encoder's output is "
                         "broken (in fp16 it can overflow: run it in fp32), so no step count can be read from it")
    empty = (~features.mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"conditioning row(s) {', '.join(map(str, empty[:5]))} hold no real token (every position "
                         "is masked): pass conditioning from a text encoder")


def non_finite_rows(values: torch.Tensor) -> list[int]:
    """The rows (first dimension) of ``values`` holding NaN or Inf; one reduction when there are none."""
    if math.isfinite(values.sum(dtype=torch.float32)):  # one reduction: any NaN or Inf makes the sum non-finite
        return []
    return (~torch.isfinite(values.flatten(1)).all(1)).nonzero().flatten().tolist()


def policy_features(conditioning: Any, pooled: torch.Tensor | None = None) -> PolicyFeatures:
    """Build policy input from a host's text conditioning (ComfyUI list, A1111 tensor/dict, diffusers tensors)."""
    if isinstance(conditioning, PolicyFeatures):
        return conditioning
    if isinstance(conditioning, (list, tuple)):
        return _from_comfy(conditioning)
    if isinstance(conditioning, dict):
        return _from_sdxl_dict(conditioning)
    if isinstance(conditioning, torch.Tensor):
        return _from_tensors([conditioning], [pooled] if pooled is not None else None)
    raise TypeError(
        f"cannot read prompt conditioning of type {type(conditioning).__name__}: expected a ComfyUI CONDITIONING "
        "list, an A1111 conditioning tensor or SDXL dict, or a diffusers prompt_embeds tensor"
    )


def _from_comfy(conditioning: list | tuple) -> PolicyFeatures:
    if len(conditioning) == 0:
        raise ValueError("the conditioning is empty: connect the positive prompt's CONDITIONING output")
    tokens, pooled = [], []
    for index, entry in enumerate(conditioning):
        if not (isinstance(entry, (list, tuple)) and len(entry) >= 1 and isinstance(entry[0], torch.Tensor)):
            raise TypeError(f"conditioning entry {index} is not a [tensor, dict] pair as ComfyUI makes them")
        extras = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        tokens.append(entry[0])
        pooled.append(extras.get("pooled_output"))
    has_pooled = all(p is not None for p in pooled)
    return _from_tensors(tokens, pooled if has_pooled else None)


def _from_sdxl_dict(conditioning: dict) -> PolicyFeatures:
    if "crossattn" not in conditioning:
        raise TypeError(f"SDXL conditioning dict has no 'crossattn' entry (keys: {sorted(conditioning)})")
    vector = conditioning.get("vector")
    pooled = None if vector is None else [vector[..., :SDXL_POOLED_WIDTH]]
    return _from_tensors([conditioning["crossattn"]], pooled)


def _from_tensors(tokens: list[torch.Tensor], pooled: list[torch.Tensor] | None) -> PolicyFeatures:
    """Stack [B_i, T_i, D] pieces into one padded, masked batch."""
    tokens = [t.unsqueeze(0) if t.dim() == 2 else t for t in tokens]
    for t in tokens:
        if t.dim() != 3:
            raise ValueError(f"prompt conditioning must be [batch, tokens, width], got shape {tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"prompt conditioning is empty (shape {tuple(t.shape)})")
    widths = {t.shape[-1] for t in tokens}
    if len(widths) > 1:
        raise ValueError(f"conditioning entries have different widths {sorted(widths)}: they come from different models")
    pooled = None if pooled is None else [p.unsqueeze(0) if p.dim() == 1 else p for p in pooled]
    if len(tokens) == 1:  # the common case: nothing to pad or stack, so no copy of the token states
        only = tokens[0]
        mask = torch.ones(only.shape[:2], dtype=torch.bool, device=only.device)
        return PolicyFeatures(only, mask, None if pooled is None else pooled[0].to(only.device, only.dtype))
    longest = max(t.shape[1] for t in tokens)
    device, dtype = tokens[0].device, tokens[0].dtype
    padded, masks = [], []
    for t in tokens:
        batch, length, width = t.shape
        pad = longest - length
        padded.append(torch.cat([t.to(device, dtype), t.new_zeros(batch, pad, width, dtype=dtype, device=device)], 1))
        mask = torch.zeros(batch, longest, dtype=torch.bool, device=device)
        mask[:, :length] = True
        masks.append(mask)
    pooled_batch = None
    if pooled is not None:
        pooled_batch = torch.cat([p.to(device, dtype) for p in pooled], 0)
    return PolicyFeatures(torch.cat(padded, 0), torch.cat(masks, 0), pooled_batch)
