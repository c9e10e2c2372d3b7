"""Bad input to the policy side (issue 13): files, metadata, conditioning and knobs each get the documented error.

Every crafted policy file must make ``load_policy`` raise :class:`PolicyFileError` naming the file and the problem,
and ``python -m adadiff.policy inspect`` exit 2 with the same message: never a traceback, a hang or gigabytes of
memory. Decisions refuse input they cannot read instead of silently choosing the fewest steps.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from adadiff.policy import (PolicyCache, PolicyConfig, PolicyFeatures, PolicyFileError, choose_steps, init_policy,
                            load_policy, read_metadata, save_policy)
from adadiff.policy.__main__ import main as policy_cli
from adadiff.policy.describe import printable
from memory_probe import peak_growth_of_refusal
from policy_helpers import (SMALL_CONFIG, copy_with_changes, fifo, file_of_bytes, file_with_header,
                            good_policy_file, random_conditioning, sparse_file, write_crafted_policy)

pytestmark = pytest.mark.usefixtures("no_hang")  # a blocking read fails the test, not the suite

SMALL = SMALL_CONFIG
INFO = {"model_family": "sd15", "base_model": {"name": "tiny", "fingerprint": "sha256:ab"}, "sampling": {"guidance": 2}}


def _good_file(folder):
    return good_policy_file(folder, INFO)


def _rewritten(folder, **changes):
    return copy_with_changes(_good_file(folder), **changes)


def _with_tensor(name, value):
    def change(weights):
        weights[name] = value if not callable(value) else value(weights[name])
        return weights
    return change


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _link(folder, target):
    path = folder / "link.safetensors"
    path.symlink_to(target)
    return path


BAD_FILES = {
    # kind of file: (how to make it, words the message must hold)
    "missing": (lambda d: d / "nope.safetensors", "no such policy file"),
    "dangling-link": (lambda d: _link(d, d / "deleted.safetensors"), "no such policy file"),
    "folder": (lambda d: d, "is a folder"),
    "link-to-dev-zero": (lambda d: _link(d, "/dev/zero"), "character device, not a regular file"),
    "fifo": (fifo, "FIFO (named pipe), not a regular file"),
    "300-char-name": (lambda d: d / ("p" * 300 + ".safetensors"), "cannot be opened (File name too long)"),
    "empty": (lambda d: file_of_bytes(d, b""), "0 bytes long"),
    "2-GB-sparse": (lambda d: sparse_file(d, 2 * 2**30), "larger than the 256.0 MB"),
    "pickle": (lambda d: file_of_bytes(d, b"\x80\x04K\x01."), "pickle"),
    "zip": (lambda d: file_of_bytes(d, b"PK\x03\x04" + b"\0" * 40), "zip"),
    "header-length-beyond-file": (lambda d: file_with_header(d, struct.pack("<Q", 2**40)), "truncated"),
    "header-of-100-MB-declared": (lambda d: file_with_header(d, b"{" + b" " * (17 * 2**20) + b"}"), "MB header"),
    "header-not-an-object": (lambda d: file_with_header(d, [1, 2]), "not a JSON object"),
    "header-nested-100000": (lambda d: file_with_header(d, _deep(100000).encode()), "nested 100000 levels"),
    # an unterminated string of escaped quotes: a quadratic depth scan would take hours (the no_hang alarm fails it)
    "header-unterminated-escapes-1-MB": (lambda d: file_with_header(d, b'{"' + b'\\"' * 2**19), "is not valid JSON"),
    "header-not-utf8": (lambda d: file_with_header(d, b'{"\xff": 1}'), "not UTF-8"),
    "header-tensor-entry-damaged": (lambda d: file_with_header(d, {
        "__metadata__": {"format": "adadiff-policy", "format_version": "1", "config": json.dumps(SMALL.to_dict()),
                         "info": "{}"},
        **{name: {"dtype": "F32", "shape": "many", "data_offsets": [0, 4]}
           for name in init_policy(SMALL).state_dict()}}), "is damaged"),
    "safetensors-but-no-metadata": (lambda d: save_file({"w": torch.zeros(2)}, str(d / "l.safetensors"))
                                    or d / "l.safetensors", "not an AdaDiff policy"),
    "format-version-as-number": (lambda d: file_with_header(d, {"__metadata__": {
        "format": "adadiff-policy", "format_version": 1}}), "['format_version'] is not text"),
    "format-version-newer": (lambda d: _rewritten(d, metadata={"format_version": "2"}), "update AdaDiff"),
    "format-version-garbage": (lambda d: _rewritten(d, metadata={"format_version": "v1"}),
                               "reads only version 1"),
    "config-missing": (lambda d: file_with_header(d, {"__metadata__": {
        "format": "adadiff-policy", "format_version": "1"}}), "metadata 'config' is missing"),
    "config-not-json": (lambda d: _rewritten(d, config="{oops"), "metadata 'config': is not valid JSON"),
    "config-a-list": (lambda d: _rewritten(d, config="[1]"), "should be a JSON object, got a JSON array"),
    "config-nested-10000": (lambda d: _rewritten(d, config=_deep(10000)), "nested 10000 levels deep"),
    "config-5000-digit-number": (lambda d: _rewritten(d, config='{"width": ' + "9" * 5000 + "}"),
                                 "5000-digit number"),
    "config-NaN": (lambda d: _rewritten(d, config='{"dropout": NaN}'), "NaN, which is not a JSON number"),
    "config-1e999": (lambda d: _rewritten(d, config='{"dropout": 1e999}'), "beyond the range of a float"),
    "config-dropout-string": (lambda d: _rewritten(d, config={"dropout": "0.1"}), "dropout must be a number"),
    "config-width-float": (lambda d: _rewritten(d, config={"width": 16.5}), "width must be a whole number"),
    "config-options-text": (lambda d: _rewritten(d, config={"options": "2,4"}), "network settings are invalid"),
    "config-unknown-key": (lambda d: _rewritten(d, config={"layers": 3}), "unknown policy settings"),
    # what the review's 627 KB file claimed: a network of ~1e9 parameters (4 GB in fp32) over a few KB of weights
    "config-huge-network": (lambda d: write_crafted_policy(d / "huge.safetensors", SMALL.options)
                            or d / "huge.safetensors", "has shape"),
    "info-nested-10000": (lambda d: _rewritten(d, info=_deep(10000)), "nested 10000 levels deep"),
    "info-a-string": (lambda d: _rewritten(d, info='"sd15"'), "should be a JSON object, got the text"),
    "info-base-model-a-string": (lambda d: _rewritten(d, info={**INFO, "base_model": "tiny"}),
                                 "'base_model' should be a JSON object"),
    "info-sampling-a-list": (lambda d: _rewritten(d, info={**INFO, "sampling": [1]}),
                             "'sampling' should be a JSON object"),
    "info-model-family-a-number": (lambda d: _rewritten(d, info={**INFO, "model_family": 15}),
                                   "'model_family' should be text"),
    "tensor-fp8": (lambda d: _rewritten(d, tensors=_with_tensor("head.2.bias", lambda t: t.to(torch.float8_e4m3fn))),
                   "stored as F8_E4M3"),
    "tensor-int": (lambda d: _rewritten(d, tensors=_with_tensor("head.2.bias", lambda t: t.long())), "stored as I64"),
    "tensor-bool": (lambda d: _rewritten(d, tensors=_with_tensor("head.2.bias", lambda t: t > 0)), "stored as BOOL"),
    "tensor-nan": (lambda d: _rewritten(d, tensors=_with_tensor("head.2.bias", lambda t: t * math.nan)), "NaN or Inf"),
    "tensor-inf": (lambda d: _rewritten(d, tensors=_with_tensor("head.0.weight", lambda t: t / 0)), "NaN or Inf"),
    "tensor-f64-beyond-fp32": (lambda d: _rewritten(d, tensors=_with_tensor("head.2.bias",
                                                                            lambda t: t.double() + 1e300)),
                               "beyond the float32 range"),
    "tensor-wrong-shape": (lambda d: _rewritten(d, tensors=_with_tensor("head.2.bias", torch.zeros(5))), "has shape"),
    "tensor-missing": (lambda d: _rewritten(d, tensors=lambda w: {k: v for k, v in w.items() if k != "head.2.bias"}),
                       "missing ['head.2.bias']"),
    "tensor-extra": (lambda d: _rewritten(d, tensors=_with_tensor("evil", torch.zeros(1))), "unexpected ['evil']"),
    "data-truncated": (lambda d: file_of_bytes(d, _good_file(d).read_bytes()[:-40]), "the weights cannot be read"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_every_bad_policy_file_gets_a_clear_error_from_load_inspect_and_listing(tmp_path, capsys, kind):
    make, words = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(PolicyFileError) as loading:
        load_policy(path)
    message = str(loading.value)
    assert words in message, message
    assert str(path)[:40] in message  # the file is named (a 300-character name shortened)
    with pytest.raises(PolicyFileError, match="."):
        read_metadata(path)  # what hosts list and `inspect` shows: the same checks
    assert policy_cli(["inspect", str(path)]) == 2
    assert words in capsys.readouterr().err
    with pytest.raises(PolicyFileError):
        PolicyCache().load(path)


def test_inspect_subprocess_exits_2_without_traceback_on_a_refused_file(tmp_path):
    path = BAD_FILES["tensor-nan"][0](tmp_path)
    result = subprocess.run([sys.executable, "-m", "adadiff.policy", "inspect", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "NaN or Inf" in result.stderr and "Traceback" not in result.stderr


def test_a_crafted_huge_config_is_refused_without_allocating(tmp_path):
    """The network is never built from a config the tensors do not match: peak memory stays near the file's size."""
    path = BAD_FILES["config-huge-network"][0](tmp_path)
    printed, grew_mb = peak_growth_of_refusal("from adadiff.policy import load_policy, PolicyFileError", "load_policy",
                                              "PolicyFileError", path, timeout=120)
    assert "refused:" in printed and "has shape" in printed, printed
    assert grew_mb < 100, f"refusing a crafted file raised peak memory by {grew_mb:.0f} MB"


