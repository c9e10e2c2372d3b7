"""The fixed, seeded split of captions into training and held-out evaluation.

Held-out prompts are of two kinds: captions that contain a (colour, shape) pair never shown in training (a
composition the model must generalise to), and ordinary captions that merely were never drawn for training.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from .world import Scene, parse_caption, sample_scene

SPLIT_SEED = 20231124
HELD_OUT_PAIRS = frozenset({("purple", "triangle"), ("yellow", "circle"), ("cyan", "square")})
N_HELD_OUT = 400  # half with a held-out pair, half without


def has_held_out_pair(scene: Scene) -> bool:
    return any((g.colour, g.shape) in HELD_OUT_PAIRS for g in scene.groups)


@lru_cache(maxsize=1)
def held_out_prompts() -> tuple[str, ...]:
    """The held-out captions, in a fixed order that alternates novel-pair and ordinary captions."""
    rng = np.random.default_rng(SPLIT_SEED)
    novel: list[str] = []
    ordinary: list[str] = []
    while len(novel) < N_HELD_OUT // 2 or len(ordinary) < N_HELD_OUT // 2:
        scene = sample_scene(rng)
        bucket = novel if has_held_out_pair(scene) else ordinary
        caption = scene.caption()
        if len(bucket) < N_HELD_OUT // 2 and caption not in novel and caption not in ordinary:
            bucket.append(caption)
    return tuple(c for pair in zip(novel, ordinary) for c in pair)


def is_held_out(caption: str) -> bool:
    return has_held_out_pair(parse_caption(caption)) or caption in _held_out_set()


def sample_training_scene(rng: np.random.Generator) -> Scene:
    """A random scene whose caption belongs to the training split."""
    held_out = _held_out_set()
    while True:
        scene = sample_scene(rng)
        if not has_held_out_pair(scene) and scene.caption() not in held_out:
            return scene


@lru_cache(maxsize=1)
def _held_out_set() -> frozenset[str]:
    return frozenset(held_out_prompts())


def training_scenes(seed: int) -> Iterator[Scene]:
    """An endless, reproducible stream of training scenes (never a held-out caption)."""
    rng = np.random.default_rng(seed)
    while True:
        yield sample_training_scene(rng)


def train_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct training captions (for the policy trainer's reward table)."""
    prompts: list[str] = []
    seen: set[str] = set()
    for scene in training_scenes(seed):
        caption = scene.caption()
        if caption not in seen:
            seen.add(caption)
            prompts.append(caption)
            if len(prompts) == n:
                return prompts
    raise AssertionError("unreachable: the scene stream is endless")
