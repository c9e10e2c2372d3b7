"""Every refusal of a policy file, word for word.

The bad-input tests check that each refusal names the file and holds a telling fragment; a fragment lets the rest of
the message change unnoticed (mutation testing found a third of `fileformat.py`'s messages could say anything, and
several limits move by one, with every test green). Each case here is the smallest file that reaches one refusal,
and the whole message a user reads is checked.
"""
from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import load as load_safetensors_bytes

from adadiff.policy import PolicyFileError, init_policy, load_policy, save_policy
from adadiff.policy.describe import describe, printable
from policy_helpers import (SMALL_CONFIG, copy_with_changes, fifo, file_of_bytes, file_with_header,
                            good_policy_file, sparse_file)

SMALL = SMALL_CONFIG
NAMES = sorted(init_policy(SMALL).state_dict())
METADATA = {"format": "adadiff-policy", "format_version": "1", "config": json.dumps(SMALL.to_dict()), "info": "{}"}
REDOWNLOAD = "download or export the policy again"
GET_POLICY = "Get the .safetensors policy file, or make one with adadiff-train"
TRUNCATED = f"is truncated or not a safetensors file (its header cannot be read); {REDOWNLOAD}"


def tensors_declared(entries: dict):
    """A header with the good metadata and these tensor entries."""
    return lambda folder: file_with_header(folder, {"__metadata__": METADATA, **entries})


def rewritten(**changes):
    """A saved policy with parts replaced (see ``copy_with_changes``)."""
    return lambda folder: copy_with_changes(good_policy_file(folder), **changes)


def config_with(**changes):
    return rewritten(metadata={"config": json.dumps({**SMALL.to_dict(), **changes})})


SHAPE_ENTRY = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}

