"""The reward table on disk: written in small finished pieces, so a killed run loses only the piece in flight.

Layout of a table folder::

    table.json                      what the table is for: prompts, options, seeds, sampling, model, reward
    units/c00012-features.safetensors   policy input of chunk 12 (tokens fp16, mask, pooled)
    units/c00012-s1-o25.safetensors     IQS, its components and sampling time of chunk 12, seed 1, 25 steps
    units/c00012-s1-ref.safetensors     reference images of chunk 12, seed 1 (only for rewards that need one;
                                        deleted once every option of that chunk and seed is done)
    units/c00012-s1-o25-probe.safetensors   a bisecting search's rendering of some prompts of chunk 12, seed 1 at 25
                                        steps (``rows``: which); deleted once that chunk and seed are done

A bisecting search (``search: bisect`` in table.json, see :mod:`.generate`) renders only some options; its unit
pieces carry ``measured`` (bool per prompt), and the other values are inferred. Full tables have no such key.

A chunk is a fixed run of ``batch_size`` prompts, so the pieces do not depend on how many processes made them:
any number of processes (or reruns) can fill one folder, and reading it merges them. Every file is written under a
temporary name and renamed into place, so a file that exists is complete. Token states are kept in fp16, which
halves a 10k-prompt SD table (2.4 GB -> 1.2 GB); the policy normalises its input, and hosts often run their text
encoders in fp16 anyway.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..policy import PolicyFeatures
from ..policy.bounded import check_regular_file, parse_json, read_regular_file, short_text
from ..policy.errors import BadInputError
from .config import TrainerInputError

TABLE_FORMAT = "adadiff-reward-table"
TABLE_VERSION = 1
MAX_DESCRIPTION_BYTES = 256 * 2**20  # table.json of a million prompts
FEATURE_DTYPE = torch.float16
MEASURED = "measured"  # a unit piece's per-prompt flag: rendered and scored (True) or inferred (False)
_TEMPORARY_MARK = ".partial-"


def unit_name(chunk: int, seed: int, steps: int) -> str:
    return f"c{chunk:05d}-s{seed}-o{steps}.safetensors"


def features_name(chunk: int) -> str:
    return f"c{chunk:05d}-features.safetensors"


def reference_name(chunk: int, seed: int) -> str:
    return f"c{chunk:05d}-s{seed}-ref.safetensors"


def probe_name(chunk: int, seed: int, steps: int) -> str:
    return f"c{chunk:05d}-s{seed}-o{steps}-probe.safetensors"


def chunk_count(n_prompts: int, batch_size: int) -> int:
    return -(-n_prompts // batch_size)


def write_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file so that it either exists complete or not at all (rename is atomic on POSIX)."""
    temporary = path.with_name(f"{path.name}{_TEMPORARY_MARK}{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)
    os.replace(temporary, path)


class TableFolder:
    """A table folder being filled: its description and which pieces already exist."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.units = self.folder / "units"

    @property
    def description_file(self) -> Path:
        return self.folder / "table.json"

    def open(self, description: dict, remove_leftovers: bool = True) -> None:
        """Start a table or resume one made for exactly the same description; refuse a folder holding another.

        ``remove_leftovers`` deletes temporary files of a killed run; only one process may do it, before any
        process starts writing.
        """
        self.refuse_foreign()
        existing = self.read_description() if self.description_file.exists() else None
        if existing is not None and existing != description:
            differing = sorted(k for k in set(existing) | set(description) if existing.get(k) != description.get(k))
            raise TrainerInputError(
                f"{self.folder} holds a reward table made with other settings ({', '.join(differing)} differ); it "
                "would be overwritten. Rerun with the same settings to continue it, pass another --out, or delete "
                "the folder to start over")
        self.units.mkdir(parents=True, exist_ok=True)
        for leftover in self.units.glob(f"*{_TEMPORARY_MARK}*") if remove_leftovers else ():
            leftover.unlink(missing_ok=True)  # a piece of a killed run, never renamed into place
        if existing is None:
            temporary = self.description_file.with_name(f"table.json{_TEMPORARY_MARK}{os.getpid()}")
            temporary.write_text(json.dumps(description, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.description_file)

    def refuse_foreign(self) -> None:
        """Refuse a folder that holds something other than a reward table (cheap: run it before loading models)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise TrainerInputError(f"{self.folder} is a file, not a folder; pass another --out")
        if self.folder.exists() and not self.description_file.exists() and any(self.folder.iterdir()):
            raise TrainerInputError(f"{self.folder} exists and is not a reward table; it would be overwritten. Pass "
                                    "another --out, or remove the folder")

    def read_description(self) -> dict:
        try:
            description = parse_json(read_regular_file(self.description_file, MAX_DESCRIPTION_BYTES),
                                     str(self.description_file))
        except BadInputError as error:
            if error.kind == "missing":
                raise TrainerInputError(f"{self.folder}: no reward table here (table.json is missing); make one with "
                                        "`adadiff-train generate`") from None
            raise TrainerInputError(f"{error}; delete the folder and generate the table again") from None
        if (not isinstance(description, dict) or description.get("format") != TABLE_FORMAT
                or description.get("version") != TABLE_VERSION):
            raise TrainerInputError(f"{self.folder}: not a version-{TABLE_VERSION} AdaDiff reward table; generate "
                                    "it again with this version")
        _check_description(self.description_file, description)
        return description

    def has(self, name: str) -> bool:
        return (self.units / name).exists()

    def write(self, name: str, tensors: dict[str, torch.Tensor], process: int = 0) -> None:
        """Write one piece; ``process`` (which accelerate process made it) is kept in its metadata."""
        write_atomically(tensors, self.units / name, {"process": str(process)})

    def read(self, name: str) -> dict[str, torch.Tensor]:
        path = self.units / name
        try:
            check_regular_file(path)  # a FIFO would block load_file forever
        except BadInputError as error:
            raise TrainerInputError(f"{error}; delete it and rerun the same generate command to make it "
                                    "again") from None
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors' own parser: any failure means a damaged piece
            raise TrainerInputError(f"{path}: this piece of the reward table is damaged ({short_text(error, 120)}); "
                                    "delete it and rerun the same generate command to make it again") from None

    def remove(self, name: str) -> None:
        (self.units / name).unlink(missing_ok=True)

    def missing_units(self, description: dict) -> list[str]:
        """Names of the result pieces not yet on disk (features included)."""
        missing = []
        for chunk in range(chunk_count(len(description["prompts"]), description["batch_size"])):
            names = [features_name(chunk)] + [unit_name(chunk, s, o) for s in description["seeds"]
                                              for o in description["options"]]
            missing += [name for name in names if not self.has(name)]
        return missing


@dataclass(frozen=True)
class RewardTable:
    """A finished table in memory: per prompt, seed and option the IQS, its components and the sampling time."""

    prompts: tuple[str, ...]
    options: tuple[int, ...]
    seeds: tuple[int, ...]
    features: PolicyFeatures  # tokens in FEATURE_DTYPE
    iqs: torch.Tensor  # [N, S, O] float32
    components: dict[str, torch.Tensor]  # name -> [N, S, O]
    time_s: torch.Tensor  # [N, S, O] seconds of sampling per image
    description: dict
    measured: torch.Tensor | None = None  # [N, S, O] bool: rendered, or inferred by a bisecting search; None: all

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: torch.Tensor | list[int]) -> "RewardTable":
        """The rows of some prompts (for train/validation splits)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        features = PolicyFeatures(self.features.tokens[index], self.features.mask[index],
                                  None if self.features.pooled is None else self.features.pooled[index])
        return RewardTable(tuple(self.prompts[i] for i in index.tolist()), self.options, self.seeds, features,
                           self.iqs[index], {k: v[index] for k, v in self.components.items()}, self.time_s[index],
                           self.description, None if self.measured is None else self.measured[index])

    def seed_subset(self, indices: list[int]) -> "RewardTable":
        """The results of some seeds only (positions in ``seeds``), for fitting on some seeds and judging on others."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return RewardTable(self.prompts, self.options, tuple(self.seeds[i] for i in indices), self.features,
                           self.iqs[:, index], {k: v[:, index] for k, v in self.components.items()},
                           self.time_s[:, index], self.description,
                           None if self.measured is None else self.measured[:, index])


