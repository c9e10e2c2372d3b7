"""Judge a policy on a reward table of prompts it never trained on, against the baselines that can fool a reader.

Every number is an exact expectation over the table (IQS averaged over the table's seeds), so two runs on the same
table agree. The comparisons (after the paper, arXiv 2311.14768):

* ``fixed``: every step option for all prompts;
* ``fixed_matched``: a fixed count at the policy's mean steps; when that mean falls between two options it is the
  blend of the two neighbours with exactly that mean (the straight line between them on the fixed curve);
* ``random_same_distribution``: each prompt gets an option drawn from the policy's own step histogram: the key
  control, since beating it shows the policy chooses *per prompt* rather than merely shifting the average;
* ``heuristic_wordcount``: the same histogram handed out by word count (fewest words, fewest steps);
* ``oracle``: per prompt, the fewest steps whose seed-averaged IQS is within the tolerance of the largest
  option's (knows the answers). With noise this flatters itself (an option that lands within the tolerance by luck
  counts), so with two or more seeds the report adds a **cross-seed oracle**: choices made on half the seeds, judged
  on the other half (and the reverse), and how much of the oracle's spread across prompts repeats across seed
  halves, i.e. is the prompt's rather than the seed's (split-half correlation);
* ``fixed_within_tolerance``: the fewest fixed steps whose mean IQS stays within the tolerance of the largest
  option's: the honest answer when per-prompt steps do not pay off on a model.

Differences against the policy carry paired standard errors (same prompts, so the prompt-to-prompt spread cancels).
The ``verdict`` says whether per-prompt steps pay off here: the policy must beat both the matched fixed count and
the random policy with its step distribution by more than 2 SE; otherwise it names the fixed count to use.
"""
from __future__ import annotations

import math

import torch

from ..policy import PolicyFeatures, StepPolicy, choose_steps
from ..policy.decision import first_within
from .fit import quality_loss_pct
from .table import RewardTable

_CHOICE_BATCH = 256
# The bar for a useful policy; reported, never used to pick anything.
CHECKS = {"min_saving_pct": 40.0, "max_iqs_drop_pct": 1.0, "min_margin_se": 2.0, "min_share_of_oracle_saving": 0.8}


def policy_choices(policy: StepPolicy, table: RewardTable) -> torch.Tensor:
    """The option index the policy picks for each prompt, through the same decision code the hosts run."""
    features, picks = table.features, []
    for start in range(0, len(table), _CHOICE_BATCH):
        part = slice(start, start + _CHOICE_BATCH)
        batch = PolicyFeatures(features.tokens[part], features.mask[part],
                               None if features.pooled is None else features.pooled[part])
        picks += [table.options.index(steps) for steps in choose_steps(policy, batch).per_prompt]
    return torch.tensor(picks, dtype=torch.long)


DEFAULT_TOLERANCE_PCT = 1.0


