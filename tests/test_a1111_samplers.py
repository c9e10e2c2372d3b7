"""A1111 / Forge sampler names reach the trainer as the diffusers scheduler with the same algorithm and spacing."""
import diffusers
import pytest

from adadiff.trainer.a1111_samplers import REFUSED_SAMPLERS, SAMPLERS, a1111_scheduler
from adadiff.trainer.models import resolve_scheduler

SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}


@pytest.mark.parametrize("name, class_name, expected", [
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("dpm++ 2m / uniform", "DPMSolverMultistepScheduler", {"timestep_spacing": "linspace"}),
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                      "use_exponential_sigmas": True}),
    ("Euler a", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("Euler SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("Euler Beta", "EulerDiscreteScheduler", {"use_beta_sigmas": True}),
    ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
])
def test_a1111_names_and_schedule_types_map_to_the_same_diffusers_algorithm(name, class_name, expected):
    scheduler_class, settings = resolve_scheduler(name)
    assert scheduler_class.__name__ == class_name
    assert expected.items() <= settings.items()
    config = scheduler_class.from_config(SD15_SCHEDULER, **settings).config
    assert all(config[key] == value for key, value in expected.items())  # the scheduler took every setting


def test_every_a1111_sampler_with_its_automatic_schedule_builds_and_sets_timesteps():
    for name in SAMPLERS:
        scheduler_class, settings = resolve_scheduler(name)
        if scheduler_class.__name__ == "DPMSolverSDEScheduler":
            continue  # needs torchsde, which only its users install
        scheduler = scheduler_class.from_config(SD15_SCHEDULER, **settings)
        scheduler.set_timesteps(10)
        assert len(scheduler.timesteps) >= 10, name


def test_the_trainers_own_short_names_keep_their_meaning():
    assert resolve_scheduler("dpm++2m")[1] == {"algorithm_type": "dpmsolver++", "solver_order": 2}
    assert resolve_scheduler("euler")[0] is diffusers.EulerDiscreteScheduler


@pytest.mark.parametrize("name, message", [
    ("DPM++ 2M Align Your Steps", "schedule type 'Align Your Steps' has no equivalent"),
    ("Euler a Karras", "Euler a with schedule type Karras has no diffusers equivalent"),
    ("DPM++ 3M SDE", "DPM\\+\\+ 3M SDE sampler has no equivalent"),
    ("Restart", "Restart sampler has no equivalent"),
])
def test_a1111_names_without_an_equivalent_are_refused_naming_what_works(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_scheduler(name)


def test_unknown_names_list_the_a1111_samplers_too():
    with pytest.raises(ValueError, match="A1111 sampler name .*DPM\\+\\+ 2M SDE"):
        resolve_scheduler("Euler b")
    assert a1111_scheduler("HeunDiscreteScheduler") is None and set(REFUSED_SAMPLERS).isdisjoint(SAMPLERS)
