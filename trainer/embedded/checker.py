"""A deterministic pixel checker: does an image show what its caption says?

Every pixel is given the nearest shade of the world's palette (each object colour and its dark texture shade,
each background colour and its pattern shade). The 2-pixel border ring, where the world never places objects,
decides the background; the pixels of each caption colour decide that group's texture, count, size and shape.
Grain is told from a plain fill by how much the pixels' brightness spreads around their palette shade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import BACKGROUND_COLOURS, BORDER, DARK, GRAIN_STD, OBJECT_COLOURS, Group, Scene

PROPERTIES = ("background", "colour", "texture", "size", "count", "shape")
MIN_COLOUR_PIXELS = 4  # fewer pixels of a colour than this is speckle, not an object
MIN_COMPONENT_PIXELS = 3
GRAIN_PRESENT = 0.4 * GRAIN_STD  # brightness spread above this is grain (clean samples spread under a tenth)


def _palette() -> tuple[np.ndarray, list[tuple[str, str, bool]]]:
    shades, names = [], []
    for name, (main, alt) in BACKGROUND_COLOURS.items():
        shades += [main, alt]
        names += [("background", name, False), ("background", name, True)]
    for name, rgb in OBJECT_COLOURS.items():
        shades += [rgb, tuple(c * DARK for c in rgb)]
        names += [("object", name, False), ("object", name, True)]
    return np.array(shades, dtype=np.float32) / 255.0, names


PALETTE, PALETTE_NAMES = _palette()
SHADE_KIND = np.array([n[0] for n in PALETTE_NAMES])
SHADE_COLOUR = np.array([n[1] for n in PALETTE_NAMES])
SHADE_IS_DARK = np.array([n[2] for n in PALETTE_NAMES])


def nearest_shades(images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] in [0, 1] -> [B, H, W] index into the palette."""
    distance = ((images[..., None, :] - PALETTE) ** 2).sum(-1)
    return distance.argmin(-1)


def shade_region(shades: np.ndarray, kind: str, colour: str) -> np.ndarray:
    """Pixels whose nearest shade is one of `colour`'s shades (base or dark) of `kind` (object or background)."""
    return (SHADE_KIND[shades] == kind) & (SHADE_COLOUR[shades] == colour)


def grain_spread(image: np.ndarray, shades: np.ndarray, region: np.ndarray) -> float:
    """Std of the brightness offset of `region`'s pixels from their palette shade (0 for a clean flat fill)."""
    if region.sum() < 2:
        return 0.0
    offset = (image[region] - PALETTE[shades[region]]).mean(-1)
    return float(offset.std())


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as a boolean mask (label propagation)."""
    height, width = mask.shape
    big = height * width
    labels = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                        padded[1:-1, :-2], padded[1:-1, 2:]])
        updated = np.where(mask, neighbours, big)
        if (updated == labels).all():
            break
        labels = updated
    return [labels == v for v in np.unique(labels[mask])]


@dataclass(frozen=True)
class Background:
    colour: str
    pattern: str


def read_background(image: np.ndarray, shades: np.ndarray) -> Background:
    """Background colour by vote over the border ring; pattern from how shades alternate along it, or from the
    brightness spread of an unpatterned ring (grain)."""
    ring = np.zeros(shades.shape, dtype=bool)
    ring[:BORDER], ring[-BORDER:], ring[:, :BORDER], ring[:, -BORDER:] = True, True, True, True
    on_ring = shades[ring]
    votes = {name: int(shade_region(on_ring, "background", name).sum()) for name in BACKGROUND_COLOURS}
    colour = max(votes, key=votes.get)
    region = shade_region(shades, "background", colour)
    alt = region & SHADE_IS_DARK[shades]
    if alt[ring].mean() < 0.15:
        return Background(colour, "grainy" if grain_spread(image, shades, ring & region) > GRAIN_PRESENT else "plain")
    rows = np.concatenate([alt[:BORDER], alt[-BORDER:]])
    columns = np.concatenate([alt[:, :BORDER], alt[:, -BORDER:]], axis=1)
    vertical_changes = (columns[1:] != columns[:-1]).mean()
    horizontal_changes = (rows[:, 1:] != rows[:, :-1]).mean()
    striped = vertical_changes < 0.5 * horizontal_changes
    return Background(colour, "striped" if striped else "checkered")


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are also in the mask; the whole mask if fewer than 3 are."""
    padded = np.pad(mask, 1)
    inside = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside if inside.sum() >= 3 else mask


