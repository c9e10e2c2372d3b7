"""The policy file: safetensors weights plus JSON metadata, and nothing a loader could execute.

Metadata keys (all strings, as safetensors requires):

* ``format``: always ``adadiff-policy``;
* ``format_version``: an integer, currently ``1``;
* ``config``: JSON of :class:`PolicyConfig` (step options, token/pooled widths, network sizes);
* ``info``: JSON object describing the policy: ``model_family``, ``base_model`` (``name``, ``fingerprint``),
  ``sampling`` (scheduler, guidance, size), ``reward`` (backend and its settings), ``summary`` (training and
  evaluation figures). Hosts show it; decisions never depend on it.

The header is parsed here before safetensors sees the bytes, so a pickle, a zip or a truncated download gets a
message that says so instead of a parser error, and the tensors it declares are checked against the network its
``config`` describes (built on the ``meta`` device, which allocates nothing) before any weight is read: a small
crafted file cannot make the loader allocate gigabytes. ``inspect`` and the hosts' listings read files through the
same checks as :func:`load_policy`.
"""
from __future__ import annotations

import json
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from .bounded import MAX_JSON_NUMBER_DIGITS, parse_json, read_regular_file, short_text
from .errors import BadInputError, PolicyFileError
from .network import PolicyConfig, StepPolicy

FORMAT_NAME = "adadiff-policy"
FORMAT_VERSION = 1
MAX_POLICY_BYTES = 256 * 1024 * 1024  # a policy is a few MB; anything this large is something else
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a policy's header (tensor list and metadata) is a few KB
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")  # save_policy writes F32; half/double copies load into the fp32 network
_REMEDY_REDOWNLOAD = "download or export the policy again"
_REMEDY_GET_POLICY = "Get the .safetensors policy file, or make one with adadiff-train"
_INFO_OBJECTS = ("base_model", "sampling", "reward", "summary")  # info fields hosts and `inspect` read as objects


@dataclass(frozen=True)
class _CheckedFile:
    """A policy file that passed every check: what :func:`load_policy` builds from."""

    config: PolicyConfig
    info: dict
    tensors: dict[str, torch.Tensor]


