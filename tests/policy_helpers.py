"""Small builders shared by the policy tests: real policies with decisions we can predict, and policy files crafted
as a user's damaged or hostile download would be."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adadiff.policy import PolicyConfig, StepPolicy, init_policy, save_policy

SMALL_CONFIG = PolicyConfig(options=(2, 4, 8), width=16, heads=2, depth=1, token_dim=32)


def policy_preferring(option_index: int, config: PolicyConfig | None = None, margin: float = 4.0) -> StepPolicy:
    """A real policy whose head is biased so that ``option_index`` wins for any prompt by about ``margin`` nats."""
    policy = init_policy(config or PolicyConfig(), seed=1)
    final = policy.head[-1]
    with torch.no_grad():
        final.weight.mul_(0.01)
        final.bias.zero_()
        final.bias[option_index] = margin
    return policy


def random_conditioning(batch: int = 1, tokens: int = 77, width: int = 768, seed: int = 0) -> torch.Tensor:
    """CLIP-like token states: a per-prompt direction shared by its tokens, token noise, and one large-magnitude
    channel, as real CLIP has."""
    generator = torch.Generator().manual_seed(seed)
    prompt_direction = 2.0 * torch.randn(batch, 1, width, generator=generator)
    states = prompt_direction + torch.randn(batch, tokens, width, generator=generator)
    states[..., 0] *= 30.0
    return states


def quality_policy_with_losses(losses: list[float], config: PolicyConfig) -> StepPolicy:
    """A real quality-objective policy whose head ignores the prompt and predicts ``losses`` (in %, non-increasing,
    0 at the largest option) for every prompt."""
    assert config.objective == "quality" and losses[-1] == 0
    policy = init_policy(config, seed=1)
    increments = torch.tensor([a - b for a, b in zip(losses[:-1], losses[1:])]).clamp_min(1e-4)
    final = policy.head[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(torch.log(torch.expm1(increments)))  # softplus^-1
    return policy


def write_crafted_policy(path, options: tuple[int, ...]) -> None:
    """A small policy file whose config claims a network of ~1e9 parameters (4 GB) over tensors of a tiny one, as a
    crafted download would (issue 13): the loader must refuse it before building anything."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from adadiff.policy import save_policy

    config = PolicyConfig(options=options, width=16, depth=12, heads=2)
    save_policy(init_policy(config), path)
    with safe_open(str(path), "pt") as handle:
        metadata, tensors = dict(handle.metadata()), {name: handle.get_tensor(name) for name in handle.keys()}
    metadata["config"] = json.dumps({**config.to_dict(), "token_dim": 16384, "width": 2048, "heads": 64, "ff_mult": 8})
    save_file(tensors, str(path), metadata=metadata)


def good_policy_file(folder: Path, info: dict | None = None) -> Path:
    """A small policy saved as ``folder/good.safetensors``."""
    return save_policy(init_policy(SMALL_CONFIG, seed=1, info=info), folder / "good.safetensors")


def file_of_bytes(folder: Path, data: bytes) -> Path:
    path = folder / "crafted.safetensors"
    path.write_bytes(data)
    return path


def file_with_header(folder: Path, header: dict | bytes, data: bytes = b"") -> Path:
    """Bytes laid out as safetensors: the header's length, the header (JSON of a dict, or raw bytes), then ``data``."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return file_of_bytes(folder, struct.pack("<Q", len(raw)) + raw + data)


def copy_with_changes(good: Path, *, metadata=None, config=None, info=None, tensors=None) -> Path:
    """A copy of the policy file ``good`` with parts replaced, written beside it: ``metadata`` values, ``config`` (JSON
    text, or keys merged into it), ``info`` (JSON text or a value) and ``tensors`` (a function of the weights)."""
    with safe_open(str(good), "pt") as handle:
        meta = dict(handle.metadata())
        weights = {name: handle.get_tensor(name) for name in handle.keys()}
    if config is not None:
        meta["config"] = config if isinstance(config, str) else json.dumps({**json.loads(meta["config"]), **config})
    if info is not None:
        meta["info"] = info if isinstance(info, str) else json.dumps(info)
    meta.update(metadata or {})
    path = good.with_name("crafted.safetensors")
    save_file(tensors(weights) if tensors else weights, str(path), metadata=meta)
    return path


def sparse_file(folder: Path, size: int) -> Path:
    path = folder / "huge.safetensors"
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def fifo(folder: Path) -> Path:
    path = folder / "fifo.safetensors"
    os.mkfifo(path)
    return path
