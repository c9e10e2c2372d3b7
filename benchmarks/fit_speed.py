"""How long `fit` takes on a reward table of SD1.5 size (77 x 768 token states) with the default settings.

The table is the known-answer one (`adadiff.trainer.known_answer`: prompts of random "word" states whose
difficulties decide how many steps the prompt needs, seed noise 0.01), which is enough to time the fit and to see
that it learns; the diffusion model plays no part in fitting. It times a whole fit with the default settings,
early stopping included, as `adadiff-train fit` runs it, and a reference matrix product so that a figure from a
loaded machine can be scaled. Run: `.venv/bin/python benchmarks/fit_speed.py [--prompts 10000] [--threads N]`.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from adadiff.trainer.config import FitSettings
from adadiff.trainer.evaluate import evaluate_choices, policy_choices
from adadiff.trainer.fit import fit_policy
from adadiff.trainer.known_answer import known_answer_table


def reference_op_seconds() -> float:
    """Median time of one fixed fp32 matrix product (2048 x 2048), the yardstick for a loaded machine."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return sorted(times)[3]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=768, help="token state width (768 SD1.x, 2048 SDXL)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-updates", type=int, default=FitSettings.max_updates,
                        help="cap on policy updates (default: the fit's own)")
    parser.add_argument("--policy-width", type=int, default=FitSettings.policy_width)
    parser.add_argument("--policy-depth", type=int, default=FitSettings.policy_depth)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    known = known_answer_table(args.prompts, sigma=0.01, width=args.width, long_share=0.0)  # 77 x width, as SD1.5
    table = known.table
    tokens = table.features.tokens
    print(f"known-answer table: {args.prompts} prompts x {tokens.shape[1]} x {args.width} fp16 "
          f"({tokens.numel() * 2 / 2**30:.2f} GiB), built in {time.perf_counter() - started:.1f} s")
    print(f"reference op (2048^2 fp32 matmul): {1000 * reference_op_seconds():.1f} ms; load average "
          f"{os.getloadavg()[0]:.2f}")
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
    print(f"best pass {result.summary['best_epoch']}: validation score {result.summary['val_score']:.4f}, "
          f"mean steps {result.summary['val_mean_steps']:.1f}; by pass: "
          + ", ".join(f"{h['val_score']:.4f}" for h in result.history))
    truth = evaluate_choices(known.truth_table(), policy_choices(result.policy, table))
    print(f"on the training prompts' noise-free curves: {truth['policy']['mean_steps']:.1f} mean steps (true oracle "
          f"{torch.tensor(table.options)[known.answer].float().mean():.1f}), IQS drop {truth['iqs_drop_vs_max_pct']:.2f}%")
    print(f"reference op after the fit: {1000 * reference_op_seconds():.1f} ms; load average {os.getloadavg()[0]:.2f}")
    print(f"whole fit of {args.prompts} prompts within the 60 s target: {'yes' if seconds <= 60 else 'NO'}")


if __name__ == "__main__":
    main()
