"""Load the diffusion model a policy is trained for, and read its prompts the way the hosts do.

`--model` may name a diffusers folder, a single-file ``.safetensors`` / ``.ckpt`` checkpoint (SD1.x, SD2.x, SDXL;
converted offline with the configs shipped in :mod:`.model_configs`), or ``embedded`` (the bundled demo model).
Everything here works without network access: nothing is ever fetched from a hub.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..policy.bounded import parse_json, read_regular_file
from .a1111_samplers import SAMPLERS as A1111_SAMPLERS
from .a1111_samplers import a1111_scheduler
from .model_configs import Checkpoint, detect_family, prepare_config_folder
from .prompt_syntax import PromptSyntax, check_syntax
from .prompt_syntax_encoding import encode_with_syntax

log = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_FINGERPRINT_CHUNK = 1 << 20
MAX_INDEX_BYTES = 1 << 20  # model_index.json is a few hundred bytes


def embedded_model_dir() -> Path:
    """The embedded demo model's diffusers folder (built by `trainer/embedded`)."""
    try:
        from .embedded import MODEL_DIR
    except ImportError as error:
        raise FileNotFoundError(
            f"the embedded demo model is not available in this install ({error}); pass --model with a diffusers "
            "folder or a .safetensors/.ckpt checkpoint instead"
        ) from error
    if not (Path(MODEL_DIR) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded demo model has not been built: {MODEL_DIR}/model_index.json is missing; build it with "
            "`make embedded-model`, or pass --model with a diffusers folder or a checkpoint file"
        )
    return Path(MODEL_DIR)


def load_pipeline(spec: str, *, scheduler: str = "ddim", device="cpu", dtype: torch.dtype = torch.float32):
    """A StableDiffusion(XL)Pipeline for `spec` with the named scheduler, on `device`, in `dtype`.

    Errors (missing files, unknown scheduler, unsupported checkpoint) are raised before any model is built.
    """
    scheduler_class, scheduler_settings = resolve_scheduler(scheduler)
    path = embedded_model_dir() if str(spec) == "embedded" else Path(spec).expanduser()
    if path.is_dir():
        pipe = _load_folder(path)
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        pipe = _load_single_file(path)
    elif not path.exists():
        raise FileNotFoundError(
            f"model not found: {path} does not exist; pass a diffusers folder, a .safetensors or .ckpt "
            "checkpoint, or 'embedded'"
        )
    else:
        raise ValueError(
            f"cannot load {path}: expected a diffusers folder (with model_index.json), a .safetensors or .ckpt "
            "checkpoint, or 'embedded'"
        )
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **scheduler_settings)
    pipe.set_progress_bar_config(disable=True)
    if pipe.dtype != dtype:  # cast after loading: the loaders' dtype argument was renamed across diffusers versions
        pipe.to(dtype=dtype)
    return pipe.to(device)


def resolve_scheduler(name: str):
    """(scheduler class, extra config) for a short name, an A1111 sampler name (see :mod:`.a1111_samplers`) or any
    diffusers scheduler class name."""
    import diffusers

    class_name, settings = SCHEDULERS.get(name.lower()) or a1111_scheduler(name) or (name, {})
    candidate = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if not (isinstance(candidate, type) and issubclass(candidate, diffusers.SchedulerMixin)):
        raise ValueError(
            f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}, an A1111 sampler name with an optional "
            f"schedule type such as 'DPM++ 2M Karras' ({', '.join(A1111_SAMPLERS)}), or a diffusers scheduler class "
            "name such as DPMSolverMultistepScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler"
        )
    return candidate, settings


def _load_folder(folder: Path):
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} is missing: {folder} is not a diffusers pipeline folder")
    index = parse_json(read_regular_file(index_file, MAX_INDEX_BYTES), str(index_file))  # errors name the file
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if class_name not in SUPPORTED_PIPELINES:
        raise ValueError(f"{folder} holds a {class_name}; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}")
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if component in index and index[component][0] is not None:
            _require_weights(folder / component)

    import diffusers

    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    return getattr(diffusers, class_name).from_pretrained(folder, local_files_only=True, **extra)


def _require_weights(component_dir: Path) -> None:
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in component_dir.glob("*")):
        name = "model" if component_dir.name.startswith("text_encoder") else "diffusion_pytorch_model"
        raise FileNotFoundError(
            f"missing weight file {component_dir / (name + '.safetensors')} (or .bin): the folder is incomplete; "
            "download or copy the whole pipeline folder again"
        )