# --- property-based: any JSON in the metadata, any text in it ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
# overrides merged into the good file's config and info, often keeping a good value, so many files load
config_overrides = st.fixed_dictionaries({}, optional={
    name: st.just(SMALL.to_dict()[name]) | json_values | st.integers(0, 40)
    for name in ("options", "token_dim", "pooled_dim", "width", "depth", "heads", "ff_mult", "dropout")})
info_values = json_values | st.dictionaries(
    st.sampled_from(["model_family", "base_model", "sampling", "reward", "summary"]) | st.text(max_size=8),
    json_values | st.dictionaries(st.sampled_from(["name", "fingerprint"]) | st.text(max_size=8), json_values,
                                  max_size=3), max_size=4).map(lambda overrides: {**INFO, **overrides})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=config_overrides, info=info_values)
def test_any_json_metadata_loads_or_is_refused_and_inspect_agrees(tmp_path, capsys, config, info):
    """Whatever the metadata holds, `inspect` shows exactly the files load_policy loads and refuses the others."""
    path = _rewritten(tmp_path, config=config, info=info)
    try:
        load_policy(path)
        loaded = True
    except PolicyFileError:
        loaded = False
    assert policy_cli(["inspect", str(path)]) == (0 if loaded else 2)
    capsys.readouterr()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=60))
