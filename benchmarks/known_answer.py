"""Does the fit learn each prompt's step need through seed noise? Judged against the noise-free truth.

For each noise level sigma (and a table whose prompts carry no signal), fits a policy with the given settings
(default: `adadiff-train fit`'s) on a known-answer training table (`adadiff.trainer.known_answer`), then judges its
choices on held-out prompts twice: on their noise-free curves (the truth) and as `adadiff-train evaluate` would
from the noisy table (what a user sees). Prints, per table: the share of the true oracle's step saving, the IQS
drop against the largest option on the true curves, the policy minus a fixed count at its mean steps and minus a
random policy with its step distribution (paired SE), and the evaluation's own verdict.

Run: `.venv/bin/python benchmarks/known_answer.py [--objective reinforce] [--sigmas 0,0.01,none] [--out x.json]`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adadiff.trainer.config import FitSettings
from adadiff.trainer.evaluate import evaluate_choices, policy_choices
from adadiff.trainer.fit import fit_policy
from adadiff.trainer.known_answer import known_answer_table


FIT_FLAGS = ("objective", "tolerance_pct", "lr", "weight_decay", "max_updates", "patience", "fit_batch_size",
             "val_fraction", "policy_width", "policy_depth")


def judge(sigma: float | None, args, settings: FitSettings) -> dict:
    """Fit on one training table and judge on its held-out twin; sigma None = the no-signal table (sigma 0.01)."""
    noise = 0.01 if sigma is None else sigma
    common = dict(sigma=noise, signal=sigma is not None, seeds=args.seeds, width=args.width)
    train = known_answer_table(args.train_prompts, seed=1, **common)
    test = known_answer_table(args.test_prompts, seed=2, **common)
    started = time.perf_counter()
    policy = fit_policy(train.table, settings, show_progress=False).policy
    fit_seconds = time.perf_counter() - started
    choices = policy_choices(policy, test.table)
    truth = evaluate_choices(test.truth_table(), choices, tolerance_pct=settings.tolerance_pct)
    seen = evaluate_choices(test.table, choices, tolerance_pct=settings.tolerance_pct)
    steps = torch.tensor(test.table.options, dtype=torch.float64)
    true_oracle_saving = 1 - steps[test.answer].mean().item() / steps[-1].item()
    policy_saving = truth["saving_vs_max"]["steps_pct"] / 100
    return {
        "table": "no signal" if sigma is None else f"sigma={sigma}",
        "fit_seconds": fit_seconds,
        "mean_steps": truth["policy"]["mean_steps"],
        "exact_answer_share": (choices == test.answer).double().mean().item(),
        "share_of_true_oracle_saving": policy_saving / true_oracle_saving,
        "true_iqs_drop_pct": truth["iqs_drop_vs_max_pct"],
        "minus_fixed_matched": truth["fixed_matched"]["policy_minus"],
        "minus_fixed_matched_se": truth["fixed_matched"]["policy_minus_se"],
        "minus_random": truth["random_same_distribution"]["policy_minus"],
        "minus_random_se": truth["random_same_distribution"]["policy_minus_se"],
        "evaluate_says": seen["verdict"]["summary"],
        "evaluate_share_of_oracle_saving": seen["share_of_oracle_saving"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sigmas", default="0,0.002,0.01,0.02,none",
                        help="IQS noise levels, comma-separated; 'none' = the no-signal table (noise 0.01)")
    parser.add_argument("--train-prompts", type=int, default=2000)
    parser.add_argument("--test-prompts", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt in the tables")
    parser.add_argument("--width", type=int, default=256, help="token state width (768 = SD1.5; smaller is faster)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    for name in FIT_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), type=type(getattr(FitSettings, name)),
                            default=getattr(FitSettings, name))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = FitSettings(**{name: getattr(args, name) for name in FIT_FLAGS})
    print(f"known-answer benchmark: {args.train_prompts} training / {args.test_prompts} held-out prompts x "
          f"{args.seeds} seeds, token width {args.width}, {args.threads} thread(s); fit: {settings}")
    rows = []
    for sigma in [None if s == "none" else float(s) for s in args.sigmas.split(",")]:
        row = judge(sigma, args, settings)
        rows.append(row)
        print(f"{row['table']:>12}: {row['share_of_true_oracle_saving']:6.1%} of the true oracle's saving "
              f"({row['mean_steps']:.1f} mean steps, exact answer {row['exact_answer_share']:.0%}), true IQS drop "
              f"{row['true_iqs_drop_pct']:.2f}%, minus fixed-matched {row['minus_fixed_matched']:+.4f} ± "
              f"{row['minus_fixed_matched_se']:.4f}, minus random {row['minus_random']:+.4f} ± "
              f"{row['minus_random_se']:.4f}; fit {row['fit_seconds']:.0f} s")
        print(f"{'':>12}  evaluate on the noisy table says: {row['evaluate_says']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
