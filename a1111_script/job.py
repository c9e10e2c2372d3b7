"""One webui job with AdaDiff on: the policy chosen once per job, the step count set once per batch.

State lives on the job's processing object ``p`` (never on the shared Script instance), so concurrent or nested
jobs, such as the per-prompt runs of the dropdown script, cannot see each other's choices.

The webui catches and merely logs exceptions from always-on hooks, so nothing here may fail quietly: every problem
is said three times (a console line, a comment under the result in the UI, an ``AdaDiff error`` infotext key) and
the batch runs with the steps the user asked for; nothing else about the job changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..policy import PolicyFileError, StepChoice, StepPolicy, choose_steps
from .settings import ERROR_KEY, INFOTEXT_KEY, StepSettings

JOB_ATTRIBUTE = "adadiff_job"  # the StepJob of a running job
REQUEST_ATTRIBUTE = "adadiff_request"  # control values the dropdown script hands to the always-on hook

log = logging.getLogger(__name__)


@dataclass
class StepJob:
    """What AdaDiff knows about the job: its settings, the user's own steps and the loaded policy."""

    settings: StepSettings
    requested_steps: int
    policy: StepPolicy


def start_job(p, controls: tuple, load_policy_named: Callable[[str], StepPolicy]) -> StepJob | None:
    """Check the controls and load the policy for job ``p``; on a problem report it and leave the job as it was."""
    requested_steps = p.steps
    try:
        settings = StepSettings.from_controls(*controls)
    except (TypeError, ValueError) as error:
        report_problem(p, requested_steps, f"the AdaDiff settings are not usable: {error}")
        return None
    p.extra_generation_params[INFOTEXT_KEY] = settings.infotext()
    try:
        policy = load_policy_named(settings.policy)
    except PolicyFileError as error:
        report_problem(p, requested_steps, str(error))
        return None
    job = StepJob(settings, requested_steps, policy)
    setattr(p, JOB_ATTRIBUTE, job)
    return job


def current_job(p) -> StepJob | None:
    return getattr(p, JOB_ATTRIBUTE, None)


def choose_batch_steps(p, job: StepJob, prompts: list[str], encode: Callable[[list[str]], Any],
                       least_steps: int = 1) -> StepChoice | None:
    """Set ``p.steps`` for this batch from its prompts (the most demanding one wins); None if that failed.

    ``least_steps`` is the fewest steps the job's sampler accepts; it overrides the user's max, since a count below it
    would fail the whole job.
    """
    settings = job.settings
    try:
        choice = choose_steps(
            job.policy,
            encode(prompts),
            quality_bias=settings.knob,
            min_steps=settings.min_steps,
            max_steps=settings.max_steps,
        )
    except (PolicyFileError, TypeError, ValueError) as error:
        report_problem(p, job.requested_steps, str(error))
        return None
    except Exception as error:  # noqa: BLE001  the webui would swallow it; keep the job running with a loud note
        log.exception("AdaDiff: reading the prompts' conditioning failed")
        report_problem(p, job.requested_steps, f"reading the prompts' conditioning failed ({error!r})")
        return None
    p.steps = max(choice.steps, least_steps)
    p.extra_generation_params.pop(ERROR_KEY, None)
    log.info("%s", choice.summary())
    if p.steps > choice.steps:
        log.info("AdaDiff: raised to %d steps, the fewest this sampler runs", p.steps)
    return choice


def report_problem(p, requested_steps: int, problem: str) -> None:
    """Say loudly that AdaDiff did not choose, and run the steps the user asked for."""
    p.steps = requested_steps
    note = f"{problem}; ran the requested {requested_steps} steps"
    log.error("AdaDiff: %s", note)
    p.comment(f"AdaDiff: {note}")
    p.extra_generation_params[ERROR_KEY] = note
