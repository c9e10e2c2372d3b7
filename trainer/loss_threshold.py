"""Calibrate a quality policy's threshold on held-out prompts, so its tolerance holds on average.

A quality policy predicts each option's expected loss and takes the fewest steps whose prediction is within a
threshold. With the tolerance itself as the threshold, every prompt's *expected* loss stays within it, and a prompt
the policy cannot place between two step counts pays for the doubt with the larger one: on the known-answer
benchmark (``benchmarks/known_answer.py``) such a policy lost 0.1-0.3% IQS on average where 1% was accepted, and kept
80-87% of the true oracle's saving. Where predictions are too optimistic (heavy-tailed losses on few seeds) the same
rule loses more than the tolerance on average. Both are read off the validation prompts the fit held back: the
threshold is the largest one at which their average observed loss (seed-averaged, against the largest option), plus
CONFIDENCE_SE standard errors, stays within the tolerance, for every threshold up to it, so a noisy dip past the limit
cannot be picked. The observed losses are noisy but unbiased, and the average over prompts shrinks their noise; the
margin keeps a handful of validation prompts from vouching for more than they show. With it the benchmark's policy
keeps 92-94% of the true oracle's saving at 0.8-1.0% IQS drop (README, "Known-answer benchmark").
"""
from __future__ import annotations

import torch

from ..policy.decision import first_within, knob_tolerance
from ..policy.network import CALIBRATED_BIASES

# The average loss must stay within the tolerance by this many standard errors: a few validation prompts cannot
# vouch for a threshold. Measured on the embedded demo's table (19 validation prompts, one seed, fit seeds 0-2): without
# this margin the threshold of one fit lost 2.9% IQS on the 128 held-out prompts; with it the three fits lost 0.0-0.1%
# at 45-50 mean steps, i.e. they kept almost every prompt at the largest option, which is what so few prompts support.
CONFIDENCE_SE = 2.0
# Thresholds tried, relative to the tolerance: 0 (every prompt takes the largest option) and a log grid wide enough
# for every knob position (tolerance / 10 ** bias) to find its threshold within 1/100 to 100 times its own tolerance.
_GRID = torch.cat([torch.zeros(1), torch.logspace(-3, 3, 601, dtype=torch.float64)])


def calibrated_thresholds(predicted: torch.Tensor, observed: torch.Tensor, tolerance_pct: float) -> tuple[float, ...]:
    """Per knob position of CALIBRATED_BIASES, the largest threshold whose choices, and those of every smaller
    threshold, keep the mean observed loss, plus CONFIDENCE_SE standard errors, within that position's tolerance
    (``tolerance / 10 ** bias``). ``predicted`` and ``observed`` are held-out prompts' losses [N, O] in %. One grid
    serves every position, so a larger tolerance never gets a smaller threshold."""
    candidates = _GRID * tolerance_pct
    choices = torch.stack([first_within(predicted, float(t)) for t in candidates])  # [G, N]
    losses = observed.double()[torch.arange(len(observed)), choices]  # [G, N]
    spread = losses.std(1) if len(observed) > 1 else torch.full((len(candidates),), float("inf"), dtype=losses.dtype)
    upper = losses.mean(1) + CONFIDENCE_SE * spread / len(observed) ** 0.5  # one prompt: never within
    upper[0] = 0.0  # threshold 0 takes the largest option, the reference: it loses nothing by definition
    thresholds = []
    for bias in CALIBRATED_BIASES:
        kept = int(torch.cumprod((upper <= knob_tolerance(tolerance_pct, bias)).int(), 0).sum())
        thresholds.append(float(candidates[kept - 1]))
    return tuple(thresholds)
