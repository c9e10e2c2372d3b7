import json
import pickle
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from adadiff.policy import (
    PolicyCache,
    PolicyConfig,
    PolicyFileError,
    init_policy,
    load_policy,
    option_logits,
    read_metadata,
    save_policy,
)
from adadiff.policy.describe import describe
from policy_helpers import random_conditioning

INFO = {
    "model_family": "sd15",
    "base_model": {"name": "tiny-sd15", "fingerprint": "sha256:abc"},
    "sampling": {"scheduler": "ddim", "guidance": 7.5},
    "reward": {"backend": "clip", "top_k": 3},
    "summary": {"saving_pct": 41.0},
}


@pytest.fixture
def saved(tmp_path):
    policy = init_policy(PolicyConfig(options=(4, 8, 12, 16)), seed=11, info=INFO)
    with torch.no_grad():
        policy.head[-1].weight.mul_(30)
    return policy, save_policy(policy, tmp_path / "policy.safetensors")


def _rewrite(path, tensors=None, metadata_changes=None, config_changes=None):
    """Write a safetensors file like a saved policy but with some parts altered."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
        original = {name: handle.get_tensor(name) for name in handle.keys()}
    if config_changes:
        metadata["config"] = json.dumps({**json.loads(metadata["config"]), **config_changes})
    metadata.update(metadata_changes or {})
    save_file(tensors(original) if tensors else original, str(path), metadata=metadata)


def test_round_trip_reproduces_decisions_and_metadata(saved):
    policy, path = saved
    loaded = load_policy(path)
    conditioning = random_conditioning(16)
    assert torch.equal(option_logits(loaded, conditioning), option_logits(policy, conditioning))
    assert loaded.info == INFO and loaded.config == policy.config
    assert loaded.name == "policy.safetensors"
    assert read_metadata(path) == {"format_version": 1, "config": policy.config.to_dict(), "info": INFO}
    assert not list(path.parent.glob("*.partial"))


def test_only_safetensors_names_are_written(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        save_policy(init_policy(PolicyConfig()), tmp_path / "policy.pt")


def _assert_error(path, *fragments):
    with pytest.raises(PolicyFileError) as error:
        load_policy(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file_and_folder(tmp_path):
    _assert_error(tmp_path / "nope.safetensors", "no such policy file")
    _assert_error(tmp_path, "is a folder")


def test_truncated_download(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:300])
    _assert_error(path, "truncated", "download or export the policy again")


def test_pickle_renamed_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.safetensors"

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the loader unpickled a file",))

    path.write_bytes(pickle.dumps(Boom()))
    remedy = "Get the .safetensors policy file, or make one with adadiff-train"
    message = _assert_error(path, "pickle", "never unpickles", remedy)
    assert "save_policy" not in message, "a user makes policies with the trainer's command, not a Python function"


def test_torch_save_zip_renamed_is_refused(tmp_path, saved):
    policy, _ = saved
    path = tmp_path / "torch.safetensors"
    torch.save(policy.state_dict(), path)
    _assert_error(path, "zip/torch.save")


def test_other_safetensors_file_is_not_a_policy(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    _assert_error(path, "not an AdaDiff policy")


def test_unknown_format_version(saved):
    _, path = saved
    _rewrite(path, metadata_changes={"format_version": "7"})
    _assert_error(path, "version '7' is not supported", "update AdaDiff")


def test_missing_tensor(saved):
    _, path = saved
    _rewrite(path, tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("head.2")})
    _assert_error(path, "missing", "head.2")


def test_inconsistent_config_and_tensors(saved):
    _, path = saved
    _rewrite(path, config_changes={"width": 32})
    _assert_error(path, "shape")


def test_invalid_config(saved):
    _, path = saved
    _rewrite(path, config_changes={"options": [10, 5]})
    _assert_error(path, "network settings are invalid", "increasing order")


def test_a_calibrated_quality_policy_round_trips_and_describes_its_contract(tmp_path):
    thresholds = (30.0, 12.0, 8.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1)
    policy = init_policy(PolicyConfig(options=(4, 8, 12, 16), objective="quality", tolerance_pct=1.0,
                                      calibrated_thresholds_pct=thresholds), seed=3, info=INFO)
    loaded = load_policy(save_policy(policy, tmp_path / "calibrated.safetensors"))
    assert loaded.config.calibrated_thresholds_pct == thresholds and loaded.config == policy.config
    assert "at most 1% less IQS than 16 steps on average over held-out prompts" in describe(loaded.source)
    assert "predicted loss is within 2.5%" in describe(loaded.source)


@pytest.mark.parametrize("value, said", [
    (None, "null"), (True, "true/false"), (1.5, "the number 1.5"),
    (12345678901234567890123, "the number 1234567890...90123 (23 characters)"),
    ("short", "the text 'short'"),
    ("abcdefghij" * 6, "the text 'abcdefghijabcdefghi...bcdefghij' (62 characters)"), ([1], "a JSON array")])
def test_metadata_of_the_wrong_kind_is_named_as_json_calls_it_shortened(saved, value, said):
    _, path = saved
    _rewrite(path, metadata_changes={"info": json.dumps(value)})
    _assert_error(path, f"metadata 'info' should be a JSON object, got {said}; ")


def test_inspect_shows_every_recorded_field_and_says_what_is_not_recorded(tmp_path):
    full = save_policy(init_policy(PolicyConfig(options=(4, 8, 12, 16), token_dim=2048, pooled_dim=1280), seed=3,
                                   info=INFO), tmp_path / "full.safetensors")
    bare = save_policy(init_policy(PolicyConfig(options=(5, 10)), seed=3), tmp_path / "bare.safetensors")
    rule = "REINFORCE (the paper's objective: the most likely option; the quality knob shifts it)"
    assert describe(full) == "\n".join([
        f"AdaDiff policy full.safetensors ({full.stat().st_size / 2**20:.2f} MB, format version 1)",
        "  step options:   4, 8, 12, 16",
        "  reads:          2048-wide token states and a 1280-wide pooled vector",
        "  network:        3 attention layers, width 64, 4 heads",
        f"  decides by:     {rule}",
        "  model family:   sd15",
        "  base model:     tiny-sd15 (fingerprint sha256:abc)",
        "  sampling:       guidance=7.5, scheduler=ddim",
        "  reward:         backend=clip, top_k=3",
        "  summary:        saving_pct=41.0"])
    assert describe(bare) == "\n".join([
        f"AdaDiff policy bare.safetensors ({bare.stat().st_size / 2**20:.2f} MB, format version 1)",
        "  step options:   5, 10",
        "  reads:          768-wide token states (no pooled vector)",
        "  network:        3 attention layers, width 64, 4 heads",
        f"  decides by:     {rule}",
        "  model family:   not recorded",
        "  base model:     not recorded",
        "  sampling:       not recorded",
        "  reward:         not recorded",
        "  summary:        not recorded"])


@pytest.mark.parametrize("config, rule", [
    (dict(objective="reinforce"),
     "REINFORCE (the paper's objective: the most likely option; the quality knob shifts it)"),
    (dict(objective="quality", tolerance_pct=2.0),
     "predicted quality (the fewest steps whose IQS is predicted within 2% of 16 steps; the quality knob divides that "
     "by 10 per unit)"),
    (dict(objective="quality", tolerance_pct=2.0, calibrated_thresholds_pct=(9, 8, 7, 6, 4.125, 3, 2, 1, 0)),
     "predicted quality (at most 2% less IQS than 16 steps on average over held-out prompts: each prompt takes the "
     "fewest steps whose predicted loss is within 4.12%; the quality knob divides the accepted loss by 10 per unit)"),
    (dict(objective="reinforce", calibrated_thresholds_pct=(9, 8, 7, 6, 5, 4, 3, 2, 1)),
     "REINFORCE (the paper's objective: the most likely option; the quality knob shifts it)"),
], ids=["reinforce", "quality", "calibrated-quality", "reinforce-with-stray-thresholds"])
def test_inspect_says_how_the_policy_decides(tmp_path, config, rule):
    """What a user reads in `inspect` and the webui's About box: the objective's promise, with the knob-0 threshold
    and the largest option of this file."""
    policy = init_policy(PolicyConfig(options=(4, 8, 12, 16), **config), seed=3, info=INFO)
    assert f"  decides by:     {rule}\n" in describe(save_policy(policy, tmp_path / "p.safetensors"))


@pytest.mark.parametrize("thresholds, problem", [([1.0, 2.0] + [0.0] * 7, "non-increasing"), ([1.0] * 3, "9 finite"),
                                                 ("fast", "list of numbers")])
def test_calibrated_thresholds_that_could_mislead_the_knob_are_refused_naming_the_file(saved, thresholds, problem):
    _, path = saved
    _rewrite(path, config_changes={"objective": "quality", "calibrated_thresholds_pct": thresholds})
    _assert_error(path, "network settings are invalid", problem)


def test_nan_weights(saved):
    _, path = saved

    def poison(tensors):
        tensors["head.2.bias"] = torch.full_like(tensors["head.2.bias"], float("nan"))
        return tensors

    _rewrite(path, tensors=poison)
    _assert_error(path, "NaN or Inf", "head.2.bias")


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 0.05), (torch.bfloat16, 0.3), (torch.float64, 1e-5)])
def test_half_and_double_weights_load_into_the_fp32_network(saved, dtype, tolerance):
    """Policy weights are floating point: a half or double copy of a policy loads, as fp32, and decides alike."""
    policy, path = saved
    _rewrite(path, tensors=lambda t: {k: v.to(dtype) for k, v in t.items()})
    loaded = load_policy(path)
    assert all(value.dtype == torch.float32 for value in loaded.state_dict().values())
    conditioning = random_conditioning(16)
    torch.testing.assert_close(option_logits(loaded, conditioning), option_logits(policy, conditioning),
                               atol=tolerance, rtol=0)


@pytest.mark.parametrize("dtype, stored", [(torch.int32, "I32"), (torch.uint8, "U8"), (torch.int8, "I8")])
def test_integer_weights_are_refused_naming_the_tensor_and_the_dtypes_a_policy_takes(saved, dtype, stored):
    _, path = saved
    _rewrite(path, tensors=lambda t: {**t, "head.0.weight": t["head.0.weight"].to(dtype)})
    _assert_error(path, f"tensor head.0.weight is stored as {stored}", "floating point (F32, F16, BF16, F64)")


def test_corrupt_json_metadata(saved):
    _, path = saved
    _rewrite(path, metadata_changes={"info": "{not json"})
    _assert_error(path, "metadata 'info'")


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe\x00\x01" + b"rest")
    _assert_error(path, "not a safetensors file")


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("header"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("replace"), st.binary(max_size=64)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mangled_files_only_ever_raise_policy_file_error(tmp_path, mutations):
    policy = init_policy(PolicyConfig(options=(2, 4), width=16, heads=2, depth=1))
    path = save_policy(policy, tmp_path / "mangled.safetensors")
    data = bytearray(path.read_bytes())
    for kind, *args in mutations:
        if kind == "truncate":
            data = data[: args[0] % (len(data) + 1)]
        elif kind == "flip" and data:
            data[args[0] % len(data)] ^= args[1]
        elif kind == "insert":
            position = args[0] % (len(data) + 1)
            data[position:position] = args[1]
        elif kind == "header" and len(data) >= 8:
            data[:8] = struct.pack("<Q", args[0])
        elif kind == "replace":
            data = bytearray(args[0])
    path.write_bytes(bytes(data))
    try:
        loaded = load_policy(path)
    except PolicyFileError:
        return
    assert isinstance(loaded.config, PolicyConfig)  # a harmless change (e.g. a weight's bits) may still load


def test_cache_reads_a_file_once_per_version_on_disk(saved, caplog):
    policy, path = saved
    cache = PolicyCache()
    with caplog.at_level("INFO", logger="adadiff.policy.cache"):
        first = cache.load(path)
        assert cache.load(path) is first
    assert [r.getMessage() for r in caplog.records] == [f"AdaDiff: loaded policy {path} (step options 4, 8, 12, 16)"]
    retrained = init_policy(PolicyConfig(options=(4, 8, 12, 16, 20)), seed=12)
    save_policy(retrained, path)
    reloaded = cache.load(path)
    assert reloaded is not first and reloaded.config.options == (4, 8, 12, 16, 20)


def test_malformed_info_names_every_wrong_field(saved):
    _, path = saved
    _rewrite(path, metadata_changes={"info": json.dumps({**INFO, "sampling": [1], "model_family": 15})})
    _assert_error(path, "metadata 'info' is malformed ('sampling' should be a JSON object, got a JSON array; "
                        "'model_family' should be text, got the number 15); ")


def test_save_policy_makes_missing_folders_sorts_info_and_refuses_nan_in_it(tmp_path):
    from safetensors import safe_open

    policy = init_policy(PolicyConfig(options=(4, 8)), seed=1, info={"zeta": 1, "alpha": 2})
    path = save_policy(policy, tmp_path / "a" / "b" / "policy.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["info"] == '{"alpha": 2, "zeta": 1}'
    policy.info = {"score": float("nan")}
    with pytest.raises(ValueError):
        save_policy(policy, tmp_path / "nan.safetensors")


def test_a_header_beyond_16_mb_is_refused_in_megabytes(tmp_path):
    path = tmp_path / "huge-header.safetensors"
    path.write_bytes(struct.pack("<Q", 17 * 2**20) + b" " * (17 * 2**20))
    _assert_error(path, "declares a 17 MB header; a policy's is a few KB")
