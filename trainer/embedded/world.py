"""The embedded demo world: captioned 32x32 scenes of textured shapes, generated on the fly.

A scene is one or two groups of identical objects on a background. The caption states everything the renderer
used except positions and grain, so a checker can verify an image against its caption. Fine detail (tiny objects,
striped, dotted and checkered fills, patterned backgrounds) is what few-step sampling blurs; large flat shapes on a
plain background are easy. The caption therefore tells how hard a prompt is.

"grainy" fills and backgrounds carry fine stochastic detail: every 2x2 cell of the region is brightened or darkened
by its own random amount (std GRAIN_STD). Like the fine texture of real photographs (sand, foliage, fur), it is not
fixed by the caption, has low contrast and is decided late in sampling, when the noise left is as faint as the
grain: deterministic few-step samplers render it smoothed away (with an exact denoiser, DDIM keeps about half its
amplitude at 10 steps and nine tenths at 50). Whole cells keep it decodable from the 16x16 latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
BORDER = 2  # objects keep this many pixels from the edge, so the border ring shows only background
DARK = 0.45  # texture and background-pattern pixels are the base colour scaled by this

OBJECT_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 50, 200),
    "cyan": (40, 200, 210),
}
BACKGROUND_COLOURS = {  # (main, pattern) shades
    "grey": ((140, 140, 140), (85, 85, 85)),
    "black": ((15, 15, 15), (60, 60, 60)),
    "white": ((240, 240, 240), (185, 185, 185)),
}
SHAPES = ("square", "circle", "triangle")
TEXTURES = ("solid", "striped", "dotted", "checkered", "grainy")
BACKGROUND_PATTERNS = ("plain", "striped", "checkered", "grainy")
GRAIN_STD = 10 / 255  # per-cell brightness offsets: a normal distribution clipped at +-2 std
GRAIN_CELL = 2
SIZES = {"large": (11, 13), "small": (7, 8), "tiny": (4, 5)}  # inclusive range of the object's box side
MAX_COUNT = {"large": 2, "small": 4, "tiny": 6}
COUNT_WORDS = ("a", "two", "three", "four", "five", "six")
AREA_BUDGET = 0.5 * (IMAGE_SIZE - 2 * BORDER) ** 2  # keeps random placement feasible


@dataclass(frozen=True)
class Group:
    """Identical objects: how many, how big, which shape, colour and fill."""

    count: int
    size: str
    texture: str
    colour: str
    shape: str

    def phrase(self) -> str:
        words = [COUNT_WORDS[self.count - 1], self.size]
        if self.texture != "solid":
            words.append(self.texture)
        words += [self.colour, self.shape + ("s" if self.count > 1 else "")]
        return " ".join(words)

    def footprint(self) -> float:
        side = SIZES[self.size][1] + 1
        return self.count * side * side


@dataclass(frozen=True)
class Scene:
    """What a caption says: one or two groups (distinct colours) on a patterned, coloured background."""

    groups: tuple[Group, ...]
    background_pattern: str
    background_colour: str

    def has_grain(self) -> bool:
        return self.background_pattern == "grainy" or any(g.texture == "grainy" for g in self.groups)

    def caption(self) -> str:
        objects = " and ".join(g.phrase() for g in self.groups)
        return f"{objects} on a {self.background_pattern} {self.background_colour} background"

    def footprint(self) -> float:
        return sum(g.footprint() for g in self.groups)


def parse_caption(caption: str) -> Scene:
    """Inverse of `Scene.caption`; raises ValueError for text outside the world's grammar."""
    words = caption.strip().lower().split()
    if len(words) < 6 or words[-1] != "background" or words[-5] != "on" or words[-4] != "a":
        raise ValueError(f"not a caption of this world: {caption!r}")
    pattern, bg_colour = words[-3], words[-2]
    if pattern not in BACKGROUND_PATTERNS or bg_colour not in BACKGROUND_COLOURS:
        raise ValueError(f"unknown background {pattern!r} {bg_colour!r} in {caption!r}")
    phrases = " ".join(words[:-5]).split(" and ")
    return Scene(tuple(_parse_group(p, caption) for p in phrases), pattern, bg_colour)


def _parse_group(phrase: str, caption: str) -> Group:
    words = phrase.split()
    if len(words) not in (4, 5) or words[0] not in COUNT_WORDS:
        raise ValueError(f"cannot read {phrase!r} in {caption!r}")
    count = COUNT_WORDS.index(words[0]) + 1
    texture = words[2] if len(words) == 5 else "solid"
    shape = words[-1][:-1] if count > 1 else words[-1]
    group = Group(count, words[1], texture, words[-2], shape)
    if (group.size not in SIZES or group.texture not in TEXTURES or group.colour not in OBJECT_COLOURS
            or group.shape not in SHAPES or count > MAX_COUNT[group.size]):
        raise ValueError(f"cannot read {phrase!r} in {caption!r}")
    return group