def test_inspect_shows_metadata_text_without_control_characters(tmp_path, capsys, text):
    name_with_escapes = f"\x1b[2J\x1b]0;owned\x07{text}\nAdaDiff policy fake.safetensors\u202e"
    path = _rewritten(tmp_path, info={"model_family": name_with_escapes, "base_model": {"name": text},
                                      "summary": {text: name_with_escapes}})
    assert policy_cli(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert not any(not c.isprintable() for line in shown.splitlines() for c in line)
    assert len(shown.splitlines()) == 10  # the fake line stayed inside its own
    assert "\\x1b[2J" in shown


@given(text=st.text())
def test_printable_output_is_one_visible_line(text):
    shown = printable(text)
    assert shown.isprintable() and len(shown) <= 4 * 200 + 40


# --- decisions ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    return init_policy(PolicyConfig(options=(5, 10, 20), token_dim=32, pooled_dim=8, width=16, heads=2, depth=1))


def _features(batch=2, tokens=5, poison=None):
    features = PolicyFeatures(torch.randn(batch, tokens, 32), torch.ones(batch, tokens, dtype=torch.bool),
                              torch.randn(batch, 8))
    if poison:
        poison(features)
    return features


BAD_DECISIONS = {
    "nan-token": (dict(conditioning=_features(poison=lambda f: f.tokens[1, 3, 7].fill_(math.nan))),
                  "NaN or Inf values (token states of prompt(s) 1)"),
    "inf-token": (dict(conditioning=_features(poison=lambda f: f.tokens[0, 0, 0].fill_(math.inf))), "NaN or Inf"),
    "nan-padding-too": (dict(conditioning=_features(poison=lambda f: f.tokens.fill_(math.nan))), "NaN or Inf"),
    "inf-pooled": (dict(conditioning=_features(poison=lambda f: f.pooled[1, 0].fill_(-math.inf))),
                   "pooled vector of prompt(s) 1"),
    "all-masked-row": (dict(conditioning=_features(poison=lambda f: f.mask[1].fill_(False))),
                       "row(s) 1 hold no real token"),
    "bias-+inf": (dict(quality_bias=math.inf), "quality_bias must be a finite number"),
    "bias--inf": (dict(quality_bias=-math.inf), "quality_bias must be a finite number"),
    "bias-nan": (dict(quality_bias=math.nan), "quality_bias must be a finite number"),
    "bias-text": (dict(quality_bias="high"), "quality_bias must be a finite number"),
    "bias-none": (dict(quality_bias=None), "quality_bias must be a finite number"),
    "bias-1e38": (dict(quality_bias=1e38), "quality_bias must be between -10 and 10"),  # was: the fewest steps
    "bias--400": (dict(quality_bias=-400.0), "quality_bias must be between -10 and 10"),  # was: a quality OverflowError
    "max-steps-0": (dict(max_steps=0), "max_steps must be a whole number of at least 1"),
    "max-steps-negative": (dict(max_steps=-5), "max_steps must be a whole number of at least 1"),
    "min-steps-0": (dict(min_steps=0), "min_steps must be a whole number of at least 1"),
    "max-steps-fraction": (dict(max_steps=2.5), "max_steps must be a whole number"),
    "max-steps-true": (dict(max_steps=True), "max_steps must be a whole number"),
    "min-above-max": (dict(min_steps=30, max_steps=10), "min_steps (30) is larger than max_steps (10)"),
}


@pytest.mark.parametrize("kind", BAD_DECISIONS)
def test_every_bad_decision_request_is_refused_with_a_clear_error(policy, kind):
    request, words = BAD_DECISIONS[kind]
    request = {"conditioning": _features(), **request}
    with pytest.raises(ValueError) as error:
        choose_steps(policy, request.pop("conditioning"), **request)
    assert words in str(error.value)


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 3), row=st.integers(0, 2), token=st.integers(0, 4), channel=st.integers(0, 31),
       value=st.sampled_from([math.nan, math.inf, -math.inf]), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_one_non_finite_element_anywhere_is_refused(policy, batch, row, token, channel, value, dtype):
    tokens = random_conditioning(batch, tokens=5, width=32).to(dtype)
    tokens[row % batch, token, channel] = value
    features = PolicyFeatures(tokens, torch.ones(batch, 5, dtype=torch.bool), torch.zeros(batch, 8))
    with pytest.raises(ValueError, match=f"prompt\\(s\\) {row % batch}"):
        choose_steps(policy, features)