def evaluate_choices(table: RewardTable, choices: torch.Tensor, tolerance_pct: float = DEFAULT_TOLERANCE_PCT) -> dict:
    """report.json's content for given per-prompt option indices (a policy's, or any rule's); ``tolerance_pct`` is
    the IQS loss against the largest option that the oracle and the fixed recommendation accept."""
    quality = table.iqs.mean(1).double()  # [N, O] IQS averaged over seeds
    seconds = table.time_s.mean(1).double()
    steps = torch.tensor(table.options, dtype=torch.float64)
    n, rows = len(table), torch.arange(len(table))
    policy_q = quality[rows, choices]
    histogram = torch.bincount(choices, minlength=len(table.options)).double() / n
    mean_steps = (steps[choices]).mean().item()

    def paired(other_q: torch.Tensor) -> dict:
        difference = policy_q - other_q
        return {"policy_minus": difference.mean().item(), "policy_minus_se": _se(difference)}

    fixed = {str(o): {"iqs": quality[:, i].mean().item(), "iqs_se": _se(quality[:, i]),
                      "time_s": seconds[:, i].mean().item()} for i, o in enumerate(table.options)}
    matched_q, matched = _matched_fixed(quality, steps, mean_steps)
    random_q = quality @ histogram
    heuristic = _wordcount_choices(table.prompts, histogram, n)
    oracle = _oracle_choices(table.iqs, tolerance_pct)
    largest = fixed[str(table.options[-1])]
    oracle_saving = 1 - steps[oracle].mean().item() / steps[-1].item()
    policy_saving = 1 - mean_steps / steps[-1].item()
    report = {
        "n_prompts": n,
        "n_seeds": len(table.seeds),
        "options": list(table.options),
        "tolerance_pct": tolerance_pct,
        "policy": {"mean_steps": mean_steps, "iqs": policy_q.mean().item(), "iqs_se": _se(policy_q),
                   "time_s": seconds[rows, choices].mean().item(),
                   "step_histogram": {str(o): histogram[i].item() for i, o in enumerate(table.options)}},
        "fixed": fixed,
        "fixed_matched": {**matched, "iqs": matched_q.mean().item(), "iqs_se": _se(matched_q), **paired(matched_q)},
        "random_same_distribution": {"mean_steps": (histogram * steps).sum().item(), "iqs": random_q.mean().item(),
                                     "iqs_se": _se(random_q), **paired(random_q)},
        "heuristic_wordcount": {"mean_steps": steps[heuristic].mean().item(),
                                "iqs": quality[rows, heuristic].mean().item(), **paired(quality[rows, heuristic])},
        "oracle": {"mean_steps": steps[oracle].mean().item(), "iqs": quality[rows, oracle].mean().item(),
                   "time_s": seconds[rows, oracle].mean().item(), "steps_sd": steps[oracle].std().item()},
        "cross_seed_oracle": _cross_seed_oracle(table.iqs, steps, tolerance_pct),
        "fixed_within_tolerance": _fixed_within_tolerance(quality, steps, tolerance_pct),
        "saving_vs_max": {"steps_pct": 100 * policy_saving,
                          "time_pct": 100 * (1 - seconds[rows, choices].mean().item() / largest["time_s"])},
        "iqs_drop_vs_max_pct": 100 * (largest["iqs"] - policy_q.mean().item()) / abs(largest["iqs"]),
        "share_of_oracle_saving": policy_saving / oracle_saving if oracle_saving > 0 else None,
        "per_prompt": [{"prompt": p, "words": len(p.split()), "steps": table.options[c], "oracle_steps":
                        table.options[o]} for p, c, o in zip(table.prompts, choices.tolist(), oracle.tolist())],
    }
    report["checks"] = _checks(report)
    report["verdict"] = _verdict(report)
    return report


def evaluate_policy(policy: StepPolicy, table: RewardTable) -> dict:
    """The full comparison for a policy on a held-out table; the policy's file is named in the report. The oracle's
    tolerance is a quality policy's own; REINFORCE policies are judged at the default 1%."""
    if tuple(policy.config.options) != table.options:
        raise ValueError(f"policy {policy.name} chooses among {policy.config.options} but the table was made for "
                         f"{table.options}; generate the evaluation table with the policy's --options")
    tolerance = policy.config.tolerance_pct if policy.config.objective == "quality" else DEFAULT_TOLERANCE_PCT
    report = evaluate_choices(table, policy_choices(policy, table), tolerance)
    report["policy"]["objective"] = policy.config.objective
    report["policy"]["file"] = policy.name
    return report


def _se(values: torch.Tensor) -> float:
    return values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def _matched_fixed(quality: torch.Tensor, steps: torch.Tensor, mean_steps: float) -> tuple[torch.Tensor, dict]:
    """Per-prompt IQS of a fixed count at ``mean_steps``, blending the two neighbouring options linearly."""
    upper = min(int(torch.searchsorted(steps, torch.tensor(mean_steps, dtype=steps.dtype)).item()), len(steps) - 1)
    lower = max(upper - 1, 0)
    if steps[upper].item() == mean_steps or upper == lower:
        return quality[:, upper], {"steps": mean_steps, "options": [int(steps[upper].item())]}
    weight = (steps[upper].item() - mean_steps) / (steps[upper] - steps[lower]).item()
    blended = weight * quality[:, lower] + (1 - weight) * quality[:, upper]
    return blended, {"steps": mean_steps, "options": [int(steps[lower].item()), int(steps[upper].item())],
                     "weight_of_lower": weight}


def _wordcount_choices(prompts, histogram: torch.Tensor, n: int) -> torch.Tensor:
    """Hand out the policy's step histogram by word count: the shortest prompts get the fewest steps."""
    counts = torch.floor(histogram * n + 1e-9).long()
    remainder = n - counts.sum().item()
    counts[torch.argsort(histogram * n - counts, descending=True, stable=True)[:remainder]] += 1
    order = sorted(range(n), key=lambda i: (len(prompts[i].split()), i))
    choices = torch.empty(n, dtype=torch.long)
    choices[torch.tensor(order)] = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return choices