def detail_level(caption: str) -> str:
    """simple / medium / detailed, from the caption alone: patterned background, textured groups, tiny groups."""
    scene = parse_caption(caption)
    detail = (scene.background_pattern != "plain") + sum(g.texture != "solid" for g in scene.groups) \
        + sum(g.size == "tiny" for g in scene.groups)
    return "simple" if detail <= 1 else "medium" if detail == 2 else "detailed"


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene whose objects fit the canvas (rejection sampling on total footprint)."""
    while True:
        n_groups = int(rng.integers(1, 3))
        colours = rng.choice(list(OBJECT_COLOURS), size=n_groups, replace=False)
        groups = []
        for colour in colours:
            size = str(rng.choice(list(SIZES)))
            groups.append(Group(int(rng.integers(1, MAX_COUNT[size] + 1)), size, str(rng.choice(TEXTURES)),
                                str(colour), str(rng.choice(SHAPES))))
        groups.sort(key=lambda g: list(SIZES).index(g.size))
        scene = Scene(tuple(groups), str(rng.choice(BACKGROUND_PATTERNS)), str(rng.choice(list(BACKGROUND_COLOURS))))
        if scene.footprint() <= AREA_BUDGET:
            return scene


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean side x side mask of a square, a disc or an upward triangle."""
    centre = (side - 1) / 2
    y, x = np.mgrid[0:side, 0:side]
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return (y - centre) ** 2 + (x - centre) ** 2 <= (side / 2) ** 2 + 0.25
    if shape == "triangle":
        return np.abs(x - centre) <= (y + 1) * side / (2 * side) + 0.01
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def texture_mask(texture: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Where a fill shows its dark shade, on the global pixel grid (fixed phase, so it is learnable)."""
    y, x = np.mgrid[0:size, 0:size]
    if texture in ("solid", "grainy"):
        return np.zeros((size, size), dtype=bool)
    if texture == "striped":
        return (y // 2) % 2 == 1
    if texture == "dotted":
        return (y % 3 == 1) & (x % 3 == 1)
    if texture == "checkered":
        return ((y // 2) + (x // 2)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def background_mask(pattern: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Where the background shows its pattern shade: vertical 2-pixel stripes or 2-pixel checks."""
    y, x = np.mgrid[0:size, 0:size]
    if pattern in ("plain", "grainy"):
        return np.zeros((size, size), dtype=bool)
    if pattern == "striped":
        return (x // 2) % 2 == 1
    if pattern == "checkered":
        return ((y // 2) + (x // 2)) % 2 == 1
    raise ValueError(f"unknown background pattern {pattern!r}; expected one of {BACKGROUND_PATTERNS}")


def place_objects(scene: Scene, rng: np.random.Generator) -> list[tuple[int, int, int, Group]]:
    """Non-overlapping (top, left, side, group) boxes with a one-pixel gap, biggest first."""
    items = [(g, int(rng.integers(SIZES[g.size][0], SIZES[g.size][1] + 1))) for g in scene.groups
             for _ in range(g.count)]
    items.sort(key=lambda item: -item[1])
    for _ in range(200):
        taken = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        boxes = []
        for group, side in items:
            for _ in range(100):
                top, left = (int(v) for v in rng.integers(BORDER, IMAGE_SIZE - BORDER - side + 1, size=2))
                if not taken[max(top - 1, 0):top + side + 1, max(left - 1, 0):left + side + 1].any():
                    taken[top:top + side, left:left + side] = True
                    boxes.append((top, left, side, group))
                    break
            else:
                break
        if len(boxes) == len(items):
            return boxes
    raise RuntimeError(f"could not place the objects of {scene.caption()!r}")


def grain_field(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """[size, size] brightness offsets in [0, 1] units, constant on each GRAIN_CELL x GRAIN_CELL cell."""
    cells = rng.normal(0.0, GRAIN_STD, (size // GRAIN_CELL, size // GRAIN_CELL)).clip(-2 * GRAIN_STD, 2 * GRAIN_STD)
    return np.kron(cells, np.ones((GRAIN_CELL, GRAIN_CELL))).astype(np.float32)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene as a float32 [32, 32, 3] image in [0, 1]; rng decides only positions, exact sizes and grain."""
    main, alt = (np.array(c, dtype=np.float32) for c in BACKGROUND_COLOURS[scene.background_colour])
    image = np.where(background_mask(scene.background_pattern)[..., None], alt, main) / 255.0
    grainy = np.full(image.shape[:2], scene.background_pattern == "grainy")
    for top, left, side, group in place_objects(scene, rng):
        colour = np.array(OBJECT_COLOURS[group.colour], dtype=np.float32) / 255.0
        mask = shape_mask(group.shape, side)
        dark = texture_mask(group.texture)[top:top + side, left:left + side]
        image[top:top + side, left:left + side][mask] = np.where(dark[mask][:, None], colour * DARK, colour)
        grainy[top:top + side, left:left + side][mask] = group.texture == "grainy"
    if grainy.any():
        image = np.where(grainy[..., None], image + grain_field(rng)[..., None], image).clip(0.0, 1.0)
    return image.astype(np.float32)


def render_batch(captions: list[str], seed: int) -> np.ndarray:
    """Ground-truth renders [B, 32, 32, 3] of captions, reproducible from one seed."""
    rng = np.random.default_rng(seed)
    return np.stack([render(parse_caption(c), rng) for c in captions])
