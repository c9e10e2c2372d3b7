"""The inputs both AdaDiff nodes share (policy, limits, quality/speed knob) and the decision made from them."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..policy import StepChoice, choose_steps
from .policy_folder import load_cached_policy, policy_folders, policy_fingerprint, policy_names

CATEGORY = "model/sampling/adadiff"  # next to KSampler, which ComfyUI 0.33 lists under model > sampling
STEPS_LIMIT = 10000  # KSampler's own upper bound for steps

log = logging.getLogger(__name__)


def step_policy_inputs() -> list[io.Input]:
    """Policy file, step limits and the knob; built per call so the policy list follows the folder's contents."""
    names = policy_names()
    return [
        io.Combo.Input("policy", options=names, tooltip=policy_tooltip(bool(names))),
        io.Int.Input("min_steps", default=1, min=1, max=STEPS_LIMIT,
                     tooltip="Never sample fewer steps than this, whatever the policy picks."),
        io.Int.Input("max_steps", default=1000, min=1, max=STEPS_LIMIT,
                     tooltip="Never sample more steps than this, whatever the policy picks."),
        io.Float.Input("quality_bias", default=0.0, min=-1.0, max=1.0, step=0.05,
                       tooltip="0 uses the policy as trained. Positive values favour more steps (quality), "
                               "negative values fewer steps (speed). A quality policy accepts its average IQS loss "
                               "divided by 10 per unit: 1 a tenth of it, -1 ten times."),
    ]


def policy_tooltip(any_policy: bool) -> str:
    """What the policy list's tooltip says; with an empty list, where to put a policy file."""
    if any_policy:
        return ("Step policy file from models/adadiff/. It must be made for this model family (e.g. an SD1.5 policy "
                "for SD1.5 checkpoints).")
    return (f"No step policy found. Put a .safetensors policy file in {' or '.join(policy_folders())}, then press R "
            "(refresh node definitions) or reload the page.")


def check_policy_name(policy: str | None) -> bool | str:
    """ComfyUI's check of the policy widget before a prompt runs: True, or what is wrong and where policies go.

    It replaces ComfyUI's own "Value not in list", which names neither the folder nor what to do. A linked value
    (None here) is checked when the node runs.
    """
    if policy is None:
        return True
    names = policy_names()
    if policy in names:
        return True
    folders = " or ".join(policy_folders())
    if not names:
        return (f"no step policy found in {folders}; put a .safetensors policy file there, press R (refresh node "
                "definitions) and pick it")
    return f"policy file '{policy}' is not in {folders}; put it there and press R, or pick one of the listed policies"


def decide_steps(positive, policy: str, min_steps: int, max_steps: int, quality_bias: float) -> StepChoice:
    """One step count for the whole conditioning batch: the most demanding prompt's, within the limits.

    Linked inputs skip ComfyUI's widget range check, so the limits are checked here.
    """
    for name, value in (("min_steps", min_steps), ("max_steps", max_steps)):
        if not 1 <= value <= STEPS_LIMIT:
            raise ValueError(f"{name} must be between 1 and {STEPS_LIMIT}, got {value}")
    choice = choose_steps(load_cached_policy(policy), positive, quality_bias=quality_bias,
                          min_steps=min_steps, max_steps=max_steps)
    log.info("AdaDiff: %s chose %d steps (per prompt: %s)", policy, choice.steps, list(choice.per_prompt))
    return choice


def fingerprint_policy_inputs(policy: str | None = None, **_inputs) -> tuple:
    """Re-run the node when the policy file changed on disk; other inputs are compared by ComfyUI itself."""
    return policy_fingerprint(policy)
