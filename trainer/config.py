"""The trainer's settings: one declaration per setting gives its command-line flag, its TOML key and its check.

``--config FILE.toml`` holds the same names as the flags (``batch-size`` or ``batch_size``); a flag given on the
command line wins over the file, the file over the default. Reward-specific settings (weights files, CLIP
architecture) go in a ``[reward_settings]`` table and are handed to the reward backend as they are.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from ..policy import PAPER_OPTIONS, PolicyConfig
from ..policy.network import OBJECTIVES
from ..policy.bounded import read_regular_file, short_text
from ..policy.errors import BadInputError
from .prompt_syntax import PROMPT_SYNTAXES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


DEFAULT_POLICY = PolicyConfig()  # the network the hosts' benchmarks were measured with
POLICY_HEADS = DEFAULT_POLICY.heads  # attention heads of the fitted policy; its width must be a multiple
MAX_CONFIG_BYTES = 2**20  # a settings file is a few hundred bytes
# Upper bounds on settings, far beyond any sensible run, so that a typo (5,100000) fails now, not hours later.
MAX_STEPS = 1000  # diffusion models are trained on 1000 noise levels; no sampler takes more steps than that
MAX_OPTIONS = 256  # what a policy file holds
MAX_SEEDS = 100
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
MAX_BATCH_SIZE = 4096
MAX_SIZE = 8192  # pixels
MAX_GUIDANCE = 100.0
MAX_UPDATES = 10**7
SEARCHES = ("full", "bisect")  # how generate covers the step options (see generate.py)


class TrainerInputError(ValueError):
    """Something the user gave (a flag, a file, a folder) that cannot work; the message says what to change."""


def parse_int_list(text: str | list) -> tuple[int, ...]:
    """``"5,10,15"`` (a flag) or ``[5, 10, 15]`` (TOML) -> (5, 10, 15)."""
    parts = text if isinstance(text, (list, tuple)) else [p for p in str(text).split(",") if p.strip()]
    try:
        values = tuple(_whole_number(p) for p in parts)
    except (TypeError, ValueError):
        raise TrainerInputError(f"expected comma-separated whole numbers, got {short_text(repr(text), 60)}") from None
    if not values:
        raise TrainerInputError("expected at least one number, got none")
    return values


def _whole_number(value) -> int:
    """A whole number from a flag's text or a TOML value; 8.5 or true is refused rather than truncated."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value.strip()) <= 19:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SEED:
        return value
    raise ValueError(f"not a whole number: {value!r}")


