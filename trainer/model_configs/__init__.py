"""Offline configuration for single-file checkpoints (SD1.x, SD2.x, SDXL).

diffusers' `from_single_file` needs a diffusers-format config folder, which it would otherwise fetch from the Hub.
The released models' configs ship next to this file (one folder per family, no weights, no vocabulary); for each
checkpoint they are copied to a temporary folder, fitted to the checkpoint's tensor shapes (:mod:`.shapes`), and
completed with CLIP's tokenizer vocabulary written from open_clip's copy (:mod:`.clip_vocab`).
"""
from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import shapes as shape_rules
from .clip_vocab import write_clip_vocab

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent
UNET = "model.diffusion_model."
VAE = "first_stage_model."
# A layer-norm bias that v-prediction SD2.x models move far from zero (the test ComfyUI also relies on).
_SD2_V_PREDICTION_PROBE = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
_SD2_V_PREDICTION_STD = 0.09


@dataclass(frozen=True)
class Family:
    name: str  # sd15 | sd2 | sdxl: also the config folder's name and the policy's model_family
    pipeline: str  # diffusers pipeline class

    @property
    def folder(self) -> Path:
        return CONFIG_ROOT / self.name


FAMILIES = {
    "sd15": Family("sd15", "StableDiffusionPipeline"),
    "sd2": Family("sd2", "StableDiffusionPipeline"),
    "sdxl": Family("sdxl", "StableDiffusionXLPipeline"),
}
_TEXT_ENCODERS = {  # family -> [(component, key prefix, open_clip layout?)]
    "sd15": [("text_encoder", "cond_stage_model.transformer.", False)],
    "sd2": [("text_encoder", "cond_stage_model.model.", True)],
    "sdxl": [("text_encoder", "conditioner.embedders.0.transformer.", False),
             ("text_encoder_2", "conditioner.embedders.1.model.", True)],
}


class Checkpoint:
    """A single-file checkpoint's tensor shapes, and single tensors on demand (SDXL files are GBs)."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    self.shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            except Exception as error:  # safetensors raises its own error types for damaged headers
                raise ValueError(f"{path} is not a readable .safetensors file ({error})") from error
            self._tensors = None
        else:
            self._tensors = load_ckpt(path)
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items() if isinstance(v, torch.Tensor)}

    def tensor(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(key)


def load_ckpt(path: Path) -> dict:
    """A .ckpt's state dict, unpickled with weights_only=True (tensors and plain containers only)."""
    try:  # memory-mapped unless it predates torch's zip format (torch < 1.6), which cannot be mapped
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # UnpicklingError, or whatever a damaged file makes the unpickler raise
        raise ValueError(f"{path} cannot be read with torch.load(weights_only=True): it is damaged, not a PyTorch "
                         "file, or holds Python objects besides tensors, which are not unpickled because that "
                         f"could run code ({error}). Convert it to .safetensors with a tool you trust") from error
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a state dict of tensors")
    return data


def detect_family(checkpoint: Checkpoint) -> Family:
    """sd15, sd2 or sdxl from which text encoders the file holds; anything else is refused with the reason."""
    keys = checkpoint.shapes
    where = checkpoint.path
    if UNET + "input_blocks.0.0.weight" not in keys:
        raise ValueError(f"{where} is not a Stable Diffusion checkpoint in the single-file layout (no "
                         f"{UNET}input_blocks.0.0.weight); pass a diffusers folder instead")
    if keys[UNET + "input_blocks.0.0.weight"][1] != 4:
        raise ValueError(f"{where} has a {keys[UNET + 'input_blocks.0.0.weight'][1]}-channel UNet input "
                         "(an inpainting or other special model); only text-to-image checkpoints are supported")
    has = {name: any(k.startswith(prefix) for k in keys) for name, prefix in (
        ("clip_l", "cond_stage_model.transformer."), ("open_clip", "cond_stage_model.model."),
        ("xl_l", "conditioner.embedders.0.transformer."), ("xl_g", "conditioner.embedders.1.model."))}
    if has["xl_l"] and has["xl_g"]:
        return FAMILIES["sdxl"]
    if has["open_clip"]:
        return FAMILIES["sd2"]
    if has["clip_l"]:
        return FAMILIES["sd15"]
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ValueError(f"{where} is an SDXL refiner; it cannot generate from text alone, use an SDXL base model")
    raise ValueError(f"{where} has a UNet but no text encoder this trainer knows (SD1.x CLIP-L, SD2.x OpenCLIP-H, "
                     "SDXL CLIP-L + OpenCLIP-G); pass a diffusers folder instead")


def prepare_config_folder(family: Family, checkpoint: Checkpoint, destination: Path) -> None:
    """Write the diffusers config folder for `checkpoint` into `destination` (an existing, empty folder)."""
    shutil.copytree(family.folder, destination, dirs_exist_ok=True)

    def update(component: str, file: str, rule, *args, **kwargs):
        path = destination / component / file
        path.write_text(json.dumps(rule(checkpoint.shapes, *args, json.loads(path.read_text()), **kwargs), indent=2))

    update("unet", "config.json", shape_rules.unet_config, UNET)
    update("vae", "config.json", shape_rules.vae_config, VAE)
    for component, prefix, open_clip_layout in _TEXT_ENCODERS[family.name]:
        if open_clip_layout:
            update(component, "config.json", shape_rules.open_clip_text_config, prefix,
                   drop_last_layer=family.name == "sd2")
        else:
            update(component, "config.json", shape_rules.clip_text_config, prefix)
    for tokenizer in destination.glob("tokenizer*"):
        write_clip_vocab(tokenizer)
    scheduler = destination / "scheduler" / "scheduler_config.json"
    settings = json.loads(scheduler.read_text())
    settings["prediction_type"] = prediction_type(family, checkpoint, settings["prediction_type"])
    scheduler.write_text(json.dumps(settings, indent=2))


def prediction_type(family: Family, checkpoint: Checkpoint, default: str) -> str:
    """'v_prediction' or 'epsilon': a `v_pred` marker key wins; SD2.x 768-v and 512-base differ in the spread of
    one layer-norm bias (the rule ComfyUI applies, so trainer and host sample the same way)."""
    if "v_pred" in checkpoint.shapes:
        return "v_prediction"
    if family.name != "sd2":
        return default
    if _SD2_V_PREDICTION_PROBE not in checkpoint.shapes:  # ComfyUI then samples it as epsilon: agree with it
        log.warning("%s: cannot tell whether this SD2.x model predicts v or noise; assuming noise (epsilon)",
                    checkpoint.path)
        return "epsilon"
    spread = checkpoint.tensor(_SD2_V_PREDICTION_PROBE).float().std(unbiased=False).item()
    return "v_prediction" if spread > _SD2_V_PREDICTION_STD else "epsilon"
