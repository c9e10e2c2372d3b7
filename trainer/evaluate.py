"""Judge a policy on a reward table of prompts it never trained on, against the baselines that can fool a reader.

Every number is an exact expectation over the table (IQS averaged over the table's seeds), so two runs on the same
table agree. The comparisons (after the paper, arXiv 2311.14768):

* ``fixed``: every step option for all prompts;
* ``fixed_matched``: a fixed count at the policy's mean steps; when that mean falls between two options it is the
  blend of the two neighbours with exactly that mean (the straight line between them on the fixed curve);
* ``random_same_distribution``: each prompt gets an option drawn from the policy's own step histogram: the key
  control, since beating it shows the policy chooses *per prompt* rather than merely shifting the average;
* ``heuristic_wordcount``: the same histogram handed out by word count (fewest words, fewest steps);
* ``oracle``: per prompt, the fewest steps whose IQS is at least the largest option's (knows the answers).

Differences against the policy carry paired standard errors (same prompts, so the prompt-to-prompt spread cancels).
"""
from __future__ import annotations

import math

import torch

from ..policy import PolicyFeatures, StepPolicy, choose_steps
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


def evaluate_choices(table: RewardTable, choices: torch.Tensor) -> dict:
    """report.json's content for given per-prompt option indices (a policy's, or any rule's)."""
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
    oracle = _oracle_choices(quality)
    largest = fixed[str(table.options[-1])]
    oracle_saving = 1 - steps[oracle].mean().item() / steps[-1].item()
    policy_saving = 1 - mean_steps / steps[-1].item()
    report = {
        "n_prompts": n,
        "n_seeds": len(table.seeds),
        "options": list(table.options),
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
                   "time_s": seconds[rows, oracle].mean().item()},
        "saving_vs_max": {"steps_pct": 100 * policy_saving,
                          "time_pct": 100 * (1 - seconds[rows, choices].mean().item() / largest["time_s"])},
        "iqs_drop_vs_max_pct": 100 * (largest["iqs"] - policy_q.mean().item()) / abs(largest["iqs"]),
        "share_of_oracle_saving": policy_saving / oracle_saving if oracle_saving > 0 else None,
        "per_prompt": [{"prompt": p, "words": len(p.split()), "steps": table.options[c], "oracle_steps":
                        table.options[o]} for p, c, o in zip(table.prompts, choices.tolist(), oracle.tolist())],
    }
    report["checks"] = _checks(report)
    return report


def evaluate_policy(policy: StepPolicy, table: RewardTable) -> dict:
    """The full comparison for a policy on a held-out table; the policy's file is named in the report."""
    if tuple(policy.config.options) != table.options:
        raise ValueError(f"policy {policy.name} chooses among {policy.config.options} but the table was made for "
                         f"{table.options}; generate the evaluation table with the policy's --options")
    report = evaluate_choices(table, policy_choices(policy, table))
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


def _oracle_choices(quality: torch.Tensor) -> torch.Tensor:
    """Per prompt, the first (fewest-step) option whose IQS reaches the largest option's."""
    good_enough = quality >= quality[:, -1:]
    return good_enough.double().argmax(1)  # argmax returns the first True


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
