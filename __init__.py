"""AdaDiff: per-prompt adaptive step counts for diffusion models.

Inside ComfyUI this file registers the nodes; anywhere else (pip install, A1111, the trainer) it imports nothing
from a host, so ``import adadiff.policy`` works without ComfyUI.
"""
import importlib.util

if importlib.util.find_spec("comfy") is not None and importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI looks this name up on the module)
