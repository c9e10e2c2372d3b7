"""How long `fit` takes on a reward table of SD1.5 size (77 x 768 token states) with the default settings.

The table is synthetic (prompts made of random "word" states, whose difficulties decide how many steps the prompt
needs, plus seed noise), which is enough to time the fit and to see that it learns; the diffusion model plays no
part in fitting. It times a whole fit with the default settings, early stopping included, as `adadiff-train fit`
runs it. Run: `.venv/bin/python benchmarks/fit_speed.py [--prompts 10000] [--threads N]`.
"""
from __future__ import annotations

import argparse
import time

import torch

from adadiff.policy import PolicyFeatures
from adadiff.trainer.config import FitSettings
from adadiff.trainer.fit import fit_policy, option_rewards
from adadiff.trainer.table import FEATURE_DTYPE, RewardTable

OPTIONS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)


def synthetic_table(n_prompts: int, tokens: int, width: int, seeds: int = 2, seed: int = 0) -> RewardTable:
    """Prompts built like real ones: 3-15 "words" from a 300-word vocabulary, then end-token padding to ``tokens``.

    Each word has a difficulty; a prompt's IQS saturates at a step count set by its words' mean difficulty, plus
    seed noise.
    """
    generator = torch.Generator().manual_seed(seed)
    vocabulary = torch.randn(300, width, generator=generator)
    word_difficulty = torch.rand(300, generator=generator)
    padding = torch.randn(width, generator=generator)
    lengths = torch.randint(3, 16, (n_prompts,), generator=generator)
    words = torch.randint(0, 300, (n_prompts, tokens), generator=generator)
    is_word = torch.arange(tokens)[None, :] < lengths[:, None]
    states = torch.empty(n_prompts, tokens, width, dtype=FEATURE_DTYPE)
    for start in range(0, n_prompts, 1000):  # in slices, so fp32 never holds the whole table
        part = slice(start, start + 1000)
        chunk = torch.where(is_word[part, :, None], vocabulary[words[part]], padding)
        states[part] = (chunk + 0.1 * torch.randn(chunk.shape, generator=generator)).to(FEATURE_DTYPE)
    difficulty = torch.where(is_word, word_difficulty[words], torch.zeros(())).sum(1) / lengths  # [N] in (0, 1)
    steps = torch.tensor(OPTIONS, dtype=torch.float32)
    needed = 5 + 45 * difficulty  # steps after which quality stops improving
    quality = torch.minimum(steps[None, :], needed[:, None]) / needed[:, None]
    iqs = quality[:, None, :] + 0.01 * torch.randn(n_prompts, seeds, len(OPTIONS), generator=generator)
    features = PolicyFeatures(states, torch.ones(n_prompts, tokens, dtype=torch.bool))
    return RewardTable(tuple(f"prompt {i}" for i in range(n_prompts)), OPTIONS, tuple(range(seeds)), features, iqs,
                       {}, torch.zeros_like(iqs), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--width", type=int, default=768, help="token state width (768 SD1.x, 2048 SDXL)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-updates", type=int, default=FitSettings.max_updates,
                        help="cap on policy updates (default: the fit's own)")
    parser.add_argument("--policy-width", type=int, default=FitSettings.policy_width)
    parser.add_argument("--policy-depth", type=int, default=FitSettings.policy_depth)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    table = synthetic_table(args.prompts, args.tokens, args.width)
    print(f"synthetic table: {args.prompts} prompts x {args.tokens} x {args.width} fp16 "
          f"({table.features.tokens.numel() * 2 / 2**30:.2f} GiB), built in {time.perf_counter() - started:.1f} s")
    settings = FitSettings(max_updates=args.max_updates, policy_width=args.policy_width,
                           policy_depth=args.policy_depth)
    started = time.perf_counter()
    result = fit_policy(table, settings, show_progress=False)
    seconds = time.perf_counter() - started
    epochs, updates = result.summary["epochs"], result.summary["updates"]
    trained = result.summary["prompts_train"] * epochs
    print(f"fit: {seconds:.1f} s for {epochs} passes, {updates} updates ({seconds / epochs:.2f} s/pass, "
          f"{trained / seconds:,.0f} prompt-updates/s incl. validation) on {args.threads} thread(s); "
          f"policy width {args.policy_width}, depth {args.policy_depth}")
    print(f"best epoch {result.summary['best_epoch']}: validation reward {result.summary['val_reward']:.3f}, "
          f"mean steps {result.summary['val_mean_steps']:.1f}")
    rewards = option_rewards(table.iqs, table.options, settings)
    print(f"for scale: best fixed option {rewards.mean(0).max():.3f}, per-prompt best {rewards.max(1).values.mean():.3f}; "
          "validation reward by epoch: " + ", ".join(f"{h['val_reward']:.3f}" for h in result.history))
    print(f"whole fit of {args.prompts} prompts within the 60 s target: {'yes' if seconds <= 60 else 'NO'}")


if __name__ == "__main__":
    main()
