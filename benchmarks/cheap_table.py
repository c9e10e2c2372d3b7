"""Is a bisected reward table as good to fit on as a full one, at how many fewer sampling steps?

Fits a policy on each of two training tables of the same prompts (a full one and one made with ``--search bisect``)
with the same settings, and judges both on the same full held-out table: mean steps, IQS, the paired difference
between the two policies with its standard error, and what each training table cost in sampling steps and seconds.
Sampling steps are counted per rendered image (the option at the reference count is the reference, rendered once).

    python benchmarks/cheap_table.py --full TABLE --bisect TABLE --held-out TABLE [--split-at N]

``--split-at N``: the full table holds the training prompts first and the held-out ones after (as ``adadiff-train
run`` writes them); then ``--held-out`` is not needed.
"""
from __future__ import annotations

import argparse
import math

import torch

from adadiff.trainer.config import FitSettings
from adadiff.trainer.evaluate import evaluate_policy, policy_choices
from adadiff.trainer.fit import fit_policy, policy_info
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", required=True)
    parser.add_argument("--bisect", required=True)
    parser.add_argument("--held-out")
    parser.add_argument("--split-at", type=int)
    args = parser.parse_args()
    full, bisected = load_table(args.full), load_table(args.bisect)
    if args.split_at:
        held_out = full.subset(range(args.split_at, len(full)))
        full = full.subset(range(args.split_at))
    else:
        held_out = load_table(args.held_out)
    assert full.prompts == bisected.prompts, "the two training tables must hold the same prompts"
    settings = FitSettings()
    quality = held_out.iqs.mean(1).double()
    rows = torch.arange(len(held_out))
    picked = {}
    for name, table in (("full", full), ("bisect", bisected)):
        policy = fit_policy(table, settings, info=policy_info(table.description, settings), show_progress=False).policy
        report = evaluate_policy(policy, held_out)
        picked[name] = quality[rows, policy_choices(policy, held_out)]
        steps, seconds = sampling_cost(table)
        inferred = 0.0 if table.measured is None else 1 - table.measured.double().mean().item()
        print(f"{name:6} table: {steps:6.1f} sampling steps and {seconds:6.2f} s per prompt and seed to make "
              f"({100 * inferred:.0f}% of units inferred); policy on {len(held_out)} held-out prompts: "
              f"{report['policy']['mean_steps']:.2f} mean steps, IQS {report['policy']['iqs']:.4f} ± "
              f"{report['policy']['iqs_se']:.4f}, vs fixed matched {report['fixed_matched']['policy_minus']:+.4f} ± "
              f"{report['fixed_matched']['policy_minus_se']:.4f}, IQS drop vs the largest option "
              f"{report['iqs_drop_vs_max_pct']:.2f}%")
    difference = picked["bisect"] - picked["full"]
    print(f"bisect minus full policy, paired on held-out prompts: {difference.mean().item():+.4f} ± "
          f"{difference.std().item() / math.sqrt(len(difference)):.4f} IQS")
    full_steps, bisect_steps = sampling_cost(full)[0], sampling_cost(bisected)[0]
    print(f"sampling steps: {full_steps / bisect_steps:.2f}x fewer for the bisected table")


if __name__ == "__main__":
    main()