def load_table(folder: str | Path) -> RewardTable:
    """Merge a finished table's pieces, whichever processes wrote them; refuse an unfinished table."""
    table = TableFolder(folder)
    description = table.read_description()
    missing = table.missing_units(description)
    if missing:
        raise TrainerInputError(f"{table.folder}: the reward table is unfinished ({len(missing)} pieces missing, "
                                f"e.g. {missing[0]}); rerun the same generate command to complete it")
    prompts, options, seeds = description["prompts"], description["options"], description["seeds"]
    batch_size = description["batch_size"]
    tokens, masks, pooled, rows, first = [], [], [], [], None
    for chunk in range(chunk_count(len(prompts), batch_size)):
        size = len(prompts[chunk * batch_size:(chunk + 1) * batch_size])
        features = table.read(features_name(chunk))
        _check_features(table.units / features_name(chunk), features, size, first)
        first = first or features
        tokens.append(features["tokens"])
        masks.append(features["mask"])
        if "pooled" in features:
            pooled.append(features["pooled"])
        rows.append([[_checked_unit(table, unit_name(chunk, s, o), size) for o in options] for s in seeds])
    # the scores most pieces hold: a piece that differs is named, even when it is the first
    names = list(Counter(tuple(sorted(unit)) for chunk in rows for per_seed in chunk for unit in per_seed)
                 .most_common(1)[0][0])
    for name, unit in ((unit_name(c, s, o), rows[c][i][j]) for c in range(len(rows)) for i, s in enumerate(seeds)
                       for j, o in enumerate(options)):
        if sorted(unit) != names:
            raise TrainerInputError(f"{table.units / name}: holds the scores {sorted(unit)}, other pieces "
                                    f"{names}: {_REMAKE}")
    merged = {name: torch.cat([torch.stack([torch.stack([unit[name] for unit in per_seed], -1) for per_seed in chunk],
                                           1) for chunk in rows]) for name in names}
    measured = merged.pop(MEASURED, None)
    merged = {name: value.float() for name, value in merged.items()}
    tokens, masks = _pad_tokens(tokens, masks)
    return RewardTable(
        prompts=tuple(prompts), options=tuple(options), seeds=tuple(seeds),
        features=PolicyFeatures(tokens, masks, torch.cat(pooled) if pooled else None),
        iqs=merged.pop("iqs"), time_s=merged.pop("time_s"), components=merged, description=description,
        measured=measured)


