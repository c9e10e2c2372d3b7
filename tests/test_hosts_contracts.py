"""The webui job's decision path (a1111_script/job.py), called in-process: what it sets on the job and what it says.

The webui's own tests (test_a1111_extension.py) load the extension under the package name the webui gives it, which
the mutation run (`make mutation`) cannot follow; these call the same functions as ``adadiff.a1111_script.job``. The
job object is the narrowest seam job.py reads and writes on the webui's processing object: ``steps``,
``extra_generation_params`` and ``comment``.
"""
import logging

import pytest

from adadiff.a1111_script.job import JOB_ATTRIBUTE, choose_batch_steps, current_job, start_job
from adadiff.a1111_script.settings import ERROR_KEY, INFOTEXT_KEY, StepSettings
from adadiff.policy import PolicyConfig, PolicyFileError
from policy_helpers import policy_preferring, random_conditioning

USER_STEPS = 20


class Processing:
    """What job.py uses of the webui's processing object."""

    def __init__(self, steps=USER_STEPS):
        self.steps = steps
        self.extra_generation_params = {}
        self.comments = []

    def comment(self, text):
        self.comments.append(text)


POLICY = policy_preferring(5)  # 30 steps for any prompt


def encode(prompts):
    return random_conditioning(len(prompts))


def started(controls=("fast.safetensors", 0.0, 1, 150), policy=POLICY):
    p = Processing()
    return p, start_job(p, controls, lambda name: policy)


def test_a_started_job_records_its_settings_and_the_users_steps():
    """The infotext names the settings and the user's own steps; the job hangs on p for the batch hook."""
    p, job = started(("fast.safetensors", 0.5, 2, 40))
    assert job.settings == StepSettings("fast.safetensors", 0.5, 2, 40) and job.requested_steps == USER_STEPS
    assert job.policy is POLICY and current_job(p) is job and getattr(p, JOB_ATTRIBUTE) is job
    assert p.extra_generation_params == {INFOTEXT_KEY: "fast.safetensors, knob 0.5, min 2, max 40, requested 20"}


def test_a_job_with_unusable_controls_keeps_the_users_steps_and_says_why():
    p, job = started(("fast.safetensors", 0.0, 50, 10))
    note = ("the AdaDiff settings are not usable: min steps (50) is larger than max steps (10); ran the requested 20 "
            "steps")
    assert job is None and current_job(p) is None and p.steps == USER_STEPS
    assert p.comments == [f"AdaDiff: {note}"] and p.extra_generation_params == {ERROR_KEY: note}


def test_a_policy_that_will_not_load_keeps_the_users_steps_and_says_why():
    def refuse(name):
        raise PolicyFileError(f"{name} is damaged")

    p = Processing()
    assert start_job(p, ("bad.safetensors", 0.0, 1, 150), refuse) is None and current_job(p) is None
    note = "bad.safetensors is damaged; ran the requested 20 steps"
    assert p.comments == [f"AdaDiff: {note}"] and p.extra_generation_params[ERROR_KEY] == note



def test_an_unforeseen_error_while_loading_keeps_the_users_steps_and_logs_its_traceback(caplog):
    """Not a refused file but a bug or a broken install (here a RuntimeError): the job runs the user's steps, says so
    in the note and the infotext, and the log holds the traceback (the webui alone would only have logged it)."""
    def crash(name):
        raise RuntimeError("CUDA error: out of memory")

    p = Processing()
    with caplog.at_level(logging.INFO, logger="adadiff"):
        assert start_job(p, ("fast.safetensors", 0.0, 1, 150), crash) is None and current_job(p) is None
    note = ("loading the policy fast.safetensors failed (RuntimeError('CUDA error: out of memory')); ran the requested "
            "20 steps")
    assert p.steps == USER_STEPS and p.comments == [f"AdaDiff: {note}"] and p.extra_generation_params[ERROR_KEY] == note
    failure = [record for record in caplog.records if record.exc_info]
    assert [record.getMessage() for record in failure] == ["AdaDiff: loading the policy failed"]
    assert failure[0].exc_info[0] is RuntimeError

def test_a_batch_runs_the_policys_choice_and_says_so(capsys):
    """p.steps becomes the choice, an earlier batch's error goes, and the line names the policy and both counts."""
    p, job = started()
    p.extra_generation_params[ERROR_KEY] = "an earlier batch failed"
    choice = choose_batch_steps(p, job, ["a cat", "a dog"], encode)
    said = "AdaDiff: fast.safetensors chose 30 steps (Sampling steps 20 is used only when AdaDiff cannot choose)"
    assert choice.steps == 30 and p.steps == 30 and ERROR_KEY not in p.extra_generation_params
    assert p.comments == [said] and capsys.readouterr().out == said + "\n"