def _load_single_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    checkpoint = Checkpoint(path)
    family = detect_family(checkpoint)

    import diffusers

    with tempfile.TemporaryDirectory(prefix="adadiff-config-") as config_dir:
        prepare_config_folder(family, checkpoint, Path(config_dir))
        del checkpoint  # diffusers reads the file again (memory-mapped); drop our copy of a .ckpt first
        return getattr(diffusers, family.pipeline).from_single_file(str(path), config=config_dir,
                                                                    local_files_only=True)


def model_family(spec: str, pipe) -> str:
    """'sdxl', 'sd2', 'sd15', 'embedded' or 'custom' (a text encoder of another width)."""
    if str(spec) == "embedded":
        return "embedded"
    if Path(spec).suffix.lower() in SINGLE_FILE_SUFFIXES:
        return detect_family(Checkpoint(Path(spec).expanduser())).name
    if type(pipe).__name__.startswith("StableDiffusionXL"):
        return "sdxl"
    return {768: "sd15", 1024: "sd2"}.get(pipe.text_encoder.config.hidden_size, "custom")


def model_info(spec: str, pipe) -> dict:
    """What a policy file records about the model it was trained for."""
    path = embedded_model_dir() if str(spec) == "embedded" else Path(spec).expanduser()
    token_dim, pooled_dim = text_widths(pipe)
    return {
        "model_family": model_family(spec, pipe),
        "name": "embedded" if str(spec) == "embedded" else (path.stem if path.is_file() else path.resolve().name),
        "fingerprint": fingerprint(path),
        "token_dim": token_dim,
        "pooled_dim": pooled_dim,
    }


def text_widths(pipe) -> tuple[int, int]:
    """(token_dim, pooled_dim) of the text conditioning the hosts hand the policy for this pipeline."""
    width = pipe.text_encoder.config.hidden_size
    if getattr(pipe, "text_encoder_2", None) is None:
        return width, 0
    second = pipe.text_encoder_2.config
    return width + second.hidden_size, second.projection_dim


def fingerprint(path: Path) -> str:
    """sha256 over size + first and last MiB of each weight file: identifies a model without reading GBs."""
    files = sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_CHUNK))
            if size > _FINGERPRINT_CHUNK:
                handle.seek(max(size - _FINGERPRINT_CHUNK, _FINGERPRINT_CHUNK))
                digest.update(handle.read())
    return "sha256:" + digest.hexdigest()


def prompt_token_limit(pipe) -> int:
    """How many prompt tokens the text encoder reads (77 positions minus start and end tokens for CLIP)."""
    return pipe.tokenizer.model_max_length - 2


def token_lengths(pipe, prompts: Sequence[str]) -> list[int]:
    """Prompt tokens per prompt, start/end tokens excluded; compare with `prompt_token_limit` before long work."""
    ids = pipe.tokenizer(list(prompts), add_special_tokens=False, truncation=False).input_ids
    return [len(row) for row in ids]


def host_conditioning(pipe, prompts: Sequence[str], syntax: PromptSyntax = "plain"
                      ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per prompt, the conditioning the host named by ``syntax`` hands the policy: (states [1, 77 * chunks, D],
    pooled [1, P] or None). ``comfyui`` and ``a1111`` read weights, long prompts and (A1111) ``BREAK`` and LoRA tags
    as those hosts do (see :mod:`.prompt_syntax`); ``plain`` is :func:`encode_prompts`, one chunk per prompt."""
    if check_syntax(syntax) != "plain":
        return encode_with_syntax(pipe, prompts, syntax)
    embeds, pooled = encode_prompts(pipe, prompts)
    return [(embeds[i:i + 1], None if pooled is None else pooled[i:i + 1]) for i in range(len(embeds))]


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text conditioning the hosts hand the policy: (prompt_embeds [B, 77, D], pooled [B, P] or None).

    SD1.x/2.x: the final-layer-normed CLIP states padded to 77 as the hosts pad (end token for SD1.x, "!" for
    SD2.x), no attention mask (ComfyUI CLIPTextEncode and A1111 get_learned_conditioning agree with this to ~4e-6);
    no pooled vector, as A1111 gives none. SDXL: both encoders' penultimate states concatenated [B, 77, 2048] and
    CLIP-G's pooled projection [B, 1280].
    Prompts over `prompt_token_limit` tokens are cut there (the hosts would add a second 77-token chunk instead);
    the count is logged.
    """
    prompts = list(prompts)
    limit = prompt_token_limit(pipe)
    too_long = sum(length > limit for length in token_lengths(pipe, prompts))
    if too_long:
        log.warning("%d of %d prompts exceed %d tokens and were truncated", too_long, len(prompts), limit)
    device = pipe.text_encoder.device
    if getattr(pipe, "text_encoder_2", None) is not None:
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return embeds, pooled
    embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
    return embeds, None