def read_texture(image: np.ndarray, shades: np.ndarray, colour_mask: np.ndarray, dark_mask: np.ndarray) -> str:
    """Solid or grainy (by brightness spread), dotted, striped (horizontal) or checkered, from the share of dark
    pixels and their run directions. Unpatterned fills are judged away from the outline, where an object blending
    into the background looks dark."""
    inner = interior(colour_mask)
    if (dark_mask & inner).sum() / inner.sum() < 0.03:
        return "grainy" if grain_spread(image, shades, inner & ~dark_mask) > GRAIN_PRESENT else "solid"
    if dark_mask[colour_mask].mean() < 0.28:
        return "dotted"
    across = colour_mask[:, 1:] & colour_mask[:, :-1]
    down = colour_mask[1:] & colour_mask[:-1]
    horizontal = (dark_mask[:, 1:] != dark_mask[:, :-1])[across].mean() if across.any() else 0.0
    vertical = (dark_mask[1:] != dark_mask[:-1])[down].mean() if down.any() else 0.0
    return "striped" if horizontal < 0.5 * vertical else "checkered"


def read_size(component: np.ndarray) -> str:
    ys, xs = np.nonzero(component)
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    return "large" if extent >= 10 else "small" if extent >= 6 else "tiny"


def read_shape(component: np.ndarray) -> str:
    """Square if it fills its box; triangle if its bottom row is much wider than its top row; else circle."""
    ys, xs = np.nonzero(component)
    box = component[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    if box.mean() >= 0.9:
        return "square"
    widening = int(box[-1].sum()) - int(box[0].sum())
    return "triangle" if widening >= max(1.0, 0.4 * box.shape[1]) else "circle"


def _majority(values: list[str]) -> str | None:
    """The most frequent reading; ties go to the alphabetically first, so every process agrees."""
    return max(sorted(set(values)), key=values.count) if values else None


def check_group(image: np.ndarray, shades: np.ndarray, group: Group) -> dict[str, float]:
    """Texture, count, size and shape of one caption group, each 1.0 (right) or 0.0 (wrong or absent)."""
    colour_mask = shade_region(shades, "object", group.colour)
    if colour_mask.sum() < MIN_COLOUR_PIXELS:
        return {"texture": 0.0, "count": 0.0, "size": 0.0, "shape": 0.0}
    dark_mask = colour_mask & SHADE_IS_DARK[shades]
    components = [c for c in connected_components(colour_mask) if c.sum() >= MIN_COMPONENT_PIXELS]
    return {
        "texture": float(read_texture(image, shades, colour_mask, dark_mask) == group.texture),
        "count": float(len(components) == group.count),
        "size": float(_majority([read_size(c) for c in components]) == group.size),
        "shape": float(_majority([read_shape(c) for c in components]) == group.shape),
    }


def check(image: np.ndarray, scene: Scene) -> dict[str, float]:
    """Per-property agreement of one [H, W, 3] image with its scene, each in [0, 1].

    background: colour and pattern both right. colour: Jaccard index of the object colours seen (at least
    MIN_COLOUR_PIXELS pixels) and those captioned. texture, count, size, shape: share of groups that are right.
    """
    shades = nearest_shades(image[None])[0]
    background = read_background(image, shades)
    objects = SHADE_KIND[shades] == "object"
    seen = {c for c in OBJECT_COLOURS if (objects & (SHADE_COLOUR[shades] == c)).sum() >= MIN_COLOUR_PIXELS}
    wanted = {g.colour for g in scene.groups}
    groups = [check_group(image, shades, g) for g in scene.groups]
    result = {
        "background": float(background == Background(scene.background_colour, scene.background_pattern)),
        "colour": len(seen & wanted) / len(seen | wanted),
    }
    for key in ("texture", "count", "size", "shape"):
        result[key] = float(np.mean([g[key] for g in groups]))
    return result