_REMAKE = "the pieces come from different runs; delete the folder and generate the table again"
_REMAKE_PIECE = "delete this piece and rerun the same generate command to make it again"


def _check_description(path: Path, description: dict) -> None:
    """The fields load_table relies on, each of the right kind; duplicated prompts are refused because the
    train/validation split (and held-out evaluation) must never see one prompt on both sides."""
    problems = []
    prompts, options, seeds = (description.get(key) for key in ("prompts", "options", "seeds"))
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
        problems.append("'prompts' must be a list of texts")
    for key, values in (("options", options), ("seeds", seeds)):
        if not (isinstance(values, list) and values and all(type(v) is int and v >= 0 for v in values)):
            problems.append(f"'{key}' must be a list of whole numbers")
    batch_size = description.get("batch_size")
    if not (type(batch_size) is int and batch_size >= 1):
        problems.append("'batch_size' must be a whole number of at least 1")
    problems += _object_problems(description)
    if problems:
        raise TrainerInputError(f"{path}: damaged ({'; '.join(problems)}); delete the folder and generate the table "
                                "again")
    first_position: dict[str, int] = {}
    for position, prompt in enumerate(prompts):
        if prompt in first_position:
            raise TrainerInputError(f"{path}: prompt {first_position[prompt]} and prompt {position} are the same "
                                    f"({short_text(repr(prompt), 60)}); a prompt may appear once, or it would be "
                                    "both trained and validated on. Generate the table from a file without repeats")
        first_position[prompt] = position