@settings(max_examples=60, deadline=None)
@given(bias=st.floats(-10, 10) | st.floats(allow_nan=True, allow_infinity=True))
def test_any_bias_within_the_bound_decides_and_any_other_is_refused(policy, bias):
    """A bias in [-10, 10] decides, never fewer steps than the policy as trained when positive; any other is refused."""
    features = _features()
    if abs(bias) <= 10:
        steps = choose_steps(policy, features, quality_bias=bias).steps
        assert steps in (5, 10, 20)
        if bias >= 0:
            assert steps >= choose_steps(policy, features).steps
    else:
        with pytest.raises(ValueError, match="quality_bias must be"):
            choose_steps(policy, features, quality_bias=bias)


def test_a_policy_whose_outputs_overflow_is_refused_naming_its_file(tmp_path):
    """Finite weights too large for float32 arithmetic give NaN outputs, whose argmax would silently be the fewest
    steps: the decision refuses them and names the policy."""
    path = _rewritten(tmp_path, tensors=_with_tensor("head.2.weight", lambda t: torch.full_like(t, 3e38)))
    with pytest.raises(ValueError, match="policy crafted.safetensors gave NaN or Inf outputs for prompt"):
        choose_steps(load_policy(path), random_conditioning(2, tokens=5, width=32))


