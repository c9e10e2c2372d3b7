"""Is a bisected reward table as good to fit on as a full one, at how many fewer sampling steps?

Fits a policy on each of two training tables of the same prompts (a full one and one made with ``--search bisect``)
with the same settings, and judges both on the same full held-out table: mean steps, IQS, the paired difference
between the two policies with its standard error, and what each training table cost in sampling steps and seconds.
Sampling steps are counted per rendered image (the option at the reference count is the reference, rendered once).

    python benchmarks/cheap_table.py --full TABLE --bisect TABLE --held-out TABLE [--split-at N]

``--split-at N``: the full table holds the training prompts first and the held-out ones after (as ``adadiff-train
run`` writes them); then ``--held-out`` is not needed.

The same comparison where the answer is known (no rendering: the search is replayed on a known-answer table):

    python benchmarks/cheap_table.py --known-answer [--sigmas 0,0.01,0.02] [--train-prompts 2000]

Each prompt's IQS is read as a convergence reward would score it (over the same seed's largest option, capped at
``--converged-at``); the bisecting search sees only the options it would render, the rest interpolated, exactly as
``generate --search bisect`` stores them. Both policies are judged on the held-out prompts' noise-free curves.
"""
from __future__ import annotations

import argparse
import math

import torch

from dataclasses import replace

from adadiff.trainer.config import FitSettings
from adadiff.trainer.evaluate import evaluate_choices, evaluate_policy, policy_choices
from adadiff.trainer.fit import fit_policy, policy_info
from adadiff.trainer.generate import interpolate_unmeasured, next_probes
from adadiff.trainer.known_answer import known_answer_table
from adadiff.trainer.table import RewardTable, load_table


def sampling_cost(table: RewardTable) -> tuple[float, float]:
    """(sampling steps, seconds) per prompt and seed that made the table: rendered units only."""
    measured = torch.ones_like(table.iqs, dtype=torch.bool) if table.measured is None else table.measured
    steps = torch.tensor(table.options, dtype=torch.float64)
    reference = table.description["reward"].get("reference_steps") or 0
    extra = reference if reference and reference not in table.options else 0  # a reference above every option
    rendered_steps = (measured.double() * steps).sum() / measured[..., 0].numel() + extra
    seconds = (table.time_s.double() * measured).sum() / measured[..., 0].numel()
    return rendered_steps.item(), seconds.item()


def bisected(table: RewardTable, converged_at: float) -> RewardTable:
    """What ``--search bisect`` would store for a fully measured table: per prompt and seed only the options the
    search renders, the others interpolated in steps between them and marked as not measured."""
    steps = torch.tensor(table.options, dtype=torch.float64)
    iqs, measured = torch.empty_like(table.iqs), torch.zeros_like(table.iqs, dtype=torch.bool)
    for seed in range(len(table.seeds)):
        values = torch.full_like(table.iqs[:, seed], math.nan)
        known = measured[:, seed]
        while (targets := next_probes(values, known, converged_at)).ge(0).any():
            rows = targets.ge(0).nonzero().flatten()
            values[rows, targets[rows]] = table.iqs[rows, seed, targets[rows]]
            known[rows, targets[rows]] = True
        iqs[:, seed] = interpolate_unmeasured(values, known, steps)
    return replace(table, iqs=iqs, measured=measured)


def fit(table: RewardTable, settings: FitSettings):
    return fit_policy(table, settings, info=policy_info(table.description, settings), show_progress=False).policy


def compare_rendered(args, settings: FitSettings) -> None:
    """Two rendered training tables of the same prompts, judged on one full held-out table."""
    full, bisect = load_table(args.full), load_table(args.bisect)
    if args.split_at:
        held_out = full.subset(range(args.split_at, len(full)))
        full = full.subset(range(args.split_at))
    else:
        held_out = load_table(args.held_out)
    assert full.prompts == bisect.prompts, "the two training tables must hold the same prompts"
    quality = held_out.iqs.mean(1).double()
    rows = torch.arange(len(held_out))
    picked = {}
    for name, table in (("full", full), ("bisect", bisect)):
        policy = fit(table, settings)
        report = evaluate_policy(policy, held_out)
        picked[name] = quality[rows, policy_choices(policy, held_out)]
        steps, seconds = sampling_cost(table)
        print(f"{name:6} table: {steps:6.1f} sampling steps and {seconds:6.2f} s per prompt and seed to make "
              f"({100 * inferred_share(table):.0f}% of units inferred); policy on {len(held_out)} held-out prompts: "
              f"{report['policy']['mean_steps']:.2f} mean steps, IQS {report['policy']['iqs']:.4f} ± "
              f"{report['policy']['iqs_se']:.4f}, vs fixed matched {report['fixed_matched']['policy_minus']:+.4f} ± "
              f"{report['fixed_matched']['policy_minus_se']:.4f}, IQS drop vs the largest option "
              f"{report['iqs_drop_vs_max_pct']:.2f}%")
    print_difference(picked)
    print(f"sampling steps: {sampling_cost(full)[0] / sampling_cost(bisect)[0]:.2f}x fewer for the bisected table")


