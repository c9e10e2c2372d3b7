"""IQS reward backends: score generated images so the trainer can tell which step count was good enough.

``build_reward(name, device=..., **settings)`` makes one; see :mod:`.base` for what a backend provides. Names:
clip, aesthetic, hpsv2, toy, composite (``"composite:clip=0.5,aesthetic=0.5"``, or ``weights={...}``, with each
component's settings under its own name: ``clip={"model": ..., "pretrained": ...}``).
"""
from __future__ import annotations

import importlib
import inspect
import math

from ...policy.bounded import short_text
from .base import RewardBackend, check_batch

KNOWN_REWARDS = ("clip", "aesthetic", "hpsv2", "toy", "convergence", "composite")
_BACKENDS = {"clip": (".clip_score", "ClipScore"), "aesthetic": (".aesthetic", "AestheticScore"),
             "hpsv2": (".hps", "HPSv2Score"), "toy": ("..embedded", "ToyIQS"),
             "convergence": (".convergence", "ConvergenceScore")}
_GIVEN_BY_TRAINER = ("options",)  # handed to every backend that takes them, never a user's setting


def build_reward(name: str, *, device=None, options=None, **settings) -> RewardBackend:
    """A reward backend by name; `settings` go to its constructor, `device` to every backend that runs a model,
    `options` (the table's step options) to every backend whose defaults depend on them.

    Unknown names and unknown settings raise ValueError before anything is loaded.
    """
    name, _, spec = name.strip().lower().partition(":")
    if name == "composite":
        weights = _checked_weights(settings.pop("weights", None)) or parse_weights(spec)
        return _composite(weights, settings, device, options)
    if spec:
        raise ValueError(f"only composite takes ':' settings, got {name}:{spec}")
    backend_class = _checked_class(name, settings)
    accepted = inspect.signature(backend_class).parameters
    for key, value in (("device", device), ("options", options)):
        if key in accepted and value is not None:
            settings[key] = value
    backend = backend_class(**settings)
    if not isinstance(backend, RewardBackend):
        raise TypeError(f"{backend_class.__name__} does not provide name, reference_steps and "
                        "score(images, prompts, references)")
    return backend


def _checked_class(name: str, settings: dict) -> type:
    """The backend class for `name` after checking that it takes `settings` (nothing is loaded yet)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(KNOWN_REWARDS)}")
    backend_class = _backend_class(name)
    accepted = [p for p in inspect.signature(backend_class).parameters if p not in _GIVEN_BY_TRAINER]
    unknown = set(settings) - set(accepted)
    if unknown:
        raise ValueError(f"the {name} reward takes no setting {', '.join(sorted(unknown))}; its settings: "
                         f"{', '.join(accepted) or 'none'}")
    return backend_class


def _backend_class(name: str) -> type:
    module, class_name = _BACKENDS[name]
    try:
        return getattr(importlib.import_module(module, __package__), class_name)
    except ImportError as error:
        if name == "toy":
            raise ValueError(f"the toy reward needs the embedded world's scorer (adadiff.trainer.embedded), "
                             f"which this install does not have ({error})") from error
        raise


def parse_weights(spec: str) -> dict[str, float]:
    """'clip=0.5,aesthetic=0.5' -> {'clip': 0.5, 'aesthetic': 0.5}."""
    weights = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        component, equals, value = item.partition("=")
        try:
            weights[component.strip()] = float(value) if equals else 1.0
        except ValueError:
            raise ValueError(f"bad composite weight {item!r}: write name=number, e.g. clip=0.5") from None
    return weights


def _checked_weights(weights) -> dict[str, float] | None:
    """The composite's ``weights`` setting: a table of component name -> finite number (None: not given)."""
    if weights is None:
        return None
    if not (isinstance(weights, dict) and all(isinstance(value, (int, float)) and not isinstance(value, bool)
                                              and math.isfinite(value) for value in weights.values())):
        raise ValueError(f"the composite's weights must be a table of component name -> finite number, e.g. "
                         f"{{clip = 0.5, aesthetic = 0.5}}; got {short_text(repr(weights), 60)}")
    return {str(part): float(weight) for part, weight in weights.items()}


def _composite(weights: dict[str, float], settings: dict, device, options) -> RewardBackend:
    from .composite import CompositeScore

    stray = set(settings) - set(weights)
    if stray:
        raise ValueError(f"settings for {sorted(stray)} but the composite's components are {sorted(weights)}")
    if "composite" in weights:
        raise ValueError("a composite cannot contain another composite")
    for part, weight in weights.items():  # every name and setting checked before any model loads
        if not isinstance(settings.get(part, {}), dict):
            raise ValueError(f"the settings of the composite's {part} component must be a table of setting -> value, "
                             f"got {short_text(repr(settings[part]), 60)}")
        _checked_class(part, settings.get(part, {}))
    given = {"device": device, "options": options}
    return CompositeScore({part: (weight, build_reward(part, **{**given, **settings.get(part, {})}))
                           for part, weight in weights.items()})


__all__ = ["KNOWN_REWARDS", "RewardBackend", "build_reward", "check_batch", "parse_weights"]
