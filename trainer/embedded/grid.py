"""A picture grid for the analysis: prompts (simple to detailed) by step count, with the ground truth last."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .world import detail_level

CELL = 96  # 32-pixel images shown at 3x
TEXT_WIDTH = 560
HEADER = 16


def pick_rows(prompts: Sequence[str], per_level: int = 4) -> list[int]:
    """Indices of the first prompts of each complexity level, simple first."""
    levels = [detail_level(p) for p in prompts]
    return [i for level in ("simple", "medium", "detailed") for i in
            [j for j, lv in enumerate(levels) if lv == level][:per_level]]


def save_grid(path: Path, prompts: Sequence[str], images: torch.Tensor, truth: torch.Tensor,
              column_labels: Sequence[int]) -> None:
    """images [P, C, 3, H, W] and truth [P, 3, H, W] in [0, 1]; one row per picked prompt."""
    rows = pick_rows(prompts)
    columns = len(column_labels) + 1
    sheet = Image.new("RGB", (TEXT_WIDTH + columns * CELL, HEADER + len(rows) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate([*(f"{s} steps" for s in column_labels), "truth"]):
        draw.text((TEXT_WIDTH + c * CELL + 4, 2), label, fill="black")
    for r, index in enumerate(rows):
        top = HEADER + r * CELL
        words, line, lines = prompts[index].split(), "", []
        for word in words:
            if len(line) + len(word) > 85:
                lines.append(line)
                line = ""
            line += word + " "
        lines.append(line)
        draw.text((4, top + 4), "\n".join(lines), fill="black")
        for c, picture in enumerate([*images[index], truth[index]]):
            array = (picture.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(array).resize((CELL - 4, CELL - 4), Image.NEAREST)
            sheet.paste(tile, (TEXT_WIDTH + c * CELL + 2, top + 2))
    sheet.save(path)
