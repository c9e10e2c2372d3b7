"""AUTOMATIC1111 / Forge sampler names, as their UI and infotext write them, turned into the trainer's schedulers.

A1111 (v1.10) names a sampler ("DPM++ 2M") and a schedule type ("Karras"; "Automatic" = the sampler's own default);
older versions and many infotexts write both as one name ("DPM++ 2M Karras"). ``--scheduler`` takes any of these
forms: ``"DPM++ 2M"``, ``"DPM++ 2M Karras"``, ``"DPM++ 2M / Karras"``. Each maps to the diffusers scheduler that runs
the same algorithm with the same sigma spacing; names without such a scheduler (DPM fast/adaptive, Restart, DPM++
2S a, 3M SDE, 2M SDE Heun, DDIM CFG++, and the schedule types Polyexponential, KL Optimal, Align Your Steps, Simple,
Normal, DDIM) are refused, naming the ones that work.
"""
from __future__ import annotations

_K = {"timestep_spacing": "linspace"}  # k-diffusion's own schedule: timesteps evenly from the last to the first
# A1111 sampler -> (diffusers scheduler class, its settings, the schedule type A1111's "Automatic" means for it)
SAMPLERS = {
    "Euler": ("EulerDiscreteScheduler", _K, "Uniform"),
    "Euler a": ("EulerAncestralDiscreteScheduler", _K, "Uniform"),
    "LMS": ("LMSDiscreteScheduler", _K, "Uniform"),
    "Heun": ("HeunDiscreteScheduler", _K, "Uniform"),
    "DPM2": ("KDPM2DiscreteScheduler", _K, "Karras"),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", _K, "Karras"),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {**_K, "algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    "DPM++ SDE": ("DPMSolverSDEScheduler", _K, "Karras"),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {**_K, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                     "Exponential"),
    "DDIM": ("DDIMScheduler", {}, "Uniform"),  # A1111's timestep samplers keep the model's own spacing
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, "Uniform"),
    "UniPC": ("UniPCMultistepScheduler", {}, "Uniform"),
    "LCM": ("LCMScheduler", {}, "Uniform"),
}
# A1111 schedule type -> diffusers scheduler setting (Uniform: the scheduler's own spacing)
SCHEDULES = {
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
AUTOMATIC = "Automatic"


def a1111_scheduler(name: str) -> tuple[str, dict] | None:
    """(diffusers class name, settings) for an A1111 sampler name with an optional schedule type; None when
    ``name`` is not an A1111 name at all. A known sampler with an unsupported schedule raises ValueError."""
    text = " ".join(name.replace("/", " / ").split())
    refused = [r for r in REFUSED_SAMPLERS if text.lower() == r.lower() or text.lower().startswith(r.lower() + " ")]
    if refused:
        raise ValueError(f"A1111's {refused[0]} sampler has no equivalent in the trainer's (diffusers) schedulers; "
                         f"A1111 samplers it can run: {', '.join(SAMPLERS)}")
    sampler, schedule = _split(text)
    if sampler is None:
        return None
    class_name, settings, default = SAMPLERS[sampler]
    schedule = default if schedule in (None, AUTOMATIC) else schedule
    extra = SCHEDULES.get(schedule)
    if extra is None:
        raise ValueError(f"A1111 schedule type {schedule!r} has no equivalent in the trainer's (diffusers) "
                         f"schedulers; use one of {', '.join([AUTOMATIC, *SCHEDULES])}")
    if any(key.startswith("use_") for key in extra) and class_name in _UNIFORM_ONLY:
        raise ValueError(f"A1111's {sampler} with schedule type {schedule} has no diffusers equivalent; use "
                         f"{sampler} with schedule type Automatic or Uniform")
    return class_name, {**settings, **extra}


def _split(text: str) -> tuple[str | None, str | None]:
    """The longest known sampler name at the start of ``text`` (case-insensitive) and the schedule type after it."""
    lowered = text.lower()
    for sampler in sorted([*SAMPLERS, *REFUSED_SAMPLERS], key=len, reverse=True):
        if lowered == sampler.lower() or lowered.startswith(sampler.lower() + " "):
            rest = text[len(sampler):].strip().lstrip("/").strip()
            if not rest:
                return sampler, None
            for schedule in (AUTOMATIC, *SCHEDULES, *_REFUSED_SCHEDULES):
                if rest.lower() == schedule.lower():
                    return sampler, schedule
            return None, None
    return None, None


_UNIFORM_ONLY = {"EulerAncestralDiscreteScheduler", "DDIMScheduler", "PNDMScheduler", "LCMScheduler"}
_REFUSED_SCHEDULES = ("Polyexponential", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM")
REFUSED_SAMPLERS = ("DPM++ 2S a", "DPM++ 3M SDE", "DPM++ 2M SDE Heun", "DPM fast", "DPM adaptive", "Restart",
                    "DDIM CFG++")