# --- saving and the cache ----------------------------------------------------------------------------------------


def test_concurrent_saves_to_one_path_never_collide(tmp_path):
    """Each save writes its own temporary file, so two processes (or threads) saving at once both succeed and the
    file holds one of the two complete policies."""
    path = tmp_path / "shared.safetensors"
    policies = [init_policy(SMALL, seed=seed) for seed in (1, 2)]
    errors, start = [], threading.Barrier(2)

    def save_many(policy):
        start.wait()
        for _ in range(25):
            try:
                save_policy(policy, path)
            except Exception as error:  # noqa: BLE001  collected and asserted below
                errors.append(error)

    threads = [threading.Thread(target=save_many, args=(p,)) for p in policies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    saved = load_policy(path).state_dict()["head.2.bias"]
    assert any(torch.equal(saved, p.state_dict()["head.2.bias"]) for p in policies)
    assert not [p for p in tmp_path.iterdir() if p != path], "temporary files were left behind"


def _replace_file(new: Path, path: Path) -> None:
    os.replace(new, path)  # a new inode, as a download or `mv` gives


def _rewrite_in_place(new: Path, path: Path) -> None:
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(new.read_bytes())


@pytest.mark.parametrize("put_in_place", [_replace_file, _rewrite_in_place], ids=["replaced", "rewritten-in-place"])
def test_cache_reloads_a_same_size_file_that_kept_the_old_mtime(tmp_path, put_in_place):
    path = save_policy(init_policy(SMALL, seed=1), tmp_path / "p.safetensors")
    before = os.stat(path)
    cache = PolicyCache()
    first = cache.load(path)
    retrained = init_policy(SMALL, seed=2)
    replacement = save_policy(retrained, tmp_path / "new.safetensors")
    assert replacement.stat().st_size == before.st_size
    put_in_place(replacement, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or an archive would
    reloaded = cache.load(path)
    assert reloaded is not first
    assert torch.equal(reloaded.state_dict()["head.2.bias"], retrained.state_dict()["head.2.bias"])
