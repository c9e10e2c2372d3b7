"""One webui job with AdaDiff on: the policy chosen once per job, the step count set once per batch.

State lives on the job's processing object ``p`` (never on the shared Script instance), so concurrent or nested
jobs, such as the per-prompt runs of the dropdown script, cannot see each other's choices.

The webui catches and merely logs exceptions from always-on hooks, so nothing here may fail quietly: every problem
is said three times (a console line, a comment under the result in the UI, an ``AdaDiff error`` infotext key) and
the batch runs with the steps the user asked for; nothing else about the job changes. A successful choice is said
too, in the console and under the result, because the UI's Sampling steps slider keeps showing the user's number.
Console lines are printed: the webui shows no INFO log records unless started with ``SD_WEBUI_LOG_LEVEL``.
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
    p.extra_generation_params[INFOTEXT_KEY] = settings.infotext(requested_steps)
    try:
        policy = load_policy_named(settings.policy)
    except PolicyFileError as error:
        report_problem(p, requested_steps, str(error))
        return None
    except Exception as error:  # noqa: BLE001  the webui would only log it; keep the job running with a loud note
        log.exception("AdaDiff: loading the policy failed")
        report_problem(p, requested_steps, f"loading the policy {settings.policy} failed ({error!r})")
        return None
    job = StepJob(settings, requested_steps, policy)
    setattr(p, JOB_ATTRIBUTE, job)
    return job


def current_job(p) -> StepJob | None:
    return getattr(p, JOB_ATTRIBUTE, None)


def choose_batch_steps(p, job: StepJob, prompts: list[str], encode: Callable[[list[str]], Any],
                       least_steps: tuple[int, str] = (1, "")) -> StepChoice | None:
    """Set ``p.steps`` for this batch from its prompts (the most demanding one wins); None if that failed.

    ``least_steps`` is the fewest steps the job's sampler accepts and why (e.g. ``(3, "UniPC order 3")``); it
    overrides the choice and the user's max, since a count below it would fail the whole job, and is then reported.
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
        log.exception("AdaDiff: reading the prompts with the checkpoint's text encoder failed")
        report_problem(p, job.requested_steps, f"reading the prompts with the checkpoint's text encoder failed "
                                               f"({error!r})")
        return None
    fewest, reason = least_steps
    p.steps = max(choice.steps, fewest)
    p.extra_generation_params.pop(ERROR_KEY, None)
    log.info("%s", choice.summary())
    if p.steps > choice.steps:
        above_max = f", above Max steps {settings.max_steps}" if p.steps > settings.max_steps else ""
        say(p, f"AdaDiff: {settings.policy} chose {choice.steps} steps, but {reason} needs at least {fewest}: "
               f"ran {p.steps} steps{above_max}")
    else:
        say(p, f"AdaDiff: {settings.policy} chose {p.steps} steps (Sampling steps {job.requested_steps} is used only "
               "when AdaDiff cannot choose)")
    return choice


def say(p, line: str) -> None:
    """A line in the console and under the result in the UI."""
    print(line)
    p.comment(line)


def report_problem(p, requested_steps: int, problem: str) -> None:
    """Say loudly that AdaDiff did not choose, and run the steps the user asked for."""
    p.steps = requested_steps
    note = f"{problem}; ran the requested {requested_steps} steps"
    log.error("AdaDiff: %s", note)
    p.comment(f"AdaDiff: {note}")
    p.extra_generation_params[ERROR_KEY] = note
