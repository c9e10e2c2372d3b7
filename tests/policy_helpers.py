"""Small builders shared by the policy tests: real policies with decisions we can predict."""
from __future__ import annotations

import torch

from adadiff.policy import PolicyConfig, StepPolicy, init_policy


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
