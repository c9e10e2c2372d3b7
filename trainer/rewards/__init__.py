"""IQS reward backends: score generated images so the trainer can tell which step count was good enough.

``build_reward(name, **settings)`` makes one; see :mod:`.base` for what a backend provides. Names: clip,
aesthetic, hpsv2, toy, composite (``"composite:clip=0.5,aesthetic=0.5"``, or ``weights={...}``, with each
component's settings under its own name: ``clip={"model": ..., "pretrained": ...}``).
"""
from __future__ import annotations

from .base import RewardBackend, check_batch

KNOWN_REWARDS = ("clip", "aesthetic", "hpsv2", "toy", "composite")


def build_reward(name: str, **settings) -> RewardBackend:
    """A reward backend by name; `settings` go to its constructor. Unknown names raise ValueError."""
    name, _, spec = name.strip().partition(":")
    if name == "composite":
        weights = dict(settings.pop("weights", None) or parse_weights(spec))
        return _composite(weights, settings)
    if spec:
        raise ValueError(f"only composite takes ':' settings, got {name}:{spec}")
    if name == "clip":
        from .clip_score import ClipScore

        return ClipScore(**settings)
    if name == "aesthetic":
        from .aesthetic import AestheticScore

        return AestheticScore(**settings)
    if name == "hpsv2":
        from .hps import HPSv2Score

        return HPSv2Score(**settings)
    if name == "toy":
        return _toy(settings)
    raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(KNOWN_REWARDS)}")


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


def _composite(weights: dict[str, float], settings: dict) -> RewardBackend:
    from .composite import CompositeScore

    stray = set(settings) - set(weights)
    if stray:
        raise ValueError(f"settings for {sorted(stray)} but the composite's components are {sorted(weights)}")
    if "composite" in weights:
        raise ValueError("a composite cannot contain another composite")
    unknown = set(weights) - set(KNOWN_REWARDS)
    if unknown:  # checked before any component loads its (possibly large) model
        raise ValueError(f"unknown reward {sorted(unknown)} in the composite; known rewards: {', '.join(KNOWN_REWARDS)}")
    return CompositeScore({part: (weight, build_reward(part, **settings.get(part, {})))
                           for part, weight in weights.items()})


def _toy(settings: dict) -> RewardBackend:
    try:
        from ..embedded.scorer import ToyIQS
    except ImportError as error:
        raise ValueError(f"the toy reward needs the embedded world's scorer (adadiff.trainer.embedded.scorer), "
                         f"which this install does not have yet ({error})") from error
    backend = ToyIQS(**settings)
    if not isinstance(backend, RewardBackend):
        raise TypeError("ToyIQS does not provide name, reference_steps and score(images, prompts, references)")
    return backend


__all__ = ["KNOWN_REWARDS", "RewardBackend", "build_reward", "check_batch", "parse_weights"]