def _object_problems(description: dict) -> list[str]:
    """What the policy file records from the table (fit's policy_info), where the table holds it: 'model' with its
    text name, fingerprint and family (null: unknown), 'sampling', and 'reward' with its text name. (A table without
    them still loads; fit refuses it, see policy_info.)"""
    problems = []
    model, sampling, reward = (description.get(key) for key in ("model", "sampling", "reward"))
    if "model" in description and not (
            isinstance(model, dict) and all(isinstance(model.get(key), str) for key in ("name", "fingerprint"))
            and (model.get("model_family") is None or isinstance(model["model_family"], str))):
        problems.append("'model' must be an object with a text 'name', 'fingerprint' and 'model_family'")
    if "sampling" in description and not isinstance(sampling, dict):
        problems.append("'sampling' must be an object")
    if "reward" in description and not (isinstance(reward, dict) and isinstance(reward.get("name"), str)):
        problems.append("'reward' must be an object with a text 'name'")
    return problems


def _check_features(path: Path, features: dict[str, torch.Tensor], size: int, first: dict | None) -> None:
    """One chunk's policy input: ``size`` rows, finite, shaped like the ``first`` chunk's (width, pooled vector)."""
    tokens, mask, pooled = features.get("tokens"), features.get("mask"), features.get("pooled")
    if tokens is None or mask is None or tokens.dim() != 3 or tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise TrainerInputError(f"{path}: no [prompts, tokens, width] token states with their mask; {_REMAKE_PIECE}")
    if tokens.shape[0] != size or (pooled is not None and (pooled.dim() != 2 or pooled.shape[0] != size)):
        raise TrainerInputError(f"{path}: holds {tokens.shape[0]} rows, its chunk has {size} prompts; {_REMAKE}")
    if first is not None:
        if tokens.shape[-1] != first["tokens"].shape[-1]:
            raise TrainerInputError(f"{path}: token states {tokens.shape[-1]} wide, the first chunk's are "
                                    f"{first['tokens'].shape[-1]}; {_REMAKE}")
        first_pooled = first.get("pooled")
        if (pooled is None) != (first_pooled is None) or (pooled is not None and pooled.shape[1] != first_pooled.shape[1]):
            raise TrainerInputError(f"{path}: its pooled vector differs from the first chunk's; {_REMAKE}")
    for name, values in (("token states", tokens), ("pooled vector", pooled)):
        if values is not None and not torch.isfinite(values).all():
            raise TrainerInputError(f"{path}: the {name} hold NaN or Inf values (the text encoder overflowed?); "
                                    f"{_REMAKE_PIECE}")


def _checked_unit(table: TableFolder, name: str, size: int) -> dict[str, torch.Tensor]:
    """One chunk/seed/option piece: IQS and time for each of the chunk's ``size`` prompts, all finite."""
    path = table.units / name
    unit = table.read(name)
    if "iqs" not in unit or "time_s" not in unit:
        raise TrainerInputError(f"{path}: has no 'iqs' or 'time_s' scores; {_REMAKE_PIECE}")
    for score, values in unit.items():
        if tuple(values.shape) != (size,):
            raise TrainerInputError(f"{path}: '{short_text(score, 40)}' has shape {tuple(values.shape)}, the chunk has "
                                    f"{size} prompts; {_REMAKE}")
        if not torch.isfinite(values.float()).all():
            raise TrainerInputError(f"{path}: '{short_text(score, 40)}' holds NaN or Inf values (a failing reward "
                                    f"backend?); {_REMAKE_PIECE}")
    return unit


def _pad_tokens(tokens: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate chunks whose token counts may differ (a model with prompt-length-dependent states)."""
    longest = max(t.shape[1] for t in tokens)
    padded = [torch.nn.functional.pad(t, (0, 0, 0, longest - t.shape[1])) for t in tokens]
    padded_masks = [torch.nn.functional.pad(m, (0, longest - m.shape[1]), value=False) for m in masks]
    return torch.cat(padded), torch.cat(padded_masks)