def _real_number(value) -> float:
    """A finite number from a flag's text or a TOML value (nan, inf and true are refused)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    raise TrainerInputError(f"expected true or false, got {value!r}")


def _setting(default: Any, help: str, parse: Callable[[Any], Any] | None = None, flag: bool = True):
    metadata = {"help": help, "parse": parse, "flag": flag}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class GenerateSettings:
    """How the reward table is made: model, sampler, step options, seeds and the IQS backend."""

    model: str | None = _setting(None, "a diffusers folder, a .safetensors/.ckpt checkpoint, or 'embedded'")
    options: tuple[int, ...] = _setting(PAPER_OPTIONS, "step options, comma-separated", parse_int_list)
    scheduler: str = _setting("ddim", "ddim, dpm++2m, euler, euler_a, unipc or a diffusers scheduler class name")
    guidance: float = _setting(7.5, "classifier-free guidance scale", float)
    size: int | None = _setting(None, "image height and width in pixels (default: the model's own)", int)
    seeds: tuple[int, ...] = _setting((0, 1), "seeds, comma-separated: each prompt is sampled once per seed",
                                      parse_int_list)
    batch_size: int = _setting(8, "prompts sampled together in one pipeline call", int)
    reward: str = _setting("clip", "IQS backend: clip, aesthetic, hpsv2, toy, or composite:name=weight,...")
    reward_settings: dict = _setting({}, "settings handed to the reward backend (TOML table only)", flag=False)
    search: str = _setting("full", "full: sample every option; bisect: for a reward whose IQS saturates (convergence), "
                                   "sample the fewest and the largest option and bisect for the first converged one, "
                                   "inferring the rest (recorded as inferred)")
    prompt_syntax: str = _setting("comfyui", "how the policy reads prompt text: comfyui or a1111 (weights, long "
                                             "prompts, BREAK and LoRA tags as that host reads them) or plain (the "
                                             "raw text, cut at 75 tokens); name the host the policy will run in")
    device: str = _setting("auto", "torch device for the diffusion model, e.g. cpu or cuda (auto: the one accelerate "
                                   "gives this process)")

    def __post_init__(self):
        options = self.options
        if len(options) < 2 or list(options) != sorted(set(options)) or options[0] < 1:
            raise TrainerInputError(f"--options must be at least two distinct positive step counts in increasing "
                                    f"order, got {short_text(','.join(map(str, options)))}")
        if options[-1] > MAX_STEPS or len(options) > MAX_OPTIONS:
            raise TrainerInputError(f"--options: at most {MAX_OPTIONS} step counts of at most {MAX_STEPS} steps (no "
                                    f"sampler takes more), got {len(options)} up to {options[-1]}")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0 or max(self.seeds) > MAX_SEED:
            raise TrainerInputError(f"--seeds must be distinct numbers from 0 to 2**63-1, got {short_text(self.seeds)}")
        if len(self.seeds) > MAX_SEEDS:
            raise TrainerInputError(f"--seeds: at most {MAX_SEEDS} seeds (each one repeats the whole table), got "
                                    f"{len(self.seeds)}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise TrainerInputError(f"--batch-size must be at least 1 and at most {MAX_BATCH_SIZE}, got "
                                    f"{self.batch_size}")
        if self.size is not None and (self.size < 8 or self.size % 8 or self.size > MAX_SIZE):
            raise TrainerInputError(f"--size must be a multiple of 8 pixels up to {MAX_SIZE}, got {self.size}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise TrainerInputError(f"--guidance must be from 0 to {MAX_GUIDANCE:g}, got {self.guidance}")
        _check_device(self.device)
        if self.search not in SEARCHES:
            raise TrainerInputError(f"--search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.prompt_syntax not in PROMPT_SYNTAXES:
            raise TrainerInputError(f"--prompt-syntax must be one of {', '.join(PROMPT_SYNTAXES)}, got "
                                    f"{self.prompt_syntax!r}")


@dataclass(frozen=True)
class FitSettings:
    """Fitting the policy on the cached table (see :mod:`.fit` for what each term does and why the defaults)."""

    objective: str = _setting("quality", "quality (predict each option's quality loss, take the fewest steps within "
                                         "--tolerance-pct) or reinforce (the paper's policy gradient)")
    tolerance_pct: float = _setting(1.0, "quality objective: accepted IQS loss against the largest option, in %",
                                    float)
    top_k: int = _setting(3, "an option earns the positive reward only if its IQS ranks in the prompt's top k", int)
    quality_weight: float = _setting(1.0, "lambda: weight of the normalised IQS in the positive reward", float)
    miss_penalty: float = _setting(1.0, "gamma: reward -gamma for an option outside the top k", float)
    baseline: str = _setting("expected", "reward baseline: expected (the policy's exact expected reward), batch, none")
    estimator: str = _setting("exact", "policy gradient: exact (every option weighed by its probability, which the "
                                       "table allows) or sampled (the paper's Monte Carlo REINFORCE)")
    actions_per_prompt: int = _setting(4, "sampled estimator: actions per prompt and update (no extra cost)", int)
    entropy: float = _setting(0.3, "entropy bonus weight: keeps the policy from locking onto one option for every "
                                   "prompt before it has learned to tell prompts apart", float)
    lr: float = _setting(1e-3, "AdamW learning rate", float)
    weight_decay: float = _setting(0.01, "AdamW weight decay", float)
    fit_batch_size: int = _setting(32, "prompts per policy update", int)
    max_updates: int = _setting(1500, "upper limit on policy updates (batches), rounded up to whole passes over the "
                                      "training prompts", int)
    patience: int = _setting(250, "stop once this many updates have brought no better validation reward (checked "
                                  "after every pass over the training prompts)", int)
    val_fraction: float = _setting(0.2, "share of the training prompts held back for validation (early stopping and, "
                                        "for the quality objective, the calibrated threshold)", float)
    fit_seed: int = _setting(0, "seed of the policy's initialisation, the split and the sampling", int)
    policy_width: int = _setting(DEFAULT_POLICY.width, "width of the policy network", int)
    policy_depth: int = _setting(1, "attention layers in the policy network (1: on the known-answer benchmark it "
                                    "kept more of the oracle's saving than 3 and fits about three times faster)",
                                 int)

    def __post_init__(self):
        if self.top_k < 1:
            raise TrainerInputError(f"--top-k must be at least 1, got {self.top_k}")
        if self.objective not in OBJECTIVES:
            raise TrainerInputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0.0 < self.tolerance_pct < 100.0:
            raise TrainerInputError(f"--tolerance-pct must be between 0 and 100, got {self.tolerance_pct}")
        if self.estimator not in ("exact", "sampled"):
            raise TrainerInputError(f"--estimator must be exact or sampled, got {self.estimator!r}")
        if self.baseline not in ("expected", "batch", "none"):
            raise TrainerInputError(f"--baseline must be expected, batch or none, got {self.baseline!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainerInputError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        for name in ("fit_batch_size", "max_updates", "patience", "actions_per_prompt"):
            if not 1 <= getattr(self, name) <= MAX_UPDATES:
                raise TrainerInputError(f"--{name.replace('_', '-')} must be at least 1 and at most {MAX_UPDATES:,}, "
                                        f"got {getattr(self, name)}")
        try:
            PolicyConfig(width=self.policy_width, depth=self.policy_depth, heads=POLICY_HEADS)
        except ValueError as error:
            raise TrainerInputError(f"--policy-width must be a positive multiple of {POLICY_HEADS} (the policy's "
                                    f"attention heads) and --policy-depth at least 1 ({error})") from None
        if self.lr <= 0 or min(self.entropy, self.miss_penalty, self.quality_weight, self.weight_decay) < 0:
            raise TrainerInputError("--lr must be positive and --entropy, --miss-penalty, --quality-weight, "
                                    "--weight-decay not negative")


@dataclass(frozen=True)
class JobSettings:
    """What a command reads and where it writes: files, folders and overwriting."""

    prompts: str | None = _setting(None, "prompt file: .txt (one per line), .jsonl ('prompt' field) or .csv "
                                         "('prompt' column)")
    eval_prompts: str | None = _setting(None, "held-out prompt file for run (default: hold out part of --prompts)")
    heldout_fraction: float = _setting(0.2, "share of --prompts held out for evaluation when --eval-prompts is not "
                                            "given", float)
    table: str | None = _setting(None, "a reward table folder made by generate")
    policy: str | None = _setting(None, "a policy .safetensors file")
    out: str | None = _setting(None, "where to write (a folder; for fit, the policy file)")
    force: bool = _setting(False, "overwrite an existing policy file or report", _parse_bool)

    def __post_init__(self):
        if not 0.0 < self.heldout_fraction < 1.0:
            raise TrainerInputError(f"--heldout-fraction must be between 0 and 1, got {self.heldout_fraction}")


def add_flags(parser: argparse.ArgumentParser, settings_class: type, only: set[str] | None = None) -> None:
    """One ``--flag`` per setting; unset flags stay absent so the TOML file and the defaults can fill them.
    A help text is plain prose: argparse would read its ``%`` as a format, so it is escaped here."""
    group = parser.add_argument_group(settings_class.__doc__.split(":")[0].lower())
    for item in fields(settings_class):
        if not item.metadata["flag"] or (only is not None and item.name not in only):
            continue
        flag = "--" + item.name.replace("_", "-")
        if item.default is False:
            group.add_argument(flag, dest=item.name, action="store_true", default=argparse.SUPPRESS,
                               help=item.metadata["help"].replace("%", "%%"))
        else:
            help_text = f"{item.metadata['help']} (default: {_shown(item.default)})"
            group.add_argument(flag, dest=item.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))


def read_config_file(path: str | Path | None) -> dict:
    """A TOML settings file as a flat dict of setting names; {} when no file was given."""
    if path is None:
        return {}
    path = Path(path)
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8")
        values = tomllib.loads(text)
    except BadInputError as error:
        if error.kind == "missing":
            raise TrainerInputError(f"--config {path}: no such config file; check the path") from None
        raise TrainerInputError(f"--config {error}; pass a .toml settings file") from None
    except UnicodeDecodeError as error:
        raise TrainerInputError(f"--config {path}: is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise TrainerInputError(f"--config {path}: is not valid TOML ({error})") from None
    except RecursionError:
        raise TrainerInputError(f"--config {path}: nests arrays or tables too deeply to be a settings file") from None
    return {key.replace("-", "_"): value for key, value in values.items()}


def build_settings(settings_class: type, *layers: dict):
    """Settings of ``settings_class`` from its defaults, then each layer in turn (e.g. the file, then the flags);
    bad values raise :class:`TrainerInputError` naming the setting."""
    values = {}
    for item in fields(settings_class):
        for source in layers:
            if item.name in source:
                values[item.name] = _parsed(item, source[item.name])
    return settings_class(**values)


def check_known_keys(path: str | Path | None, from_file: dict, known: set[str]) -> None:
    """Refuse a config file key that no setting of this command reads: a typo must not silently do nothing."""
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise TrainerInputError(f"{path}: unknown setting(s) {unknown}; known settings: {sorted(known)}")


def setting_names(*settings_classes: type) -> set[str]:
    return {item.name for cls in settings_classes for item in fields(cls)}


def _parsed(item, value):
    """A flag's text or a TOML value as the setting's type; a value of another type is refused, never converted
    (``batch_size = 8.5`` is not 8, ``scheduler = 5`` is not a scheduler)."""
    flag = f"--{item.name.replace('_', '-')}"
    parse = {int: _whole_number, float: _real_number}.get(item.metadata["parse"], item.metadata["parse"])
    if value is None:
        if item.default is None:
            return value
        raise TrainerInputError(f"{flag}: needs a value")
    if parse is None:  # text settings, and the reward_settings table
        expected = dict if item.default_factory is dict else str
        if not isinstance(value, expected):
            raise TrainerInputError(f"{flag}: expected {'a table' if expected is dict else 'text'}, got "
                                    f"{short_text(repr(value), 60)}")
        return value
    try:
        return parse(value)
    except TrainerInputError as error:
        raise TrainerInputError(f"{flag}: {error}") from None
    except (TypeError, ValueError):
        raise TrainerInputError(f"{flag}: cannot use {short_text(repr(value), 60)}") from None


def _check_device(name: str) -> None:
    """Refuse a device torch does not know, or one this machine lacks, before any model loads."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise TrainerInputError(f"--device: {short_text(repr(name), 40)} is not a torch device; use auto, cpu, cuda, "
                                "cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise TrainerInputError(f"--device {name}: this machine has no {device.type} device; use auto or cpu")


def _shown(default) -> str:
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)
