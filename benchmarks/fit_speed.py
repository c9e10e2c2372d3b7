"""How long `fit` takes on a reward table of SD1.5 size (77 x 768 token states) with the default settings.

The table is synthetic (random token states whose mean along a random direction decides how many steps a prompt
needs, plus seed noise), which is enough to time the fit and to see that it learns; the diffusion model plays no
part in fitting. Run: `.venv/bin/python benchmarks/fit_speed.py [--prompts 10000] [--threads N]`.
"""
from __future__ import annotations

import argparse
import time

import torch

from adadiff.policy import PolicyFeatures
from adadiff.trainer.config import FitSettings
from adadiff.trainer.fit import fit_policy
from adadiff.trainer.table import FEATURE_DTYPE, RewardTable

OPTIONS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)


def synthetic_table(n_prompts: int, tokens: int, width: int, seeds: int = 2, seed: int = 0) -> RewardTable:
    """Prompts whose IQS saturates at a step count readable from their token states."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.empty(n_prompts, tokens, width, dtype=FEATURE_DTYPE)
    for start in range(0, n_prompts, 1000):  # in slices, so fp32 never holds the whole table
        states[start:start + 1000] = torch.randn(min(1000, n_prompts - start), tokens, width,
                                                 generator=generator).to(FEATURE_DTYPE)
    direction = torch.randn(width, generator=generator)
    difficulty = (states.float().mean(1) @ direction / width**0.5 * tokens**0.5).sigmoid()  # [N] in (0, 1)
    steps = torch.tensor(OPTIONS, dtype=torch.float32)
    needed = 5 + 45 * difficulty  # steps after which quality stops improving
    quality = 1 - torch.exp(-3 * steps[None, :] / needed[:, None])  # [N, O]
    noise = 0.01 * torch.randn(n_prompts, seeds, len(OPTIONS), generator=generator)
    iqs = quality[:, None, :] + noise
    features = PolicyFeatures(states, torch.ones(n_prompts, tokens, dtype=torch.bool))
    zeros = torch.zeros_like(iqs)
    return RewardTable(tuple(f"prompt {i}" for i in range(n_prompts)), OPTIONS, tuple(range(seeds)), features, iqs,
                       {}, zeros, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--width", type=int, default=768, help="token state width (768 SD1.x, 2048 SDXL)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-epochs", type=int, default=FitSettings.max_epochs)
    parser.add_argument("--policy-width", type=int, default=FitSettings.policy_width)
    parser.add_argument("--policy-depth", type=int, default=FitSettings.policy_depth)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    table = synthetic_table(args.prompts, args.tokens, args.width)
    print(f"synthetic table: {args.prompts} prompts x {args.tokens} x {args.width} fp16 "
          f"({table.features.tokens.numel() * 2 / 2**30:.2f} GiB), built in {time.perf_counter() - started:.1f} s")
    settings = FitSettings(max_epochs=args.max_epochs, policy_width=args.policy_width, policy_depth=args.policy_depth)
    started = time.perf_counter()
    result = fit_policy(table, settings, show_progress=False)
    seconds = time.perf_counter() - started
    epochs = result.summary["epochs"]
    print(f"fit: {seconds:.1f} s for {epochs} epochs ({seconds / epochs:.2f} s/epoch, "
          f"{args.prompts * epochs / seconds:,.0f} prompt-updates/s) on {args.threads} thread(s); "
          f"policy width {args.policy_width}, depth {args.policy_depth}")
    print(f"best epoch {result.summary['best_epoch']}: validation reward {result.summary['val_reward']:.3f}, "
          f"mean steps {result.summary['val_mean_steps']:.1f}")
    first, last = result.history[0], result.history[-1]
    print(f"validation reward epoch 1 -> {last['epoch']}: {first['val_reward']:.3f} -> {last['val_reward']:.3f}")
    print(f"within the 60 s target: {'yes' if seconds <= 60 else 'NO'}")


if __name__ == "__main__":
    main()