def save_policy(policy: StepPolicy, path: str | Path) -> Path:
    """Write ``policy`` (weights in fp32, config and info) to a ``.safetensors`` file and return its path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"policy files end in .safetensors, got {path.name}")
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in policy.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(policy.config.to_dict()),
        "info": json.dumps(policy.info, sort_keys=True, allow_nan=False),  # NaN would be unreadable JSON
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own for every save, so two saves to one path never write into the same temporary file; short
    # whatever the policy's name, so any name the file system takes can be saved
    temporary = path.with_name(f".adadiff-{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)  # never leave a half-written policy where a host would pick it up
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> StepPolicy:
    """Read a policy file, checking everything; raises :class:`PolicyFileError` with a remedy on any problem."""
    path = Path(path)
    checked = _read_checked(path)
    policy = StepPolicy(checked.config, checked.info, source=str(path))
    policy.load_state_dict(checked.tensors, strict=True)
    return policy.to(device).eval()


def read_metadata(path: str | Path) -> dict:
    """The file's metadata (config and info decoded) after the same checks as :func:`load_policy`, so a listing
    or ``inspect`` never shows a file the hosts would refuse."""
    checked = _read_checked(Path(path))
    return {"format_version": FORMAT_VERSION, "config": checked.config.to_dict(), "info": checked.info}


def _read_checked(path: Path) -> _CheckedFile:
    data = _read_bytes(path)
    header = _read_header(path, data)
    metadata = _read_metadata(path, header)
    config = _read_config(path, metadata)
    info = _read_info(path, metadata)
    _check_declared_tensors(path, config, header)
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors' own parser: any failure means a damaged file
        raise PolicyFileError(f"{path}: the weights cannot be read ({short_text(error, 200)}); "
                              f"{_REMEDY_REDOWNLOAD}") from error
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor.float()).all():  # as the fp32 network will hold it: F64 1e300 becomes inf
            raise PolicyFileError(f"{path}: tensor {name} holds NaN or Inf values, or values beyond the float32 range "
                                  "the network computes in (a diverged training run?); retrain or use an earlier "
                                  "policy file")
    return _CheckedFile(config, info, tensors)


def _read_bytes(path: Path) -> bytes:
    try:
        return read_regular_file(path, MAX_POLICY_BYTES)
    except BadInputError as error:
        remedy = {
            "missing": f"{path}: no such policy file; check the path or put the file in models/adadiff/",
            "folder": f"{path}: is a folder, not a policy file; point to the .safetensors file inside it",
            "too_large": f"{error}; a step policy is a few MB: is this a checkpoint? {_REMEDY_GET_POLICY}",
        }.get(error.kind, f"{error}. {_REMEDY_GET_POLICY}")
        raise PolicyFileError(remedy) from None


def _read_header(path: Path, data: bytes) -> dict:
    """The safetensors JSON header (8-byte length, then a JSON object), or an error saying what the file is."""
    if len(data) < 8:
        raise PolicyFileError(f"{path}: {_describe_non_safetensors(data)}")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > len(data) - 8:
        raise PolicyFileError(f"{path}: {_describe_non_safetensors(data, 'its header cannot be read')}")
    if header_length > MAX_HEADER_BYTES:
        raise PolicyFileError(f"{path}: declares a {header_length / 2**20:.0f} MB header; a policy's is a few KB, "
                              f"so this is not a policy file. {_REMEDY_GET_POLICY}")
    try:
        header = parse_json(data[8: 8 + header_length], "header")
    except BadInputError as error:
        raise PolicyFileError(f"{path}: {_describe_non_safetensors(data, f'its {error}')}") from None
    if not isinstance(header, dict):
        raise PolicyFileError(f"{path}: {_describe_non_safetensors(data, 'its header is not a JSON object')}")
    return header


def _version_number(version: str | None) -> int:
    """``format_version`` as a number, 0 when it is no plain number (or one too long to be a version)."""
    numeric = version is not None and version.isascii() and version.isdigit()
    return int(version) if numeric and len(version) <= MAX_JSON_NUMBER_DIGITS else 0


def _describe_non_safetensors(data: bytes, problem: str | None = None) -> str:
    """Say what the file looks like instead, so the user knows what they downloaded (``problem``: what failed, for
    data long enough to hold a header)."""
    if data[:2] == b"PK":
        return f"is a zip/torch.save file, not safetensors; AdaDiff never unpickles files. {_REMEDY_GET_POLICY}"
    if data[:1] == b"\x80":
        return f"is a Python pickle, not safetensors; AdaDiff never unpickles files. {_REMEDY_GET_POLICY}"
    if len(data) < 8:
        return f"is {len(data)} bytes long, too short for a safetensors file; {_REMEDY_REDOWNLOAD}"
    return f"is truncated or not a safetensors file ({problem}); {_REMEDY_REDOWNLOAD}"


def _read_metadata(path: Path, header: dict) -> dict:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise PolicyFileError(f"{path}: is a safetensors file but not an AdaDiff policy (no '{FORMAT_NAME}' "
                              f"metadata). {_REMEDY_GET_POLICY}")
    not_text = sorted(short_text(key, 40) for key, value in metadata.items() if not isinstance(value, str))
    if not_text:
        raise PolicyFileError(f"{path}: metadata {not_text[:3]} is not text, as safetensors requires: the file is "
                              f"damaged; {_REMEDY_REDOWNLOAD}")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        shown = "(none)" if version is None else repr(short_text(version, 20))
        if _version_number(version) > FORMAT_VERSION:
            raise PolicyFileError(f"{path}: policy format version {shown} is not supported: it is newer than "
                                  f"version {FORMAT_VERSION}, the one this AdaDiff reads; update AdaDiff")
        raise PolicyFileError(f"{path}: policy format version {shown} is not supported: this AdaDiff reads only "
                              f"version {FORMAT_VERSION}; {_REMEDY_REDOWNLOAD}")
    return metadata


def _read_json(path: Path, metadata: dict, key: str, expect: type):
    if key not in metadata:
        raise PolicyFileError(f"{path}: metadata '{key}' is missing; {_REMEDY_REDOWNLOAD}")
    try:
        value = parse_json(metadata[key], f"{path}: metadata '{key}'")
    except BadInputError as error:
        raise PolicyFileError(f"{error}; {_REMEDY_REDOWNLOAD}") from None
    if not isinstance(value, expect):
        raise PolicyFileError(f"{path}: metadata '{key}' should be a JSON {_JSON_NAMES[expect]}, got "
                              f"{_json_kind(value)}; {_REMEDY_REDOWNLOAD}")
    return value


def _read_config(path: Path, metadata: dict) -> PolicyConfig:
    values = _read_json(path, metadata, "config", expect=dict)
    try:
        return PolicyConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise PolicyFileError(f"{path}: the network settings are invalid ({short_text(error, 200)}); "
                              f"{_REMEDY_REDOWNLOAD}") from error


def _read_info(path: Path, metadata: dict) -> dict:
    """The descriptive metadata, with the fields hosts show checked for their kind (null = not recorded)."""
    info = _read_json(path, metadata, "info", expect=dict)
    wrong = [f"'{key}' should be a JSON object, got {_json_kind(info[key])}"
             for key in _INFO_OBJECTS if info.get(key) is not None and not isinstance(info[key], dict)]
    if info.get("model_family") is not None and not isinstance(info["model_family"], str):
        wrong.append(f"'model_family' should be text, got {_json_kind(info['model_family'])}")
    if wrong:
        raise PolicyFileError(f"{path}: metadata 'info' is malformed ({'; '.join(wrong)}); {_REMEDY_REDOWNLOAD}")
    return info


def _check_declared_tensors(path: Path, config: PolicyConfig, header: dict) -> None:
    """Compare the header's tensor list with the network ``config`` describes, before reading any weight."""
    with torch.device("meta"):  # shapes only: nothing is allocated, however large the config claims to be
        expected = {name: tuple(value.shape) for name, value in StepPolicy(config).state_dict().items()}
    declared = {name: entry for name, entry in header.items() if name != "__metadata__"}
    missing = sorted(set(expected) - set(declared))
    extra = sorted(short_text(name, 60) for name in set(declared) - set(expected))
    if missing or extra:
        raise PolicyFileError(f"{path}: weights do not match the network its metadata describes (missing "
                              f"{missing[:3]}, unexpected {extra[:3]}); {_REMEDY_REDOWNLOAD}")
    for name, entry in declared.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(type(size) is int for size in shape)):
            raise PolicyFileError(f"{path}: the header's entry for tensor {name} is damaged; {_REMEDY_REDOWNLOAD}")
        if entry.get("dtype") not in WEIGHT_DTYPES:
            raise PolicyFileError(f"{path}: tensor {name} is stored as {short_text(entry.get('dtype'), 20)}; policy "
                                  f"weights are floating point ({', '.join(WEIGHT_DTYPES)}); {_REMEDY_REDOWNLOAD}")
        if tuple(shape) != expected[name]:
            raise PolicyFileError(f"{path}: tensor {name} has shape {tuple(shape)}, the network needs "
                                  f"{expected[name]}; {_REMEDY_REDOWNLOAD}")


_JSON_NAMES = {dict: "object", list: "array", str: "string"}


def _json_kind(value) -> str:
    """How JSON would call the value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {short_text(value, 20)}"
    if isinstance(value, str):
        return f"the text {short_text(repr(value), 40)}"
    return f"a JSON {_JSON_NAMES.get(type(value), type(value).__name__)}"
