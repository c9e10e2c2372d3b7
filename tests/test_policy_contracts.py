"""Exact promises of the policy's decision and network that the mutation run (`make mutation`) found unguarded."""
import os
import socket
import stat
from pathlib import Path

import pytest
import torch

from adadiff.policy import PolicyConfig, PolicyFeatures, StepChoice, init_policy, policy_features
from adadiff.policy.bounded import check_regular_file, parse_json, read_regular_file, short_text
from adadiff.policy.decision import choose_steps, first_within
from adadiff.policy.errors import BadInputError
from adadiff.policy.features import check_values
from adadiff.policy.errors import FeatureMismatchError
from adadiff.policy.network import normalise_tokens
from policy_helpers import policy_preferring, random_conditioning


def test_a_reinforce_summary_reads_exactly_one_line_per_prompt():
    """The console line the hosts print: chosen steps, then each prompt's distribution to two decimals."""
    choice = StepChoice(20, (20, 10), torch.tensor([[0.125, 0.875], [0.5, 0.5]]), (10, 20))
    assert choice.summary() == ("AdaDiff: 20 steps\n"
                                "prompt 0: 20 steps (10:0.12, 20:0.88)\n"
                                "prompt 1: 10 steps (10:0.50, 20:0.50)")


def test_a_loss_exactly_at_the_tolerance_is_accepted():
    """'Within the tolerance' includes the tolerance itself: 1.0% loss is taken at a 1% tolerance."""
    losses = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
    assert first_within(losses, 1.0).tolist() == [1, 0]