def _oracle_choices(iqs: torch.Tensor, tolerance_pct: float) -> torch.Tensor:
    """Per prompt, the first (fewest-step) option whose seed-averaged IQS is within the tolerance of the largest's."""
    return first_within(quality_loss_pct(iqs), tolerance_pct)


def _cross_seed_oracle(iqs: torch.Tensor, steps: torch.Tensor, tolerance_pct: float) -> dict | None:
    """The oracle chosen on one half of the seeds and judged on the other, both ways round; None with one seed."""
    if iqs.shape[1] < 2:
        return None
    halves = (iqs[:, 0::2], iqs[:, 1::2])
    picks = [_oracle_choices(half, tolerance_pct) for half in halves]
    rows = torch.arange(len(iqs))
    judged = [halves[1 - i].double().mean(1) for i in range(2)]  # each half's choice on the other half's seeds
    iqs_on_other = torch.stack([judged[i][rows, picks[i]] for i in range(2)]).mean(0)
    largest_on_other = torch.stack([judged[i][:, -1] for i in range(2)]).mean(0)
    chosen = torch.stack([steps[p] for p in picks])
    explained = _correlation(chosen[0], chosen[1])
    return {"mean_steps": chosen.mean().item(), "iqs": iqs_on_other.mean().item(),
            "iqs_drop_pct": 100 * (largest_on_other.mean() - iqs_on_other.mean()).item() / abs(largest_on_other.mean().item()),
            "saving_pct": 100 * (1 - chosen.mean().item() / steps[-1].item()),
            "steps_sd": chosen.std(1).mean().item() if chosen.shape[1] > 1 else 0.0,
            "share_of_spread_from_prompt": explained}


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Split-half correlation: the share of the oracle's variance across prompts that repeats across seeds."""
    if a.std() == 0 or b.std() == 0:
        return None
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def _fixed_within_tolerance(quality: torch.Tensor, steps: torch.Tensor, tolerance_pct: float) -> dict:
    """The fewest fixed steps whose mean IQS over the prompts is within the tolerance of the largest option's."""
    means = quality.mean(0)
    drops = quality_loss_pct(means[None, None, :])[0]
    index = int(first_within(drops[None], tolerance_pct).item())
    return {"steps": int(steps[index].item()), "iqs": means[index].item(), "iqs_drop_pct": drops[index].item(),
            "saving_pct": 100 * (1 - steps[index].item() / steps[-1].item())}


def _verdict(report: dict) -> dict:
    """Whether per-prompt steps pay off on this table, and what to do when they do not, in one sentence."""
    margin = CHECKS["min_margin_se"]
    fixed = report["fixed_within_tolerance"]
    pays_off = report["checks"]["beats_fixed_matched_by_2se"] and report["checks"]["beats_random_same_distribution_by_2se"]
    matched = report["fixed_matched"]
    if pays_off:
        summary = (f"per-prompt steps pay off: the policy saves {report['saving_vs_max']['steps_pct']:.0f}% of the steps "
                   f"at {report['iqs_drop_vs_max_pct']:.2f}% less IQS and beats a fixed {matched['steps']:.1f} steps "
                   f"by {matched['policy_minus']:+.4f} ({matched['policy_minus'] / matched['policy_minus_se']:.1f} SE)")
    else:
        summary = (f"per-prompt steps do not pay off here: the policy does not beat both a fixed count at its mean "
                   f"steps and a random policy with its step distribution by {margin:g} SE; use a fixed "
                   f"{fixed['steps']} steps (the fewest within {report['tolerance_pct']:g}% of the largest option's "
                   f"IQS: {fixed['iqs_drop_pct']:.2f}% less, {fixed['saving_pct']:.0f}% fewer steps)")
    return {"per_prompt_pays_off": pays_off, "recommended_fixed_steps": fixed["steps"], "summary": summary}


def _checks(report: dict) -> dict:
    margin = CHECKS["min_margin_se"]

    def beats(name: str) -> bool:
        entry = report[name]
        return entry["policy_minus"] >= margin * entry["policy_minus_se"] and entry["policy_minus"] > 0

    share = report["share_of_oracle_saving"]
    return {
        "saving_at_least_40pct": report["saving_vs_max"]["steps_pct"] >= CHECKS["min_saving_pct"],
        "iqs_drop_at_most_1pct": report["iqs_drop_vs_max_pct"] <= CHECKS["max_iqs_drop_pct"],
        "beats_random_same_distribution_by_2se": beats("random_same_distribution"),
        "beats_fixed_matched_by_2se": beats("fixed_matched"),
        "at_least_80pct_of_oracle_saving": share is not None and share >= CHECKS["min_share_of_oracle_saving"],
    }