MESSAGES = {
    # case: (the file, the whole message with {path} for the file's path)
    "missing": (lambda d: d / "nope.safetensors",
                "{path}: no such policy file; check the path or put the file in models/adadiff/"),
    "folder": (lambda d: d, "{path}: is a folder, not a policy file; point to the .safetensors file inside it"),
    "fifo": (fifo, f"{{path}}: is a FIFO (named pipe), not a regular file; AdaDiff reads only regular files. "
                   f"{GET_POLICY}"),
    "257-MB": (lambda d: sparse_file(d, 257 * 2**20),
               "{path}: 257.0 MB is larger than the 256.0 MB this file may have; a step policy is a few MB: is this a "
               f"checkpoint? {GET_POLICY}"),
    "7-bytes": (lambda d: file_of_bytes(d, b"1234567"),
                f"{{path}}: is 7 bytes long, too short for a safetensors file; {REDOWNLOAD}"),
    "short-pickle": (lambda d: file_of_bytes(d, b"\x80\x04K\x01."),
                     f"{{path}}: is a Python pickle, not safetensors; AdaDiff never unpickles files. {GET_POLICY}"),
    "zip": (lambda d: file_of_bytes(d, b"PK\x03\x04" + bytes(40)),
            f"{{path}}: is a zip/torch.save file, not safetensors; AdaDiff never unpickles files. {GET_POLICY}"),
    "8-bytes-declaring-a-header": (lambda d: file_of_bytes(d, struct.pack("<Q", 1)), f"{{path}}: {TRUNCATED}"),
    "header-2-bytes-past-the-end": (lambda d: file_of_bytes(d, struct.pack("<Q", 10) + b"{}"),
                                    f"{{path}}: {TRUNCATED}"),
    "header-length-with-the-top-bit-set": (lambda d: file_of_bytes(d, struct.pack("<Q", 2**63 + 2) + b"{}"),
                                           f"{{path}}: {TRUNCATED}"),
    "empty-header": (lambda d: file_of_bytes(d, struct.pack("<Q", 0)),
                     "{path}: is truncated or not a safetensors file (its header: is not valid JSON (Expecting value "
                     f"at line 1 column 1)); {REDOWNLOAD}"),
    "header-not-json": (lambda d: file_with_header(d, b"{oops"),
                        "{path}: is truncated or not a safetensors file (its header: is not valid JSON (Expecting "
                        f"property name enclosed in double quotes at line 1 column 2)); {REDOWNLOAD}"),
    "header-not-an-object": (lambda d: file_with_header(d, [1]), "{path}: is truncated or not a safetensors file (its "
                                                            f"header is not a JSON object); {REDOWNLOAD}"),
    "header-of-16-MB-is-read": (lambda d: file_with_header(d, b"{" + b" " * (16 * 2**20 - 2) + b"}"),
                                "{path}: is a safetensors file but not an AdaDiff policy (no 'adadiff-policy' "
                                f"metadata). {GET_POLICY}"),
    "header-one-byte-over-16-MB": (lambda d: file_with_header(d, b"{" + b" " * (16 * 2**20 - 1) + b"}"),
                                   "{path}: declares a 16 MB header; a policy's is a few KB, so this is not a policy "
                                   f"file. {GET_POLICY}"),
    "metadata-not-text": (lambda d: file_with_header(d, {"__metadata__": {"format": "adadiff-policy",
                                                                     **{f"k{i}" * 30: i for i in range(4)}}}),
                          "{path}: metadata ['k0k0k0k0k0k0k0k0k0k0...k0k0k0k0k0 (60 characters)', "
                          "'k1k1k1k1k1k1k1k1k1k1...k1k1k1k1k1 (60 characters)', 'k2k2k2k2k2k2k2k2k2k2...k2k2k2k2k2 "
                          f"(60 characters)'] is not text, as safetensors requires: the file is damaged; {REDOWNLOAD}"),
    "format-version-missing": (lambda d: file_with_header(d, {"__metadata__": {"format": "adadiff-policy"}}),
                               "{path}: policy format version (none) is not supported: this AdaDiff reads only "
                               f"version 1; {REDOWNLOAD}"),
    "format-version-long-text": (rewritten(metadata={"format_version": "v" * 30}),
                                 "{path}: policy format version 'vvvvvvvvvv...vvvvv (30 characters)' is not "
                                 f"supported: this AdaDiff reads only version 1; {REDOWNLOAD}"),
    "format-version-01": (rewritten(metadata={"format_version": "01"}), "{path}: policy format version '01' is not "
                                                                        f"supported: this AdaDiff reads only version "
                                                                        f"1; {REDOWNLOAD}"),
    "format-version-0000000002": (rewritten(metadata={"format_version": "0000000002"}),
                                  "{path}: policy format version '0000000002' is not supported: it is newer than "
                                  "version 1, the one this AdaDiff reads; update AdaDiff"),
    "format-version-of-100-digits": (rewritten(metadata={"format_version": "9" * 100}),
                                     "{path}: policy format version '9999999999...99999 (100 characters)' is not "
                                     "supported: it is newer than version 1, the one this AdaDiff reads; update "
                                     "AdaDiff"),
    "format-version-of-101-digits": (rewritten(metadata={"format_version": "9" * 101}),
                                     "{path}: policy format version '9999999999...99999 (101 characters)' is not "
                                     f"supported: this AdaDiff reads only version 1; {REDOWNLOAD}"),
    "config-missing": (lambda d: file_with_header(d, {"__metadata__": {"format": "adadiff-policy",
                                                                        "format_version": "1"}}),
                       f"{{path}}: metadata 'config' is missing; {REDOWNLOAD}"),
    "config-a-list": (rewritten(metadata={"config": "[1]"}),
                      f"{{path}}: metadata 'config' should be a JSON object, got a JSON array; {REDOWNLOAD}"),
    "config-with-a-300-character-key": (config_with(**{"x" * 300: 1}),
                                        "{path}: the network settings are invalid (unknown policy settings ['" +
                                        "x" * 74 + "..." + "x" * 48 + f"'] (328 characters)); {REDOWNLOAD}"),
    "info-a-string": (rewritten(metadata={"info": '"sd15"'}),
                      f"{{path}}: metadata 'info' should be a JSON object, got the text 'sd15'; {REDOWNLOAD}"),
    "info-malformed": (rewritten(metadata={"info": json.dumps({"base_model": 5, "model_family": True})}),
                       "{path}: metadata 'info' is malformed ('base_model' should be a JSON object, got the number 5; "
                       f"'model_family' should be text, got true/false); {REDOWNLOAD}"),
    "tensor-entry-a-list": (tensors_declared({name: [1] for name in NAMES}),
                            f"{{path}}: the header's entry for tensor {NAMES[0]} is damaged; {REDOWNLOAD}"),
    "tensor-shape-of-text": (tensors_declared({name: {**SHAPE_ENTRY, "shape": ["x"]} for name in NAMES}),
                             f"{{path}}: the header's entry for tensor {NAMES[0]} is damaged; {REDOWNLOAD}"),
    "tensor-dtype-of-30-characters": (tensors_declared({name: {**SHAPE_ENTRY, "dtype": "F" * 30} for name in NAMES}),
                                      f"{{path}}: tensor {NAMES[0]} is stored as FFFFFFFFFF...FFFFF (30 characters); "
                                      f"policy weights are floating point (F32, F16, BF16, F64); {REDOWNLOAD}"),
    "four-missing-four-unexpected": (tensors_declared({f"e{i}" * 40: SHAPE_ENTRY for i in range(4)}),
                                     "{path}: weights do not match the network its metadata describes (missing "
                                     f"{NAMES[:3]}, unexpected ['e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0...0e0e0e0e0e0e0e0 "
                                     "(80 characters)', 'e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1...1e1e1e1e1e1e1e1 (80 "
                                     "characters)', 'e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2...2e2e2e2e2e2e2e2 (80 characters)'"
                                     f"]); {REDOWNLOAD}"),
    "tensor-of-another-shape": (rewritten(tensors=lambda w: {**w, "head.2.bias": torch.zeros(5)}),
                                f"{{path}}: tensor head.2.bias has shape (5,), the network needs (3,); {REDOWNLOAD}"),
    "tensor-of-nan": (rewritten(tensors=lambda w: {**w, "head.2.bias": w["head.2.bias"] * math.nan}),
                      "{path}: tensor head.2.bias holds NaN or Inf values, or values beyond the float32 range the "
                      "network computes in (a diverged training run?); retrain or use an earlier policy file"),
}