@pytest.mark.parametrize("max_steps, above_max", [(150, ""), (8, ""), (2, ", above Max steps 2")])
def test_a_sampler_needing_more_steps_wins_and_is_named(max_steps, above_max):
    """A count below the sampler's least is raised to it, and the line says why (and when that breaks Max steps)."""
    p, job = started(("fast.safetensors", 0.0, 1, max_steps), policy_preferring(0))  # 5 steps, or 2 at max 2
    chosen = min(5, max_steps)
    choice = choose_batch_steps(p, job, ["a cat"], encode, least_steps=(8, "UniPC order 8"))
    assert choice.steps == chosen and p.steps == 8
    assert p.comments == [f"AdaDiff: fast.safetensors chose {chosen} steps, but UniPC order 8 needs at least 8: ran 8 "
                          f"steps{above_max}"]


def test_a_sampler_least_below_the_choice_changes_nothing():
    p, job = started()
    assert choose_batch_steps(p, job, ["a cat"], encode, least_steps=(30, "UniPC order 30")).steps == 30
    assert p.steps == 30 and "but" not in p.comments[0]


def test_conditioning_the_policy_cannot_read_keeps_the_users_steps():
    """A refused conditioning (here: another model's width) is reported with the policy's own message."""
    p, job = started(policy=policy_preferring(5, PolicyConfig(token_dim=1024)))
    p.steps = 99  # whatever an earlier batch set: the fallback is the user's own count
    assert choose_batch_steps(p, job, ["a cat"], encode) is None
    assert p.steps == USER_STEPS
    note = p.extra_generation_params[ERROR_KEY]
    assert "expects 1024-wide conditioning, got 768" in note and note.endswith("; ran the requested 20 steps")
    assert p.comments == [f"AdaDiff: {note}"]


def test_a_failing_text_encoder_keeps_the_users_steps_and_names_the_error():
    def broken(prompts):
        raise RuntimeError("out of memory")

    p, job = started()
    assert choose_batch_steps(p, job, ["a cat"], broken) is None and p.steps == USER_STEPS
    assert p.extra_generation_params[ERROR_KEY] == ("reading the prompts with the checkpoint's text encoder failed "
                                                    "(RuntimeError('out of memory')); ran the requested 20 steps")


@pytest.mark.parametrize("controls, steps", [
    (("even.safetensors", 1.0, 1, 150), 50),  # the knob at +1: the most steps
    (("even.safetensors", -1.0, 1, 150), 5),  # at -1: the fewest
    (("even.safetensors", -1.0, 12, 150), 12),  # the user's min wins
])
def test_the_jobs_knob_and_limits_reach_the_decision(controls, steps):
    """A policy with no preference of its own (equal logits) goes where the job's knob and limits send it."""
    even = policy_preferring(0, margin=0.0)
    p, job = started(controls, even)
    assert choose_batch_steps(p, job, ["a cat"], encode).steps == steps and p.steps == steps


def test_the_console_log_holds_the_full_decision_and_each_problem(caplog):
    """INFO: the choice's whole summary; ERROR: each problem with the note the user sees, and the encoder's
    traceback."""
    caplog.set_level(logging.INFO, logger="adadiff.a1111_script.job")
    p, job = started()
    choice = choose_batch_steps(p, job, ["a cat"], encode)

    def broken(prompts):
        raise RuntimeError("out of memory")

    choose_batch_steps(p, job, ["a cat"], broken)
    records = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    note = p.extra_generation_params[ERROR_KEY]
    assert records == [(logging.INFO, choice.summary(), False),
                       (logging.ERROR, "AdaDiff: reading the prompts with the checkpoint's text encoder failed", True),
                       (logging.ERROR, f"AdaDiff: {note}", False)]


def test_settings_accept_the_knobs_ends_and_say_exactly_when_no_policy_is_picked():
    assert StepSettings("p.safetensors", 1.0).knob == 1.0 and StepSettings("p.safetensors", -1.0).knob == -1.0
    with pytest.raises(ValueError) as error:
        StepSettings.from_controls("  ", 0, 1, 150)
    assert str(error.value) == ("no policy selected: put a policy file in models/adadiff/ and pick it in the AdaDiff "
                                "controls (or name it in the API arguments)")
