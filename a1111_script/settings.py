"""What the user chose in the AdaDiff controls, checked once, and how it reads and writes the infotext.

The webui hands control values over untyped (the API passes whatever JSON the client sent), so they are checked
here into one frozen :class:`StepSettings`; the infotext line ``AdaDiff: "<policy>, knob <v>, min <a>, max <b>,
requested <n>"`` is written from it and parsed back into it, so a pasted image restores exactly the controls that
made it. ``requested`` is the user's own Sampling steps: the image's ``Steps:`` is the policy's choice, and a paste
puts the user's number back so that a later fallback runs what the user asked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

INFOTEXT_KEY = "AdaDiff"  # the settings that chose the steps
ERROR_KEY = "AdaDiff error"  # present only when AdaDiff could not choose and the requested steps ran

KNOB_RANGE = (-1.0, 1.0)
STEPS_RANGE = (1, 150)  # the webui's own steps slider

_INFOTEXT_PATTERN = re.compile(
    r"^(?P<policy>.+), knob (?P<knob>[^,]+), min (?P<min>\d+), max (?P<max>\d+)(?:, requested (?P<requested>\d+))?$")


@dataclass(frozen=True)
class StepSettings:
    """One job's AdaDiff settings: policy file name, quality/speed knob and step limits."""

    policy: str
    knob: float = 0.0
    min_steps: int = STEPS_RANGE[0]
    max_steps: int = STEPS_RANGE[1]

    def __post_init__(self):
        if not self.policy:
            raise ValueError("no policy selected: put a policy file in models/adadiff/ and pick it in the AdaDiff "
                             "controls (or name it in the API arguments)")
        if not KNOB_RANGE[0] <= self.knob <= KNOB_RANGE[1]:
            raise ValueError(f"the quality/speed knob must be between {KNOB_RANGE[0]:g} and {KNOB_RANGE[1]:g}, "
                             f"got {self.knob:g}")
        for name in ("min_steps", "max_steps"):
            value = getattr(self, name)
            if not STEPS_RANGE[0] <= value <= STEPS_RANGE[1]:
                raise ValueError(f"{name.replace('_', ' ')} must be between {STEPS_RANGE[0]} and {STEPS_RANGE[1]}, "
                                 f"got {value}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min steps ({self.min_steps}) is larger than max steps ({self.max_steps})")

    @classmethod
    def from_controls(cls, policy, knob, min_steps, max_steps) -> "StepSettings":
        """Settings from the controls' values as the UI or an API client sent them; ValueError says what is wrong."""
        return cls(
            policy=str(policy or "").strip(),
            knob=_number("the quality/speed knob", knob, float),
            min_steps=_number("min steps", min_steps, int),
            max_steps=_number("max steps", max_steps, int),
        )

    def infotext(self, requested_steps: int | None = None) -> str:
        text = f"{self.policy}, knob {self.knob:g}, min {self.min_steps}, max {self.max_steps}"
        return text if requested_steps is None else f"{text}, requested {requested_steps}"

    @classmethod
    def from_infotext(cls, text: str) -> "StepSettings | None":
        """The settings an infotext value describes, or None when it is not one AdaDiff wrote."""
        match = _INFOTEXT_PATTERN.match(text.strip())
        if match is None:
            return None
        try:
            return cls(match["policy"], float(match["knob"]), int(match["min"]), int(match["max"]))
        except ValueError:
            return None


def _number(name: str, value, kind: type):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if kind is int:
        if not number.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


def pasted_settings(params: dict) -> StepSettings | None:
    """The settings in a parsed infotext (the webui's ``parse_generation_parameters`` result), if any."""
    text = params.get(INFOTEXT_KEY)
    return StepSettings.from_infotext(text) if isinstance(text, str) else None


def requested_steps(params: dict) -> int | None:
    """The user's own Sampling steps recorded in a parsed infotext's AdaDiff value (None in older infotexts)."""
    text = params.get(INFOTEXT_KEY)
    match = _INFOTEXT_PATTERN.match(text.strip()) if isinstance(text, str) else None
    return int(match["requested"]) if match and match["requested"] else None


def restore_requested_steps(params: dict) -> None:
    """Put the user's own Sampling steps back into a pasted infotext's ``Steps`` (the webui's paste reads it)."""
    steps = requested_steps(params)
    if steps is not None:
        params["Steps"] = str(steps)