def compare_known_answer(args, settings: FitSettings) -> None:
    """The full and the bisected convergence view of one known-answer training table, judged on the truth."""
    print(f"known-answer tables: {args.train_prompts} training / {args.test_prompts} held-out prompts x {args.seeds} "
          f"seeds, token width {args.width}, converged at {args.converged_at} of the largest option's IQS")
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        common = dict(sigma=sigma, seeds=args.seeds, width=args.width)
        train = known_answer_table(args.train_prompts, seed=1, **common)
        test = known_answer_table(args.test_prompts, seed=2, **common)
        truth = test.truth_table()
        steps = torch.tensor(test.table.options, dtype=torch.float64)
        oracle_saving = 1 - steps[test.answer].mean().item() / steps[-1].item()
        full = train.convergence_table(args.converged_at)
        picked, cost = {}, {}
        for name, table in (("full", full), ("bisect", bisected(full, args.converged_at))):
            choices = policy_choices(fit(table, settings), test.table)
            report = evaluate_choices(truth, choices, tolerance_pct=settings.tolerance_pct)
            picked[name] = truth.iqs[:, 0].double()[torch.arange(len(truth)), choices]
            cost[name] = sampling_cost(table)[0]
            print(f"sigma={sigma:<5} {name:6} table: {cost[name]:6.1f} sampling steps per prompt and seed "
                  f"({100 * inferred_share(table):.0f}% of units inferred); policy: "
                  f"{report['saving_vs_max']['steps_pct'] / 100 / oracle_saving:6.1%} of the true oracle's saving "
                  f"({report['policy']['mean_steps']:.1f} mean steps), true IQS drop "
                  f"{report['iqs_drop_vs_max_pct']:.2f}%, minus fixed-matched "
                  f"{report['fixed_matched']['policy_minus']:+.4f} ± {report['fixed_matched']['policy_minus_se']:.4f}")
        print_difference(picked, f"sigma={sigma:<5} ")
        print(f"sigma={sigma:<5} sampling steps: {cost['full'] / cost['bisect']:.2f}x fewer for the bisected table")


def inferred_share(table: RewardTable) -> float:
    return 0.0 if table.measured is None else 1 - table.measured.double().mean().item()


def print_difference(picked: dict[str, torch.Tensor], prefix: str = "") -> None:
    difference = picked["bisect"] - picked["full"]
    print(f"{prefix}bisect minus full policy, paired on held-out prompts: {difference.mean().item():+.4f} ± "
          f"{difference.std().item() / math.sqrt(len(difference)):.4f} IQS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full")
    parser.add_argument("--bisect")
    parser.add_argument("--held-out")
    parser.add_argument("--split-at", type=int)
    parser.add_argument("--known-answer", action="store_true", help="replay the search on known-answer tables")
    parser.add_argument("--sigmas", default="0,0.01,0.02", help="known-answer IQS noise levels, comma-separated")
    parser.add_argument("--train-prompts", type=int, default=2000)
    parser.add_argument("--test-prompts", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--width", type=int, default=256, help="known-answer token state width")
    parser.add_argument("--converged-at", type=float, default=0.98,
                        help="halfway between a converged image (1) and the closest unconverged one (at most 0.96)")
    args = parser.parse_args()
    if args.known_answer:
        compare_known_answer(args, FitSettings())
    elif args.full and args.bisect and (args.held_out or args.split_at):
        compare_rendered(args, FitSettings())
    else:
        parser.error("give --full and --bisect with --held-out or --split-at, or --known-answer")


if __name__ == "__main__":
    main()
