"""Draw each workflow template's thumbnail: ``python example_workflows/render_thumbnails.py`` rewrites the ``.jpg``
next to every ``.json`` here.

ComfyUI's template browser (frontend 1.49) titles a custom node pack's template with its file name and shows
``<name>.jpg`` from the same folder as its picture. The picture is the graph itself, drawn from the workflow's own
node positions and links, with the AdaDiff nodes highlighted, so it stays true to what the template loads.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FOLDER = Path(__file__).resolve().parent
SIZE = 512  # square, like the core templates' thumbnails
MARGIN = 16
HEADER = 96  # room for the title above the graph
SLOT_SPACING, TITLE_BAR = 20, 26  # where the frontend puts a node's slots, in graph units
DISPLAY_NAMES = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPTextEncode": "CLIP Text Encode",
    "EmptyLatentImage": "Empty Latent Image",
    "VAEDecode": "VAE Decode",
    "SaveImage": "Save Image",
    "PreviewAny": "Preview as Text",
    "AdaDiffStepSelector": "AdaDiff Step Selector",
    "AdaDiffKSampler": "AdaDiff KSampler",
    "AdaDiffCalibrate": "AdaDiff Calibrate",
}
BACKGROUND, NODE, ADADIFF, TEXT, LINK = (32, 32, 36), (64, 64, 72), (38, 120, 96), (235, 235, 235), (150, 150, 170)


def render(workflow: dict, title: str) -> Image.Image:
    """The workflow's graph, scaled to fit under ``title``."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values())
    top = min(n["pos"][1] for n in nodes.values())
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    scale = min((SIZE - 2 * MARGIN) / (right - left), (SIZE - HEADER - MARGIN) / (bottom - top))
    offset_y = HEADER + (SIZE - HEADER - MARGIN - (bottom - top) * scale) / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return MARGIN + (x - left) * scale, offset_y + (y - top) * scale

    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), "AdaDiff", fill=ADADIFF, font=_font(30))
    draw.text((MARGIN, MARGIN + 40), title, fill=TEXT, font=_font(20))
    for _, source, source_slot, target, target_slot, _ in workflow["links"]:
        start = _slot(nodes[source], source_slot, output=True)
        end = _slot(nodes[target], target_slot, output=False)
        draw.line([at(*start), at(*end)], fill=LINK, width=2)
    for node in nodes.values():
        x0, y0 = at(*node["pos"])
        x1, y1 = at(node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])
        colour = ADADIFF if node["type"].startswith("AdaDiff") else NODE
        draw.rounded_rectangle([x0, y0 - TITLE_BAR * scale, x1, y1], radius=6, fill=colour, outline=TEXT, width=1)
        name = node.get("title") or DISPLAY_NAMES.get(node["type"], node["type"])
        draw.text((x0 + 4, y0 - TITLE_BAR * scale + 2), name, fill=TEXT, font=_font(max(9, int(18 * scale))))
    return image


def _slot(node: dict, index: int, output: bool) -> tuple[float, float]:
    x = node["pos"][0] + (node["size"][0] if output else 0)
    return x, node["pos"][1] + SLOT_SPACING * (index + 0.5)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def main(folder: Path = FOLDER) -> list[Path]:
    written = []
    for path in sorted(folder.glob("*.json")):
        thumbnail = path.with_suffix(".jpg")
        render(json.loads(path.read_text(encoding="utf-8")), path.stem).save(thumbnail, quality=90)
        written.append(thumbnail)
    return written


if __name__ == "__main__":
    for written in main(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(f"wrote {written}")
