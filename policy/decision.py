"""From a prompt batch to one step count: the policy's rule, a quality/speed knob, user limits, one count per batch.

The rule depends on the policy's objective (see :mod:`.network`): a REINFORCE policy takes the argmax of its
distribution, a quality policy the fewest steps whose predicted quality loss is within its tolerance.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .errors import FeatureMismatchError
from .features import PolicyFeatures, check_values, non_finite_rows, policy_features
from .network import CALIBRATED_BIASES, PolicyConfig, StepPolicy

# Log-probability added to the largest option (and proportionally to the others) at quality_bias = 1.
QUALITY_BIAS_SCALE = 5.0
# Quality policies: quality_bias b divides the tolerance by TOLERANCE_BIAS_BASE ** b (1 -> a tenth, -1 -> ten times).
TOLERANCE_BIAS_BASE = 10.0
# The widest knob a request may ask for. The hosts' knobs run -1 ... +1; at 10 a quality policy's tolerance is already
# divided (or multiplied) by 10**10 and a REINFORCE policy's log-probabilities shifted by 50, so nothing changes
# beyond it, while far beyond it the arithmetic breaks (10.0 ** 309 overflows; bias * 5 overflows float32 near 1e38,
# whose NaN scores picked the fewest steps).
MAX_QUALITY_BIAS = 10.0


@dataclass(frozen=True)
class StepChoice:
    """What the policy decided for a batch and why."""

    steps: int  # the count the sampler should run: the most demanding prompt's
    per_prompt: tuple[int, ...]  # each prompt's own count, after bias and limits
    probs: torch.Tensor | None  # [B, n_options] fp32 CPU, a REINFORCE policy's distribution before the knob
    options: tuple[int, ...]
    predicted_loss_pct: torch.Tensor | None = None  # [B, n_options] a quality policy's predicted losses, in %
    tolerance_pct: float | None = None  # the loss a quality policy accepted, after the knob
    threshold_pct: float | None = None  # a calibrated quality policy's per-prompt threshold for that tolerance

    def summary(self) -> str:
        """One readable line per prompt: chosen steps and what the policy saw in each option."""
        if self.predicted_loss_pct is None:
            lines = [f"AdaDiff: {self.steps} steps"]
            rows, unit = self.probs.tolist(), "{:.2f}"
        else:
            if self.threshold_pct is None:
                within, calibrated = self.tolerance_pct, ""
            else:
                within, calibrated = self.threshold_pct, f", calibrated for {self.tolerance_pct:.2g}% on average"
            lines = [f"AdaDiff: {self.steps} steps (fewest whose predicted quality is within {within:.2g}% "
                     f"of {self.options[-1]} steps{calibrated}; predicted loss in % per option)"]
            rows, unit = self.predicted_loss_pct.tolist(), "{:.2f}%"
        for index, (steps, row) in enumerate(zip(self.per_prompt, rows)):
            dist = ", ".join(f"{o}:{unit.format(v)}" for o, v in zip(self.options, row))
            lines.append(f"prompt {index}: {steps} steps ({dist})")
        return "\n".join(lines)


def check_features(policy: StepPolicy, features: PolicyFeatures) -> None:
    """Refuse conditioning of another model family with a message that says which widths differ."""
    config = policy.config
    if features.token_dim != config.token_dim:
        raise FeatureMismatchError(
            f"policy {policy.name} expects {config.token_dim}-wide conditioning, got {features.token_dim}: it was "
            f"trained for {policy.info.get('model_family', 'another model')}; pick a policy made for this checkpoint"
        )
    if config.pooled_dim and features.pooled_dim != config.pooled_dim:
        got = "none" if features.pooled is None else f"{features.pooled_dim}-wide"
        raise FeatureMismatchError(
            f"policy {policy.name} expects a {config.pooled_dim}-wide pooled text vector, got {got}: "
            "pick a policy made for this checkpoint"
        )


@torch.inference_mode()
def option_logits(policy: StepPolicy, conditioning) -> torch.Tensor:
    """The policy's head outputs [B, n] in fp32 on CPU (logits, or a quality policy's predicted losses in %),
    whatever host, device and dtype the conditioning came from."""
    features = policy_features(conditioning)
    check_features(policy, features)
    check_values(features)
    device = next(policy.parameters()).device
    pooled = None
    if policy.config.pooled_dim:
        pooled = features.pooled.to(device, torch.float32)
    was_training = policy.training
    if was_training:
        policy.eval()  # no dropout in decisions
    try:
        logits = policy(features.tokens.to(device, torch.float32), features.mask.to(device), pooled)
    finally:
        if was_training:
            policy.train()
    logits = logits.float().cpu()
    rows = non_finite_rows(logits)  # one reduction when all is well
    if rows:
        raise ValueError(f"policy {policy.name} gave NaN or Inf outputs for prompt(s) {', '.join(map(str, rows[:5]))} "
                         "(its weights are too large for float32 arithmetic), so no step count can be read from them; "
                         "retrain it or use another policy file")
    return logits


def _check_request(quality_bias, min_steps, max_steps) -> None:
    """Refuse a knob or limit that would silently give a meaningless count (NaN bias: the fewest steps; +inf or 1e38:
    NaN scores whose argmax is the first option, the opposite of what was asked; max_steps 0: no sampling at all)."""
    if isinstance(quality_bias, bool) or not isinstance(quality_bias, numbers.Real) or not math.isfinite(quality_bias):
        raise ValueError(f"quality_bias must be a finite number (-1 fewest steps ... +1 most), got {quality_bias!r}")
    if abs(quality_bias) > MAX_QUALITY_BIAS:
        raise ValueError(f"quality_bias must be between {-MAX_QUALITY_BIAS:g} and {MAX_QUALITY_BIAS:g} (each unit "
                         "divides the accepted quality loss by 10; the hosts' knobs run -1 ... +1), got "
                         f"{quality_bias!r}")
    for name, value in (("min_steps", min_steps), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1 (or None: no limit), got {value!r}")
    if min_steps is not None and max_steps is not None and min_steps > max_steps:
        raise ValueError(f"min_steps ({min_steps}) is larger than max_steps ({max_steps})")


def choose_steps(
    policy: StepPolicy,
    conditioning,
    *,
    quality_bias: float = 0.0,
    min_steps: int | None = None,
    max_steps: int | None = None,
) -> StepChoice:
    """Pick a step count for a prompt batch.

    ``quality_bias`` shifts choices without retraining: positive values favour more steps, negative fewer, 0 is
    the policy as trained; more bias never gives fewer steps. A REINFORCE policy takes
    ``argmax(log p + bias * position)``, where position runs from 0 (fewest-step option) to 1 (most): the argmax of
    lines with increasing slopes never moves to fewer steps as the bias grows. A quality policy accepts a loss of
    ``tolerance / 10 ** bias`` (bias 1: a tenth of its tolerance; -1: ten times). ``min_steps``/``max_steps`` then
    clamp each count.
    """
    _check_request(quality_bias, min_steps, max_steps)
    outputs = option_logits(policy, conditioning)
    options = policy.config.options
    if policy.config.objective == "quality":
        threshold = loss_threshold(policy.config, quality_bias)
        indices = first_within(outputs, threshold)
        extras = {"probs": None, "predicted_loss_pct": outputs,
                  "threshold_pct": threshold if policy.config.calibrated_thresholds_pct else None,
                  "tolerance_pct": knob_tolerance(policy.config.tolerance_pct, quality_bias)}
    else:
        log_probs = torch.log_softmax(outputs, -1)
        position = torch.tensor([(o - options[0]) / (options[-1] - options[0]) for o in options])
        indices = (log_probs + quality_bias * QUALITY_BIAS_SCALE * position).argmax(-1)
        extras = {"probs": log_probs.exp()}
    per_prompt = []
    for index in indices.tolist():
        steps = options[index]
        if min_steps is not None:
            steps = max(steps, min_steps)
        if max_steps is not None:
            steps = min(steps, max_steps)
        per_prompt.append(steps)
    return StepChoice(max(per_prompt), tuple(per_prompt), options=options, **extras)


def knob_tolerance(tolerance_pct: float, quality_bias: float) -> float:
    """A loss in % at this knob position: divided by TOLERANCE_BIAS_BASE per unit of quality bias."""
    return tolerance_pct / TOLERANCE_BIAS_BASE ** quality_bias


def loss_threshold(config: PolicyConfig, quality_bias: float) -> float:
    """A quality policy's threshold on each prompt's predicted loss at this knob position: the tolerance itself, or,
    for a calibrated policy, the threshold held-out prompts showed keeps their average loss within the tolerance
    (interpolated between the calibrated positions; beyond them scaled as the tolerance is, by 10 per unit)."""
    calibrated = config.calibrated_thresholds_pct
    if not calibrated:
        return knob_tolerance(config.tolerance_pct, quality_bias)
    low, high = CALIBRATED_BIASES[0], CALIBRATED_BIASES[-1]
    if quality_bias <= low:
        return knob_tolerance(calibrated[0], quality_bias - low)
    if quality_bias >= high:
        return knob_tolerance(calibrated[-1], quality_bias - high)
    upper = next(i for i, bias in enumerate(CALIBRATED_BIASES) if bias >= quality_bias)  # >= 1: bias > low
    left, right = CALIBRATED_BIASES[upper - 1], CALIBRATED_BIASES[upper]
    share = (quality_bias - left) / (right - left)
    return calibrated[upper - 1] + share * (calibrated[upper] - calibrated[upper - 1])


def first_within(losses: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Per row of predicted losses [B, n], the first (fewest-step) option within ``tolerance``; the largest option
    always qualifies (its loss is 0 by definition)."""
    return (losses <= tolerance).to(torch.uint8).argmax(-1)
