"""The policy file: safetensors weights plus JSON metadata, and nothing a loader could execute.

Metadata keys (all strings, as safetensors requires):

* ``format``: always ``adadiff-policy``;
* ``format_version``: an integer, currently ``1``;
* ``config``: JSON of :class:`PolicyConfig` (step options, token/pooled widths, network sizes);
* ``info``: JSON object describing the policy: ``model_family``, ``base_model`` (``name``, ``fingerprint``),
  ``sampling`` (scheduler, guidance, size), ``reward`` (backend and its settings), ``summary`` (training and
  evaluation figures). Hosts show it; decisions never depend on it.

The header is parsed here before safetensors sees the bytes, so a pickle, a zip or a truncated download gets a
message that says so instead of a parser error.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from .errors import PolicyFileError
from .network import PolicyConfig, StepPolicy

FORMAT_NAME = "adadiff-policy"
FORMAT_VERSION = 1
MAX_POLICY_BYTES = 256 * 1024 * 1024  # a policy is a few MB; anything this large is something else
_REMEDY_REDOWNLOAD = "download or export the policy again"


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
        "info": json.dumps(policy.info, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.replace(path)  # never leave a half-written policy where a host would pick it up
    return path


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> StepPolicy:
    """Read a policy file, checking everything; raises :class:`PolicyFileError` with a remedy on any problem."""
    path = Path(path)
    data = _read_bytes(path)
    metadata = _read_metadata(path, data)
    config = _read_config(path, metadata)
    info = _read_json(path, metadata, "info", expect=dict)
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors' own parser: any failure means a damaged file
        raise PolicyFileError(f"{path}: the weights cannot be read ({error}); {_REMEDY_REDOWNLOAD}") from error
    policy = StepPolicy(config, info, source=str(path))
    _check_tensors(path, policy, tensors)
    policy.load_state_dict(tensors, strict=True)
    return policy.to(device).eval()


def read_metadata(path: str | Path) -> dict:
    """The file's metadata (config and info decoded) without building the network; for listings and inspect."""
    path = Path(path)
    data = _read_bytes(path)
    metadata = _read_metadata(path, data)
    return {
        "format_version": int(metadata["format_version"]),
        "config": _read_config(path, metadata).to_dict(),
        "info": _read_json(path, metadata, "info", expect=dict),
    }


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise PolicyFileError(f"{path}: no such policy file; check the path or put the file in models/adadiff/")
    if path.is_dir():
        raise PolicyFileError(f"{path}: is a folder, not a policy file; point to the .safetensors file inside it")
    size = path.stat().st_size
    if size > MAX_POLICY_BYTES:
        raise PolicyFileError(f"{path}: {size / 2**20:.0f} MB is far too large for a step policy; is this a checkpoint?")
    return path.read_bytes()


def _read_metadata(path: Path, data: bytes) -> dict:
    header = _safetensors_header(data)
    if header is None:
        raise PolicyFileError(f"{path}: {_describe_non_safetensors(data)}")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise PolicyFileError(f"{path}: is a safetensors file but not an AdaDiff policy (no '{FORMAT_NAME}' "
                              "metadata); use a policy written by adadiff-train or `python -m adadiff.policy init`")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise PolicyFileError(f"{path}: policy format version {version!r} is not supported (this AdaDiff reads "
                              f"version {FORMAT_VERSION}); update AdaDiff or re-export the policy")
    return metadata


def _safetensors_header(data: bytes) -> dict | None:
    """The JSON header when ``data`` is laid out as safetensors (8-byte length, then a JSON object), else None."""
    if len(data) < 8:
        return None
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _describe_non_safetensors(data: bytes) -> str:
    """Say what the file looks like instead, so the user knows what they downloaded."""
    if data[:2] == b"PK":
        return ("is a zip/torch.save file, not safetensors; AdaDiff never unpickles files. "
                "Export the policy with adadiff's save_policy")
    if data[:1] == b"\x80":
        return ("is a Python pickle, not safetensors; AdaDiff never unpickles files. "
                "Export the policy with adadiff's save_policy")
    if len(data) < 8:
        return f"is {len(data)} bytes long, too short for a safetensors file; {_REMEDY_REDOWNLOAD}"
    return f"is truncated or not a safetensors file (its header cannot be read); {_REMEDY_REDOWNLOAD}"


def _read_json(path: Path, metadata: dict, key: str, expect: type):
    try:
        value = json.loads(metadata.get(key, ""))
    except (TypeError, json.JSONDecodeError) as error:
        raise PolicyFileError(f"{path}: metadata '{key}' is missing or not JSON; {_REMEDY_REDOWNLOAD}") from error
    if not isinstance(value, expect):
        raise PolicyFileError(f"{path}: metadata '{key}' should be a JSON {expect.__name__}; {_REMEDY_REDOWNLOAD}")
    return value


def _read_config(path: Path, metadata: dict) -> PolicyConfig:
    values = _read_json(path, metadata, "config", expect=dict)
    try:
        return PolicyConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise PolicyFileError(f"{path}: the network settings are invalid ({error}); {_REMEDY_REDOWNLOAD}") from error


def _check_tensors(path: Path, policy: StepPolicy, tensors: dict[str, torch.Tensor]) -> None:
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise PolicyFileError(f"{path}: weights do not match the network its metadata describes (missing "
                              f"{missing[:3]}, unexpected {extra[:3]}); {_REMEDY_REDOWNLOAD}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise PolicyFileError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the network needs "
                                  f"{tuple(expected[name].shape)}; {_REMEDY_REDOWNLOAD}")
        if not tensor.is_floating_point():
            raise PolicyFileError(f"{path}: tensor {name} is {tensor.dtype}, not floating point; {_REMEDY_REDOWNLOAD}")
        if not torch.isfinite(tensor).all():
            raise PolicyFileError(f"{path}: tensor {name} holds NaN or Inf values (a diverged training run?); "
                                  "retrain or use an earlier policy file")