@pytest.mark.parametrize("case", MESSAGES)
def test_each_refused_policy_file_gets_its_whole_message(tmp_path, case):
    make, message = MESSAGES[case]
    path = make(tmp_path)
    with pytest.raises(PolicyFileError) as refused:
        load_policy(path)
    assert str(refused.value) == message.format(path=path)


def test_weights_safetensors_cannot_read_are_refused_with_its_own_words(tmp_path):
    """The one message whose middle is another library's: safetensors' own reason, unshortened when short."""
    data = save_policy(init_policy(SMALL), tmp_path / "good.safetensors").read_bytes()[:-40]
    with pytest.raises(Exception) as safetensors_says:
        load_safetensors_bytes(data)
    path = file_of_bytes(tmp_path, data)
    with pytest.raises(PolicyFileError) as refused:
        load_policy(path)
    assert str(refused.value) == f"{path}: the weights cannot be read ({safetensors_says.value}); {REDOWNLOAD}"


def test_a_long_reason_from_safetensors_is_shortened_to_200_characters(tmp_path):
    """A header entry whose offsets are text: safetensors quotes the text in full (412 characters here); the message
    keeps the reason's first 100 and last 50 characters."""
    data = save_policy(init_policy(SMALL), tmp_path / "good.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header[NAMES[0]]["data_offsets"] = ["x" * 300, 0]
    path = file_with_header(tmp_path, json.dumps(header).encode(), data[8 + length:])
    with pytest.raises(Exception) as safetensors_says:
        load_safetensors_bytes(path.read_bytes())
    reason = str(safetensors_says.value)
    assert len(reason) > 300
    with pytest.raises(PolicyFileError) as refused:
        load_policy(path)
    shortened = f"{reason[:100]}...{reason[-50:]} ({len(reason)} characters)"
    assert str(refused.value) == f"{path}: the weights cannot be read ({shortened}); {REDOWNLOAD}"


def test_a_policy_loads_onto_the_device_asked_for(tmp_path):
    """``device`` is honoured (the meta device stands in for a GPU: a CPU-only machine still tells them apart)."""
    path = save_policy(init_policy(SMALL), tmp_path / "p.safetensors")
    assert {p.device.type for p in load_policy(path, device="meta").parameters()} == {"meta"}


def test_a_policy_saves_under_any_name_the_file_system_takes(tmp_path):
    """The temporary file's name stays short, so a 255-byte policy name saves as well as a short one."""
    name = "p" * (255 - len(".safetensors")) + ".safetensors"
    path = save_policy(init_policy(SMALL, seed=3), tmp_path / name)
    assert path.name == name and load_policy(path).config == SMALL
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_empty_recorded_field_is_described_as_not_recorded(tmp_path):
    path = save_policy(init_policy(SMALL, info={"sampling": {}, "reward": {"backend": "clip"}}),
                       tmp_path / "p.safetensors")
    lines = describe(path).splitlines()
    assert "  sampling:       not recorded" in lines and "  reward:         backend=clip" in lines


def test_printable_keeps_visible_characters_as_they_are():
    """Only invisible characters are escaped: a Windows path's backslashes and quotes stay single."""
    assert printable("C:\\models\\it's \"mine\" é") == "C:\\models\\it's \"mine\" é"
    assert printable("a\x1bb\u202e") == "a\\x1bb\\u202e"