def test_the_pre_normalised_path_reads_the_pooled_vector():
    """The trainer's path gives the host's outputs for an SDXL-like policy too: the pooled vector is not dropped."""
    config = PolicyConfig(token_dim=48, pooled_dim=24, width=16, heads=2, depth=1, dropout=0.0)
    policy = init_policy(config, seed=3)
    tokens, mask, pooled = 3 * torch.randn(2, 7, 48), torch.ones(2, 7, dtype=torch.bool), 4 * torch.randn(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(policy.forward_normalised(normalise_tokens(tokens), mask, pooled),
                                   policy(tokens, mask, pooled), atol=1e-4, rtol=1e-4)


def small_policy(**settings):
    return init_policy(PolicyConfig(token_dim=32, width=16, heads=2, depth=2, dropout=0.0, **settings), seed=5)


def test_a_prompt_decides_alike_alone_and_in_a_batch():
    """Each prompt's outputs are its own: batching prompts of different lengths changes nothing."""
    policy = small_policy()
    tokens, mask = 3 * torch.randn(2, 9, 32), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        together = policy(tokens, mask)
        alone = torch.cat([policy(tokens[i:i + 1], mask[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_a_single_real_token_pools_to_its_own_state():
    """Mean pooling over real tokens: one real token among padding gives the outputs of that token repeated."""
    policy = small_policy()
    token = 3 * torch.randn(1, 1, 32)
    padded = torch.cat([token, 5 * torch.randn(1, 6, 32)], 1)
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[0, 0] = True
    with torch.no_grad():
        torch.testing.assert_close(policy(padded, mask), policy(token.expand(1, 7, 32), torch.ones(1, 7, dtype=torch.bool)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("limit", [1, 7])
def test_equal_limits_down_to_one_step_are_a_valid_request(limit):
    """min_steps == max_steps pins the count, 1 included: the smallest limits a user may give are accepted."""
    policy = policy_preferring(3)  # 20 steps on its own
    assert choose_steps(policy, random_conditioning(), min_steps=limit, max_steps=limit).per_prompt == (limit,)
    assert choose_steps(policy, random_conditioning(), min_steps=1).steps == 20


def policy_with_logits(logits, options):
    """A real REINFORCE policy whose head ignores the prompt and outputs ``logits``."""
    policy = init_policy(PolicyConfig(options=options, width=8, heads=1, depth=1), seed=0)
    with torch.no_grad():
        policy.head[-1].weight.zero_()
        policy.head[-1].bias.copy_(torch.tensor(logits))
    return policy


@pytest.mark.parametrize("bias, steps", [(0.79, 10), (0.81, 20)])
def test_the_knob_adds_five_nats_times_the_options_position(bias, steps):
    """Scores are log p + 5 * bias * position, position 0 at the fewest steps and 1 at the most: 20 of (10, 20, 30)
    sits at 0.5, so a 2-nat deficit is made up at exactly bias 0.8."""
    policy = policy_with_logits([0.0, -2.0, -10.0], (10, 20, 30))
    assert choose_steps(policy, random_conditioning(), quality_bias=bias).steps == steps



@pytest.mark.parametrize("bias", [10.5, -11.0])
def test_a_knob_beyond_ten_is_refused_saying_what_a_unit_means(bias):
    policy = policy_with_logits([0.0, -2.0, -10.0], (10, 20, 30))
    with pytest.raises(ValueError) as refused:
        choose_steps(policy, random_conditioning(), quality_bias=bias)
    assert str(refused.value) == ("quality_bias must be between -10 and 10 (each unit divides the accepted quality "
                                  f"loss by 10; the hosts' knobs run -1 ... +1), got {bias!r}")
    assert choose_steps(policy, random_conditioning(), quality_bias=bias / abs(bias) * 10).steps in (10, 30)

@pytest.mark.parametrize("settings", [
    {"options": (1, 2)}, {"options": tuple(range(1, 257))}, {"dropout": 0.0}, {"dropout": 0.999},
    {"depth": 12}, {"ff_mult": 8}, {"token_dim": 16384, "pooled_dim": 16384}, {"width": 2048, "heads": 64},
    {"tolerance_pct": 0.001}, {"tolerance_pct": 99.9}, {"pooled_dim": 0}, {"objective": "quality"},
    {"width": 1, "heads": 1, "depth": 1, "token_dim": 1, "ff_mult": 1},
])
def test_configs_at_the_edge_of_each_limit_are_accepted(settings):
    """Every limit is inclusive where the message says so: a policy file written at a limit loads."""
    config = PolicyConfig(**settings)
    assert all(getattr(config, name) == value for name, value in settings.items())


@pytest.mark.parametrize("settings, message", [
    ({"options": (1,)}, "a policy needs 2 to 256 step options, got 1"),
    ({"options": tuple(range(1, 258))}, "a policy needs 2 to 256 step options, got 257"),
    ({"options": (0, 5)}, "step options must be distinct positive integers in increasing order, got (0, 5)"),
    ({"options": (5, "10")}, "step option must be a whole number, got '10'"),
    ({"depth": 13}, "depth must be between 0 and 12, got 13"),
    ({"heads": -1}, "heads must be between 0 and 64, got -1"),
    ({"depth": 0}, "depth must be positive, got 0"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
    ({"dropout": "0.1"}, "dropout must be a number, got str"),
    ({"tolerance_pct": True}, "tolerance_pct must be a number, got bool"),
    ({"tolerance_pct": 0.0}, "tolerance_pct must be between 0 and 100, got 0.0"),
    ({"tolerance_pct": 100.0}, "tolerance_pct must be between 0 and 100, got 100.0"),
    ({"objective": "fast"}, "objective must be one of reinforce, quality, got 'fast'"),
    ({"width": 30, "heads": 4}, "width 30 must be divisible by heads 4"),
])
def test_each_refused_config_says_exactly_what_is_wrong(settings, message):
    with pytest.raises(ValueError) as error:
        PolicyConfig(**settings)
    assert str(error.value) == message


def named_policy(info, **settings):
    policy = init_policy(PolicyConfig(width=8, heads=1, depth=1, **settings), info=info)
    policy.source = "/models/adadiff/fast.safetensors"
    return policy


@pytest.mark.parametrize("info, settings, conditioning, message", [
    ({"model_family": "sd15"}, {}, torch.randn(1, 77, 1024),
     "policy fast.safetensors expects 768-wide conditioning, got 1024: it was trained for sd15; pick a policy made "
     "for this checkpoint"),
    ({}, {}, torch.randn(1, 77, 1024),
     "policy fast.safetensors expects 768-wide conditioning, got 1024: it was trained for another model; pick a "
     "policy made for this checkpoint"),
    ({}, {"pooled_dim": 16}, torch.randn(1, 77, 768),
     "policy fast.safetensors expects a 16-wide pooled text vector, got none: pick a policy made for this checkpoint"),
    ({}, {"pooled_dim": 16}, PolicyFeatures(torch.randn(1, 77, 768), torch.ones(1, 77, dtype=torch.bool),
                                            torch.randn(1, 4)),
     "policy fast.safetensors expects a 16-wide pooled text vector, got 4-wide: pick a policy made for this "
     "checkpoint"),
])
def test_conditioning_of_another_model_is_refused_with_the_exact_reason(info, settings, conditioning, message):
    with pytest.raises(FeatureMismatchError) as error:
        choose_steps(named_policy(info, **settings), conditioning)
    assert str(error.value) == message


def test_a_policy_made_without_a_seed_is_seed_zeros():
    config = PolicyConfig(width=8, heads=1, depth=1)
    unseeded, zero = init_policy(config).state_dict(), init_policy(config, seed=0).state_dict()
    assert all(torch.equal(unseeded[k], zero[k]) for k in zero)


def test_the_network_is_the_pre_norm_encoder_its_files_were_trained_as():
    """Saved weights only mean something in the architecture they were trained in: pre-norm attention layers with
    a feed-forward of width * ff_mult and the config's dropout (a post-norm network would load the same tensors and
    decide differently)."""
    config = PolicyConfig(width=16, heads=2, depth=2, ff_mult=3, dropout=0.25)
    policy = init_policy(config)
    assert len(policy.encoder.layers) == 2
    for layer in policy.encoder.layers:
        assert layer.norm_first is True and layer.self_attn.num_heads == 2 and layer.self_attn.batch_first
        assert layer.linear1.weight.shape == (48, 16) and layer.dropout.p == 0.25


# --- bounded reads: what each refusal says ----------------------------------------------------------------------


def _readable_block_device() -> Path | None:
    for path in sorted(Path("/dev").iterdir()):
        try:
            if stat.S_ISBLK(path.stat().st_mode) and os.access(path, os.R_OK):
                return path
        except OSError:
            continue
    return None


@pytest.mark.parametrize("kind", ["character device", "block device"])
def test_a_special_file_is_refused_naming_what_it_is(kind):
    if kind == "character device":
        path = Path("/dev/null")
    else:
        path = _readable_block_device()
        if path is None:
            pytest.skip("no readable block device on this machine")
    with pytest.raises(BadInputError) as refused:
        read_regular_file(path, 1024)
    assert str(refused.value) == f"{path}: is a {kind}, not a regular file; AdaDiff reads only regular files"
    assert refused.value.kind == "special"


@pytest.mark.parametrize("size, limit, said", [(2**20 + 1, 2**20, "1.0 MB is larger than the 1.0 MB"),
                                               (100, 50, "100 bytes is larger than the 50 bytes")])
def test_a_file_over_its_limit_is_refused_in_bytes_or_megabytes(tmp_path, size, limit, said):
    path = tmp_path / "big"
    path.write_bytes(b"x" * size)
    with pytest.raises(BadInputError) as refused:
        read_regular_file(path, limit)
    assert str(refused.value) == f"{path}: {said} this file may have" and refused.value.kind == "too_large"


def test_a_number_json_cannot_hold_is_an_invalid_input():
    with pytest.raises(BadInputError) as refused:
        parse_json('{"dropout": NaN}', "p.json")
    assert refused.value.kind == "invalid" and "p.json: holds NaN, which is not a JSON number" in str(refused.value)


def test_a_socket_cannot_even_be_opened(tmp_path):
    """The kernel refuses to open a socket (ENXIO) before its kind could be read: refused, nothing read."""
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as listener, pytest.raises(BadInputError) as refused:
        listener.bind(str(path))
        read_regular_file(path, 1024)
    assert str(refused.value) == f"{path}: cannot be opened (No such device or address)"



@pytest.mark.parametrize("system", ["posix", "windows"])
def test_a_folder_is_refused_as_a_folder(tmp_path, monkeypatch, system):
    """POSIX opens a folder for reading and the opened descriptor's kind refuses it; Windows refuses to open it
    (PermissionError, stood in for by the one call that differs), and the path is found to be a folder."""
    if system == "windows":
        def windows_open(path, flags, *rest):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(os, "open", windows_open)
    with pytest.raises(BadInputError) as refused:
        read_regular_file(tmp_path, 1024)
    assert (str(refused.value), refused.value.kind) == (f"{tmp_path}: is a folder, not a file", "folder")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_a_regular_file_that_fails_to_read_is_refused_as_unreadable():
    """/proc/self/mem is a regular file whose first page cannot be read (EIO)."""
    with pytest.raises(BadInputError) as refused:
        read_regular_file("/proc/self/mem", 1024)
    assert (str(refused.value), refused.value.kind) == ("/proc/self/mem: cannot be read (Input/output error)",
                                                        "unreadable")


def test_a_file_that_grows_while_being_read_is_refused_one_byte_past_its_limit(tmp_path, monkeypatch):
    """The size on disk passed the check, then the file grew (a download still being written): reading stops one
    byte past the limit, however much more there is, and the refusal says what happened."""
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 50)
    real_read, taken = os.read, []

    def read_then_grow(descriptor, size):
        chunk = real_read(descriptor, size)
        taken.append(len(chunk))
        if len(taken) == 1:
            with open(path, "ab") as handle:
                handle.write(b"y" * 1000)
        return chunk

    monkeypatch.setattr(os, "read", read_then_grow)
    with pytest.raises(BadInputError) as refused:
        read_regular_file(path, 100)
    assert (str(refused.value), refused.value.kind) == (f"{path}: grew past 100 bytes while being read", "too_large")
    assert sum(taken) == 101


def test_a_file_that_grows_in_small_reads_is_still_refused(tmp_path, monkeypatch):
    """Reads may return less than asked (pipes, network file systems): the limit counts every byte read so far."""
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 50)
    real_read = os.read

    def small_reads_while_growing(descriptor, size):
        with open(path, "ab") as handle:
            handle.write(b"y" * 10)
        return real_read(descriptor, min(size, 30))

    monkeypatch.setattr(os, "read", small_reads_while_growing)
    with pytest.raises(BadInputError, match="grew past 100 bytes"):
        read_regular_file(path, 100)


def test_files_are_opened_without_blocking_and_never_inherited(tmp_path, monkeypatch):
    """O_NONBLOCK: a FIFO's open returns at once so its kind can be refused; O_CLOEXEC: the descriptor does not leak
    into processes a host starts meanwhile (ComfyUI and the webui run other programs)."""
    path = tmp_path / "f"
    path.write_bytes(b"{}")
    real_open, flags = os.open, []
    monkeypatch.setattr(os, "open", lambda name, mode, *rest: flags.append(mode) or real_open(name, mode, *rest))
    assert read_regular_file(path, 10) == b"{}"
    assert flags and all(mode & os.O_NONBLOCK and mode & os.O_CLOEXEC for mode in flags), flags


@pytest.mark.parametrize("text, depth", [
    ('{"a": [1, ' * 33 + "0" + "]}" * 33, 66),  # keys and values between the brackets count for nothing
    ("[[], " + "[" * 64 + "]" * 64 + "]", 65),  # a closed sibling does not lower the depth of what follows
    ('["[[[[", ' + "[" * 64 + "]" * 64 + "]", 65),  # brackets inside strings are text
])
def test_json_nesting_is_the_depth_of_brackets_outside_strings(text, depth):
    with pytest.raises(BadInputError) as refused:
        parse_json(text, "t.json")
    assert (str(refused.value), refused.value.kind) == (
        f"t.json: JSON nested {depth} levels deep; at most 64 are read", "invalid")
    assert parse_json(text, "t.json", max_depth=depth) is not None
    assert parse_json("5", "t.json", max_depth=0) == 5  # a lone value has no depth


@pytest.mark.parametrize("text, message", [
    (b'{"\xff": 1}'.decode("unicode_escape").encode("latin-1"), "t.json: is not UTF-8 text (byte 2)"),
    ("{oops", "t.json: is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ('{"n": ' + "9" * 101 + "}", "t.json: holds a 101-digit number; no AdaDiff setting needs more than 100 digits"),
    ('{"x": 1e999}', "t.json: holds the number 1e999, beyond the range of a float"),
    ('[-Infinity]', "t.json: holds -Infinity, which is not a JSON number; write a finite number"),
])
def test_each_json_refusal_is_an_invalid_input_saying_what_is_wrong(text, message):
    with pytest.raises(BadInputError) as refused:
        parse_json(text, "t.json")
    assert (str(refused.value), refused.value.kind) == (message, "invalid")

@pytest.mark.parametrize("kind", ["regular", "link", "missing", "folder", "fifo", "socket", "name-too-long"])
def test_a_file_read_by_another_library_is_checked_first_as_read_regular_file_would(tmp_path, kind):
    """For files safetensors opens itself (table pieces): the same refusals, by kind, before anything opens them."""
    path = tmp_path / "piece"
    expected = {"missing": (f"{path}: no such file", "missing"), "folder": (f"{path}: is a folder, not a file", "folder"),
                "fifo": (f"{path}: is a FIFO (named pipe), not a regular file; AdaDiff reads only regular files",
                         "special"),
                "socket": (f"{path}: is a socket, not a regular file; AdaDiff reads only regular files", "special")}
    if kind in ("regular", "link"):
        (tmp_path / "target").write_bytes(b"x")
        path.symlink_to(tmp_path / "target") if kind == "link" else path.write_bytes(b"x")
        assert check_regular_file(path) is None
        return
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "name-too-long":
        path = tmp_path / ("n" * 300)
        expected[kind] = (f"{short_text(path)}: cannot be opened (File name too long)", "unreadable")
    with socket.socket(socket.AF_UNIX) as listener, pytest.raises(BadInputError) as refused:
        if kind == "socket":
            listener.bind(str(path))
        check_regular_file(path)
    assert (str(refused.value), refused.value.kind) == expected[kind]


def test_short_text_keeps_the_start_and_the_end_of_a_long_value():
    assert short_text("x" * 80) == "x" * 80
    digits = "".join(str(i % 10) for i in range(100))
    assert short_text(digits) == f"{digits[:40]}...{digits[-20:]} (100 characters)"
    assert short_text(digits, 20) == f"{digits[:10]}...{digits[-5:]} (100 characters)"


# --- reading the hosts' conditioning ------------------------------------------------------------------------------


def test_a_comfyui_entry_may_be_a_lone_tensor_or_carry_extras_that_are_not_a_dict():
    states = torch.randn(1, 77, 768)
    for entry in ([states], [states, "not a dict"]):
        features = policy_features([entry])
        assert torch.equal(features.tokens, states) and features.pooled is None and features.mask.all()


def test_empty_comfyui_conditioning_says_what_to_connect():
    with pytest.raises(ValueError) as refused:
        policy_features([])
    assert str(refused.value) == "the conditioning is empty: connect the positive prompt's CONDITIONING output"


def test_an_sdxl_dict_without_a_vector_has_no_pooled_input():
    features = policy_features({"crossattn": torch.randn(1, 77, 2048)})
    assert features.pooled is None and features.tokens.shape == (1, 77, 2048)


def test_a_batch_without_prompts_is_refused():
    with pytest.raises(ValueError, match=r"prompt conditioning is empty \(shape \(0, 77, 768\)\)"):
        policy_features(torch.randn(0, 77, 768))


def test_one_prompt_reads_as_a_bool_masked_batch_with_its_pooled_vector_in_the_states_dtype():
    """A [T, D] prompt and a [D] pooled vector become a batch of one; the pooled vector takes the states' dtype."""
    states, pooled = torch.randn(77, 2048, dtype=torch.float16), torch.randn(1280)
    features = policy_features(states, pooled)
    assert features.mask.dtype == torch.bool and features.mask.shape == (1, 77)
    assert features.pooled.shape == (1, 1280) and features.pooled.dtype == torch.float16


def test_entries_of_mixed_dtypes_are_stacked_in_the_first_entrys_dtype():
    first, second = torch.randn(1, 77, 768, dtype=torch.float16), torch.randn(1, 154, 768)
    features = policy_features([[first, {}], [second, {}]])
    assert features.tokens.dtype == torch.float16 and features.tokens.shape == (2, 154, 768)


def test_combined_comfyui_entries_become_padded_masked_rows_in_the_first_entrys_dtype():
    """Conditioning Combine: each entry a row, padded to the longest and masked, its pooled vector beside it."""
    first, second = torch.randn(1, 77, 2048, dtype=torch.float16), torch.randn(1, 154, 2048)
    pooled = [torch.randn(1, 1280, dtype=torch.float16), torch.randn(1, 1280)]
    features = policy_features([[first, {"pooled_output": pooled[0]}], [second, {"pooled_output": pooled[1]}]])
    assert features.tokens.dtype == torch.float16 and features.tokens.shape == (2, 154, 2048)
    assert torch.equal(features.tokens[0, :77], first[0]) and not features.tokens[0, 77:].any()
    assert torch.equal(features.tokens[1], second[0].half())
    assert features.mask.dtype == torch.bool
    assert features.mask[0, :77].all() and not features.mask[0, 77:].any() and features.mask[1].all()
    assert features.pooled.dtype == torch.float16
    assert torch.equal(features.pooled, torch.cat([pooled[0], pooled[1].half()]))



def _devices(features: PolicyFeatures) -> set[str]:
    return {features.tokens.device.type, features.mask.device.type, features.pooled.device.type}


def test_one_prompts_features_stay_on_the_device_of_its_token_states():
    """The meta device stands in for a GPU: the mask is made there and a pooled vector elsewhere is moved there."""
    features = policy_features(torch.randn(1, 77, 64, device="meta"), torch.randn(1, 32))
    assert _devices(features) == {"meta"}


def test_combined_entries_are_stacked_on_the_first_entrys_device():
    """Entries on different devices (the meta device standing in for a GPU) are padded and stacked where the first
    one is; the pooled vectors go there too."""
    entries = [[torch.randn(1, 77, 64, device="meta"), {"pooled_output": torch.randn(1, 32)}],
               [torch.randn(1, 154, 64), {"pooled_output": torch.randn(1, 32, device="meta")}]]
    features = policy_features(entries)
    assert _devices(features) == {"meta"} and features.tokens.shape == (2, 154, 64)

@pytest.mark.parametrize("tokens, mask, pooled, message", [
    ((1, 77), (1, 77), None, "tokens must be [B, T, D] with a [B, T] mask, got (1, 77) and (1, 77)"),
    ((1, 77, 8), (1, 76), None, "tokens must be [B, T, D] with a [B, T] mask, got (1, 77, 8) and (1, 76)"),
    ((2, 77, 8), (2, 77), (1, 4), "pooled vector must be [B, P] for 2 prompts, got (1, 4)"),
    ((2, 77, 8), (2, 77), (2,), "pooled vector must be [B, P] for 2 prompts, got (2,)")])
def test_policy_features_of_the_wrong_shapes_are_refused_saying_which(tokens, mask, pooled, message):
    with pytest.raises(ValueError) as refused:
        PolicyFeatures(torch.zeros(tokens), torch.ones(mask, dtype=torch.bool),
                       None if pooled is None else torch.zeros(pooled))
    assert str(refused.value) == message


def test_unreadable_conditioning_names_its_type_and_what_is_read():
    with pytest.raises(TypeError) as refused:
        policy_features(5)
    assert str(refused.value) == (
        "cannot read prompt conditioning of type int: expected a ComfyUI CONDITIONING list, an A1111 conditioning "
        "tensor or SDXL dict, or a diffusers prompt_embeds tensor")


def test_broken_conditioning_names_at_most_five_rows_and_says_why():
    tokens = torch.zeros(7, 4, 8)
    tokens[:6, 0, 0] = float("nan")
    with pytest.raises(ValueError) as refused:
        check_values(PolicyFeatures(tokens, torch.ones(7, 4, dtype=torch.bool), torch.full((7, 2), float("inf"))))
    assert str(refused.value) == (
        "the prompt conditioning holds NaN or Inf values (token states of prompt(s) 0, 1, 2, 3, 4; pooled vector of "
        "prompt(s) 0, 1, 2, 3, 4): the text encoder's output is broken (in fp16 it can overflow: run it in fp32), so "
        "no step count can be read from it")
    mask = torch.zeros(7, 4, dtype=torch.bool)
    mask[6] = True
    with pytest.raises(ValueError) as refused:
        check_values(PolicyFeatures(torch.zeros(7, 4, 8), mask))
    assert str(refused.value) == ("conditioning row(s) 0, 1, 2, 3, 4 hold no real token (every position is masked): "
                                  "pass conditioning from a text encoder")


def test_json_numbers_up_to_100_digits_are_read_and_longer_or_infinite_ones_refused_as_invalid():
    assert parse_json("1" * 100, "s.json") == int("1" * 100)
    with pytest.raises(BadInputError) as refused:
        parse_json("-" + "1" * 101, "s.json")
    assert (str(refused.value), refused.value.kind) == (
        "s.json: holds a 102-digit number; no AdaDiff setting needs more than 100 digits", "invalid")
    with pytest.raises(BadInputError) as refused:
        parse_json("1e999", "s.json")
    assert (str(refused.value), refused.value.kind) == (
        "s.json: holds the number 1e999, beyond the range of a float", "invalid")


def test_printable_escapes_control_characters_and_cuts_only_beyond_its_limit():
    from adadiff.policy.describe import printable

    assert printable("a\x1b[31mb\u202ec\nd") == "a\\x1b[31mb\\u202ec\\nd"
    assert printable("x" * 10, limit=10) == "x" * 10
    assert printable("x" * 11, limit=10) == "x" * 10 + "... (11 characters)"


@pytest.mark.parametrize("case", ["missing", "folder", "under-a-file", "nul", "at-the-limit", "grows"])
def test_read_regular_file_says_what_is_wrong_and_of_which_kind(tmp_path, case):
    path, limit = tmp_path / "f", 1024
    expected = {"missing": (f"{path}: no such file", "missing"), "folder": (f"{path}: is a folder, not a file", "folder")}
    if case == "folder":
        path.mkdir()
    elif case == "under-a-file":
        path.write_bytes(b"x")
        path = path / "inner"
        expected[case] = (f"{path}: cannot be opened (a part of the path is a file, not a folder)", "unreadable")
    elif case == "nul":
        path = tmp_path / "a\0b"
        expected[case] = (f"{path}: is not a usable path (embedded null byte)", "unreadable")
    elif case == "at-the-limit":
        path.write_bytes(b"x" * limit)
        assert read_regular_file(path, limit) == b"x" * limit
        return
    elif case == "grows":  # /proc files say size 0 and then give more: the reader stops at the limit
        path, limit = Path("/proc/self/status"), 10
        expected[case] = (f"{path}: grew past 10 bytes while being read", "too_large")
    with pytest.raises(BadInputError) as refused:
        read_regular_file(path, limit)
    assert (str(refused.value), refused.value.kind) == expected[case]


def test_parse_json_reads_64_levels_and_refuses_65_or_bytes_that_are_not_utf8_as_invalid():
    assert parse_json("[" * 64 + "]" * 64, "d.json") is not None
    with pytest.raises(BadInputError) as refused:
        parse_json("[" * 65 + "]" * 65, "d.json")
    assert (str(refused.value), refused.value.kind) == (
        "d.json: JSON nested 65 levels deep; at most 64 are read", "invalid")
    with pytest.raises(BadInputError) as refused:
        parse_json(b'{"a": "\xff"}', "d.json")
    assert (str(refused.value), refused.value.kind) == ("d.json: is not UTF-8 text (byte 7)", "invalid")
