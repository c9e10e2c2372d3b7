"""Bad input to the trainer (issue 13): each gets exit 2 and a message naming the file or flag, before any long work.

The CLI cases pass ``--model`` a path that does not exist: a check that ran only after the model loaded would report
the model instead, so every case also shows that its check comes first. Reward tables are built here piece by piece
and then damaged one way at a time.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adadiff.policy import read_metadata
from adadiff.trainer import cli
from adadiff.trainer.config import (FitSettings, GenerateSettings, JobSettings, TrainerInputError, build_settings,
                                    read_config_file)
from adadiff.trainer.prompts import read_prompts
from adadiff.trainer.table import TABLE_FORMAT, TABLE_VERSION, TableFolder, features_name, load_table, unit_name
from memory_probe import peak_growth_of_refusal

pytestmark = pytest.mark.usefixtures("no_hang")  # a blocking read fails the test, not the suite


def _file(name, data):
    def make(folder):
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path
    return make


def _fifo(name):
    def make(folder):
        os.mkfifo(folder / name)
        return folder / name
    return make


def _link_to_dev_zero(name):
    def make(folder):
        (folder / name).symlink_to("/dev/zero")
        return folder / name
    return make


def _sparse(name, size):
    def make(folder):
        with open(folder / name, "wb") as handle:
            handle.truncate(size)
        return folder / name
    return make


GOOD_PROMPTS = _file("p.txt", "a red cube\na blue ball\n")
NESTED = "[" * 10000 + "]" * 10000

# case: (argv after "generate", made in a temporary folder: {"prompts": maker, "config": maker, "out": maker},
#        words the message must hold)
CLI_CASES = {
    "prompts-1000001-lines": ({"prompts": _file("p.txt", "ab\n" * 1_000_001)}, "holds more than 1000000 lines"),
    "jsonl-nested": ({"prompts": _file("p.jsonl", '{"prompt": ' + NESTED + "}\n")}, "line 1: JSON nested 10001"),
    "jsonl-5000-digits": ({"prompts": _file("p.jsonl", '{"prompt": "a", "n": ' + "7" * 5000 + "}\n")},
                          "5000-digit number"),
    "jsonl-NaN": ({"prompts": _file("p.jsonl", '{"prompt": "a", "w": NaN}\n')}, "NaN, which is not a JSON number"),
    "jsonl-no-prompts": ({"prompts": _file("p.jsonl", "\n\n")}, "('prompt' field for .jsonl, 'prompt' column for"),
    "prompts-fifo": ({"prompts": _fifo("p.txt")}, "is a FIFO (named pipe), not a regular file"),
    "prompts-dev-zero": ({"prompts": _link_to_dev_zero("p.txt")}, "is a character device, not a regular file"),
    "prompts-folder": ({"prompts": lambda d: (d / "folder.txt").mkdir() or d / "folder.txt"}, "is a folder"),
    "prompts-300-char-name": ({"prompts": lambda d: d / ("p" * 300 + ".txt")}, "File name too long"),
    "prompts-1-GB": ({"prompts": _sparse("p.txt", 2**30)}, "larger than the 256.0 MB"),
    # a regular file whose read fails, for root too: process memory at address 0 (EIO)
    "prompts-read-fails": ({"prompts": lambda d: (d / "p.txt").symlink_to("/proc/self/mem") or d / "p.txt"},
                           "p.txt: cannot be read (Input/output error)"),
    "csv-unclosed-quote": ({"prompts": _file("p.csv", 'prompt\n"a red cube\na blue ball\na green cone\n')},
                           "line 4 is not valid CSV"),
    "csv-quote-closed-lines-later": ({"prompts": _file("p.csv", 'prompt\n"a red cube\na blue ball"\ngreen\n')},
                                     "the row starting on line 2 runs on to line 3"),
    "csv-text-after-quote": ({"prompts": _file("p.csv", 'prompt\n"a red" cube\n')}, "line 2 is not valid CSV"),
    "toml-not-utf8": ({"config": _file("s.toml", b'scheduler = "caf\xe9"\n')}, "s.toml: is not UTF-8 text"),
    "toml-a-folder": ({"config": lambda d: d}, "is a folder"),
    "toml-fifo": ({"config": _fifo("s.toml")}, "FIFO"),
    "toml-nested": ({"config": _file("s.toml", "reward_settings = {a = " + "[" * 5000 + "]" * 5000 + "}\n")},
                    "too deeply"),
    **{f"toml-composite-{what}": (
        {"config": _file("s.toml", f'reward = "composite:toy=1"\nreward_settings = {value}\n')}, words)
       for what, value, words in (
        ("weights-5", "{weights = 5}", "--reward: the composite's weights must be a table"),
        ("weight-text", '{weights = {toy = "half"}}', "--reward: the composite's weights must be a table"),
        ("weight-nan", "{weights = {toy = nan}}", "--reward: the composite's weights must be a table"),
        ("component-settings-5", "{toy = 5}", "--reward: the settings of the composite's toy component"))},
    "toml-reward-settings-5": ({"config": _file("s.toml", "reward_settings = 5\n")},
                               "--reward-settings: expected a table, got 5"),
    "toml-scheduler-5": ({"config": _file("s.toml", "scheduler = 5\n")}, "--scheduler: expected text, got 5"),
    "toml-batch-size-8.5": ({"config": _file("s.toml", "batch_size = 8.5\n")}, "--batch-size: cannot use 8.5"),
    "toml-batch-size-true": ({"config": _file("s.toml", "batch_size = true\n")}, "--batch-size: cannot use True"),
    "toml-options-fractions": ({"config": _file("s.toml", "options = [5.5, 10]\n")}, "--options: expected"),
    "toml-guidance-nan": ({"config": _file("s.toml", "guidance = nan\n")}, "--guidance: cannot use nan"),
    "toml-seeds-huge": ({"config": _file("s.toml", f"seeds = [0, {2**63 - 1}, 5]\nbatch_size = 2\n"),
                         "argv": ["--seeds", "0," + "9" * 30]}, "--seeds: expected comma-separated whole numbers"),
    "flag-device-banana": ({"argv": ["--device", "banana"]}, "--device: 'banana' is not a torch device"),
    "flag-guidance-nan": ({"argv": ["--guidance", "nan"]}, "--guidance: cannot use 'nan'"),
    "flag-guidance-inf": ({"argv": ["--guidance", "inf"]}, "--guidance: cannot use 'inf'"),
    "flag-guidance-1000": ({"argv": ["--guidance", "1000"]}, "--guidance must be from 0 to 100"),
    "flag-batch-size-8.5": ({"argv": ["--batch-size", "8.5"]}, "--batch-size: cannot use '8.5'"),
    "flag-batch-size-huge": ({"argv": ["--batch-size", "100000"]}, "--batch-size must be at least 1 and at most 4096"),
    "flag-options-100000": ({"argv": ["--options", "5,100000"]}, "at most 1000 steps"),
    "flag-options-5000-digits": ({"argv": ["--options", "5," + "9" * 5000]}, "--options: expected comma-separated"),
    "flag-options-300": ({"argv": ["--options", ",".join(map(str, range(1, 301)))]}, "--options: at most 256"),
    "flag-seeds-500": ({"argv": ["--seeds", ",".join(map(str, range(500)))]}, "--seeds: at most 100 seeds"),
    "flag-size-huge": ({"argv": ["--size", "65536"]}, "--size must be a multiple of 8 pixels up to 8192"),
    "flag-scheduler-nope": ({"argv": ["--scheduler", "nope"]}, "--scheduler: unknown scheduler 'nope'"),
    "out-under-a-file": ({"out": lambda d: _file("f", "x")(d) / "table"}, "is a file, so nothing can be written"),
    "out-300-char-name": ({"out": lambda d: d / ("o" * 300)}, "--out"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_every_bad_generate_input_exits_2_naming_it_before_the_model_loads(tmp_path, capsys, case):
    made, words = CLI_CASES[case]
    argv = ["generate", "--model", str(tmp_path / "model-not-needed-yet"), "--out",
            str(made["out"](tmp_path) if "out" in made else tmp_path / "table"),
            "--prompts", str(made.get("prompts", GOOD_PROMPTS)(tmp_path))]
    if "config" in made:
        argv += ["--config", str(made["config"](tmp_path))]
    code = cli.main(argv + made.get("argv", []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err, err
    assert "model not found" not in err and "Traceback" not in err
    assert "{PROMPT_FIELD}" not in err


def test_device_this_machine_lacks_is_refused(tmp_path, capsys):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an mps device")
    code = cli.main(["generate", "--model", str(tmp_path / "m"), "--prompts", str(GOOD_PROMPTS(tmp_path)),
                     "--out", str(tmp_path / "t"), "--device", "mps"])
    assert code == 2 and "this machine has no mps device" in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Runs as root too (CI does): root may write anywhere, so there the permission check's answer for another user
    is stood in for."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access

    def access_as_another_user(path, mode, **kwargs):
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", access_as_another_user)
    code = cli.main(["generate", "--model", str(tmp_path / "m"), "--prompts", str(GOOD_PROMPTS(tmp_path)),
                     "--out", str(locked / "table")])
    assert code == 2 and "is not writable for this user" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    lambda d: ["fit", "--table", str(d / "no-table-yet"), "--out", str(d / "f" / "p.safetensors")],
    lambda d: ["evaluate", "--policy", str(d / "no-policy-yet.safetensors"), "--table", str(d / "t"),
               "--out", str(d / "f" / "eval")],
    lambda d: ["fit", "--table", str(d / "no-table-yet"), "--out", str(d / ("p" * 300 + ".safetensors"))],
], ids=["fit", "evaluate", "fit-300-char-name"])
def test_fit_and_evaluate_check_out_before_reading_anything(tmp_path, capsys, command):
    (tmp_path / "f").write_text("a file where a folder should be")
    code = cli.main(command(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "no reward table" not in err and "no such policy" not in err, err


@pytest.mark.parametrize("data, words", [(b"\x80\x04K\x01.", "pickle"), (b"not a policy at all", "not a safetensors")],
                         ids=["pickle", "text"])
def test_a_bad_policy_file_given_to_evaluate_exits_2_naming_it(tmp_path, capsys, data, words):
    policy = _file("p.safetensors", data)(tmp_path)
    code = cli.main(["evaluate", "--policy", str(policy), "--table", str(tmp_path / "no-table-needed-yet"),
                     "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and str(policy) in err and words in err and "Traceback" not in err, err


# --- reward tables -----------------------------------------------------------------------------------------------

PROMPTS = ["a red cube", "a blue ball", "a green cone", "a grey wall", "a tiny dot"]
WIDTH = 8


def _description(**changes):
    return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "prompts": PROMPTS, "options": [2, 4], "seeds": [0, 1],
            "batch_size": 2, "sampling": {"scheduler": "ddim", "guidance": 2.0},
            "model": {"model_family": "test", "name": "tiny", "fingerprint": "sha256:0"},
            "reward": {"name": "toy", "settings": {}, "reference_steps": None}, **changes}


def _without(key):
    return {name: value for name, value in _description().items() if name != key}


def _write_table(folder, damage=None, description=None):
    """A finished table of 5 prompts in chunks of 2, 2 seeds, 2 options; ``damage(name, tensors)`` may alter a piece
    before it is written."""
    description = description or _description()
    table = TableFolder(folder)
    table.open(description)
    generator = torch.Generator().manual_seed(0)
    for chunk, start in enumerate(range(0, len(PROMPTS), 2)):
        size = len(PROMPTS[start:start + 2])
        pieces = {features_name(chunk): {"tokens": torch.randn(size, 3, WIDTH, generator=generator).half(),
                                         "mask": torch.ones(size, 3, dtype=torch.bool)}}
        for seed in (0, 1):
            for steps in (2, 4):
                pieces[unit_name(chunk, seed, steps)] = {"iqs": torch.rand(size, generator=generator),
                                                         "time_s": torch.full((size,), 0.1)}
        for name, tensors in pieces.items():
            table.write(name, damage(name, tensors) if damage else tensors)
    return folder


def _in_piece(piece, change):
    def damage(name, tensors):
        return change(dict(tensors)) if name == piece else tensors
    return damage


def _set(key, value):
    def change(tensors):
        tensors[key] = value(tensors[key]) if callable(value) else value
        return tensors
    return change


def _poison_iqs(value):
    return _set("iqs", lambda t: torch.cat([t[:1], torch.tensor([value])]))


def _description_file(text):
    def make(folder):
        _write_table(folder)
        (folder / "table.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        return folder
    return make


_RELEASE_AFTER_60_S = ("import os, sys, time\ntime.sleep(60)\ntry:\n"
                       "    os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))\nexcept OSError:\n    pass\n")
_releasers: list[subprocess.Popen] = []


@pytest.fixture(autouse=True, scope="module")
def _stop_releasers():
    yield
    for releaser in _releasers:
        releaser.kill()
        releaser.wait()


def _fifo_piece(folder):
    """A FIFO in place of a piece. A reader blocked on it inside safetensors holds the GIL, out of reach of the alarm
    and of threads, so another process opens and closes it after 60 s: the read ends and the test fails instead of
    hanging."""
    piece = _write_table(folder) / "units" / "c00001-s0-o4.safetensors"
    piece.unlink()
    os.mkfifo(piece)
    _releasers.append(subprocess.Popen([sys.executable, "-c", _RELEASE_AFTER_60_S, str(piece)]))
    return folder


LAST = "c00002"  # the last chunk holds one prompt
TABLE_CASES = {
    "iqs-nan": (lambda d: _write_table(d, _in_piece("c00001-s1-o4.safetensors", _poison_iqs(math.nan))),
                "c00001-s1-o4.safetensors: 'iqs' holds NaN or Inf"),
    "iqs-+inf": (lambda d: _write_table(d, _in_piece("c00000-s0-o2.safetensors", _poison_iqs(math.inf))),
                 "c00000-s0-o2.safetensors: 'iqs' holds NaN or Inf"),
    "time-nan": (lambda d: _write_table(d, _in_piece("c00000-s0-o2.safetensors",
                                                     _set("time_s", torch.tensor([0.1, math.nan])))),
                 "'time_s' holds NaN or Inf"),
    "iqs-too-many-rows": (lambda d: _write_table(d, _in_piece("c00001-s0-o2.safetensors",
                                                              _set("iqs", torch.rand(3)))),
                          "c00001-s0-o2.safetensors: 'iqs' has shape (3,), the chunk has 2 prompts"),
    "iqs-missing": (lambda d: _write_table(d, _in_piece(f"{LAST}-s0-o2.safetensors",
                                                        lambda t: {"time_s": t["time_s"]})),
                    f"{LAST}-s0-o2.safetensors: has no 'iqs'"),
    "score-names-differ": (lambda d: _write_table(d, _in_piece("c00001-s1-o2.safetensors",
                                                               _set("clip", torch.rand(2)))),
                           "c00001-s1-o2.safetensors: holds the scores ['clip', 'iqs', 'time_s']"),
    "score-names-differ-in-the-first-piece": (lambda d: _write_table(d, _in_piece("c00000-s0-o2.safetensors",
                                                                                  _set("clip", torch.rand(2)))),
                                              "c00000-s0-o2.safetensors: holds the scores ['clip', 'iqs', 'time_s'], "
                                              "other pieces ['iqs', 'time_s']"),
    "features-width": (lambda d: _write_table(d, _in_piece(features_name(1), _set("tokens", torch.zeros(2, 3, 16)))),
                       "c00001-features.safetensors: token states 16 wide, the first chunk's are 8"),
    "features-rows": (lambda d: _write_table(d, _in_piece(features_name(1), lambda t: {
        "tokens": torch.zeros(3, 4, WIDTH), "mask": torch.ones(3, 4, dtype=torch.bool)})),
        "c00001-features.safetensors: holds 3 rows, its chunk has 2 prompts"),
    "features-pooled-1d": (lambda d: _write_table(d, _in_piece(features_name(1), _set("pooled", torch.zeros(2)))),
                           "c00001-features.safetensors: holds 2 rows, its chunk has 2 prompts"),
    **{f"features-{what}": (lambda d, change=change: _write_table(d, _in_piece(features_name(1), change)),
                            "c00001-features.safetensors: no [prompts, tokens, width] token states with their mask")
       for what, change in {"no-tokens": lambda t: {"mask": t["mask"]}, "no-mask": lambda t: {"tokens": t["tokens"]},
                            "tokens-2d": lambda t: {"tokens": t["tokens"][:, :, 0], "mask": t["mask"]}}.items()},
    # a score's name is cut at 40 characters in messages: 41 is one too many
    "score-name-41-wrong-shape": (lambda d: _write_table(d, _in_piece("c00000-s0-o2.safetensors",
                                                                      _set("z" * 41, torch.zeros(3)))),
                                  "c00000-s0-o2.safetensors: 'zzzzzzzzzzzzzzzzzzzz...zzzzzzzzzz (41 characters)' has "
                                  "shape (3,)"),
    "score-name-41-nan": (lambda d: _write_table(d, _in_piece("c00000-s0-o2.safetensors",
                                                              _set("z" * 41, torch.tensor([0.0, math.nan])))),
                          "c00000-s0-o2.safetensors: 'zzzzzzzzzzzzzzzzzzzz...zzzzzzzzzz (41 characters)' holds NaN"),
    "features-pooled-in-one-chunk": (lambda d: _write_table(d, _in_piece(features_name(2),
                                                                         _set("pooled", torch.zeros(1, 4)))),
                                     f"{LAST}-features.safetensors: its pooled vector differs"),
    "features-nan": (lambda d: _write_table(d, _in_piece(features_name(0), _set(
        "tokens", lambda t: t.index_fill(2, torch.tensor([3]), math.nan)))), "token states hold NaN or Inf"),
    "features-pooled-nan": (lambda d: _write_table(d, _in_piece(features_name(0), _set(
        "pooled", torch.tensor([[0.0, math.nan], [0.0, 0.0]])))),
        "c00000-features.safetensors: the pooled vector hold NaN or Inf"),
    "piece-damaged": (lambda d: (_write_table(d) / "units" / "c00001-s0-o4.safetensors").write_bytes(b"junk") and d,
                      "c00001-s0-o4.safetensors: this piece of the reward table is damaged (Error while deserializing"),
    "piece-fifo": (_fifo_piece, "c00001-s0-o4.safetensors: is a FIFO (named pipe), not a regular file"),
    "piece-missing": (lambda d: (_write_table(d) / "units" / "c00001-s0-o4.safetensors").unlink() or d,
                      "the reward table is unfinished"),
    "json-nested": (_description_file('{"prompts": ' + NESTED + "}"), "table.json: JSON nested 10001 levels"),
    "json-5000-digits": (_description_file('{"batch_size": ' + "1" * 5000 + "}"), "table.json: holds a 5000-digit"),
    "json-NaN": (_description_file('{"batch_size": NaN}'), "table.json: holds NaN"),
    "json-not-utf8": (_description_file(b'{"\xff": 1}'), "table.json: is not UTF-8"),
    "json-a-list": (_description_file("[]"), "not a version-1 AdaDiff reward table"),
    "json-other-version": (lambda d: _write_table(d, description=_description(version=99)),
                           "table: not a version-1 AdaDiff reward table; generate it again with this version"),
    "json-missing": (lambda d: _write_table(d) and (d / "table.json").unlink() or d,
                     "table: no reward table here (table.json is missing); make one with `adadiff-train generate`"),
    "json-fifo": (lambda d: _write_table(d) and (d / "table.json").unlink() or os.mkfifo(d / "table.json") or d,
                  "table.json: is a FIFO"),
    "json-prompts-not-texts": (lambda d: _write_table(d, description=_description(prompts=[1, 2, 3, 4, 5])),
                               "table.json: damaged ('prompts' must be a list of texts)"),
    "json-options-texts": (lambda d: _write_table(d, description=_description(options=["2", "4"])),
                           "'options' must be a list of whole numbers"),
    "json-seeds-texts": (lambda d: _write_table(d, description=_description(seeds=["0", "1"])),
                         "damaged ('seeds' must be a list of whole numbers)"),
    "json-batch-size-missing": (lambda d: _write_table(d, description=_description(batch_size=None)),
                                "'batch_size' must be a whole number"),
    # what the policy file records from the table: once a traceback from fit
    **{f"json-{key}-{kind}": (lambda d, key=key, value=value: _write_table(d, description=_description(**{key: value})),
                              f"table.json: damaged ('{key}' must be an object")
       for key, kind, value in (("model", "a-string", "tiny"),
                                ("model", "fingerprint-a-number", {"model_family": "t", "name": "t", "fingerprint": 0}),
                                ("model", "family-a-number", {"model_family": 5, "name": "t", "fingerprint": "t"}),
                                ("sampling", "a-list", ["ddim"]), ("reward", "null", None),
                                ("reward", "name-a-number", {"name": 5}))},
    "json-duplicated-prompt": (lambda d: _write_table(d, description=_description(
        prompts=PROMPTS[:4] + [PROMPTS[1]])), "prompt 1 and prompt 4 are the same ('a blue ball')"),
}


def test_a_prompt_file_of_many_short_lines_is_refused_without_blowing_up_memory(tmp_path):
    """32 MB of two-letter lines (11 million) grew the reader by 2.65 GB as text; the line count is checked first."""
    path = tmp_path / "p.txt"
    path.write_bytes(b"ab\n" * (11 * 2**20))
    printed, grew_mb = peak_growth_of_refusal(
        "from adadiff.trainer.prompts import read_prompts\nfrom adadiff.trainer.config import TrainerInputError",
        "read_prompts", "TrainerInputError", path, timeout=300)
    assert "refused:" in printed and "more than 1000000 lines" in printed, printed
    assert grew_mb < 200, f"refusing a prompt file of short lines raised peak memory by {grew_mb:.0f} MB"


@pytest.mark.parametrize("case", TABLE_CASES)
def test_every_damaged_reward_table_is_refused_naming_the_piece(tmp_path, capsys, case):
    make, words = TABLE_CASES[case]
    folder = make(tmp_path / "table")
    with pytest.raises(TrainerInputError) as error:
        load_table(folder)
    assert words in str(error.value)
    code = cli.main(["fit", "--table", str(folder), "--out", str(tmp_path / "p.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("keys", [("model",), ("sampling",), ("reward",), ("model", "reward")])
def test_fit_refuses_a_table_that_does_not_record_what_the_policy_file_records(tmp_path, capsys, keys):
    """A table.json without the model, sampling or reward is loadable, but fit would write a policy without them:
    exit 2 naming table.json and the fields (once a KeyError traceback)."""
    description = {name: value for name, value in _description().items() if name not in keys}
    folder = _write_table(tmp_path / "table", description=description)
    code = cli.main(["fit", "--table", str(folder), "--out", str(tmp_path / "p.safetensors")])
    err = capsys.readouterr().err
    named = ", ".join(f"'{key}'" for key in keys)
    assert code == 2 and "Traceback" not in err, err
    assert (f"the reward table's table.json records no {named}, which the policy file records: the table is damaged; "
            "delete the folder and generate it again") in err, err
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("family", ["left-out", None])
def test_a_table_whose_model_family_is_unknown_makes_a_policy_that_says_so(tmp_path, family):
    """'model_family' null or left out (a model the trainer could not place): the table loads and fits, and the
    policy records the family as unknown."""
    model = {"name": "tiny", "fingerprint": "sha256:0", **({} if family == "left-out" else {"model_family": family})}
    folder = _write_table(tmp_path / "table", description=_description(model=model))
    out = tmp_path / "p.safetensors"
    assert cli.main(["fit", "--table", str(folder), "--out", str(out), "--max-updates", "2"]) == 0
    assert read_metadata(out)["info"]["model_family"] is None


@pytest.mark.parametrize("case", ["piece-damaged", "piece-fifo"])
def test_a_damaged_piece_says_how_to_make_it_again(tmp_path, case):
    folder = TABLE_CASES[case][0](tmp_path / "table")
    with pytest.raises(TrainerInputError, match="delete it and rerun the same generate command to make it again$"):
        load_table(folder)


def test_a_long_library_error_is_cut_to_120_characters(tmp_path):
    """safetensors quotes a header's unknown dtype in full (600 characters here): the message keeps its first 60 and
    last 30 characters."""
    folder = _write_table(tmp_path / "table")
    piece = folder / "units" / "c00001-s0-o4.safetensors"
    data = piece.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header["iqs"]["dtype"] = "Q" * 300
    encoded = json.dumps(header).encode()
    piece.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size:])
    with pytest.raises(TrainerInputError, match=r"is damaged \(.{60}\.\.\..{30} \(\d+ characters\)\); delete it"):
        load_table(folder)


def test_the_undamaged_table_loads(tmp_path):
    table = load_table(_write_table(tmp_path / "table"))
    assert table.iqs.shape == (5, 2, 2) and table.features.tokens.shape == (5, 3, WIDTH)
    assert table.description == _description()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(piece=st.sampled_from([unit_name(c, s, o) for c in range(3) for s in (0, 1) for o in (2, 4)]),
       key=st.sampled_from(["iqs", "time_s"]), value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_any_non_finite_score_in_any_piece_is_refused_naming_it(tmp_path_factory, piece, key, value):
    folder = _write_table(tmp_path_factory.mktemp("t") / "table",
                          _in_piece(piece, _set(key, lambda t: t.index_fill(0, torch.tensor([0]), value))))
    with pytest.raises(TrainerInputError, match=f"{piece}: '{key}' holds NaN or Inf"):
        load_table(folder)


# --- settings and prompt files, property-based ----------------------------------------------------------------

toml_values = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=12),
                        st.lists(st.integers(-10, 2000) | st.floats(0, 2000) | st.text(max_size=3), max_size=4),
                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
setting_names = [name for cls in (GenerateSettings, FitSettings, JobSettings) for name in cls.__dataclass_fields__]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(setting_names), value=toml_values)
def test_any_toml_value_is_used_exactly_or_refused_naming_the_flag(name, value):
    for cls in (GenerateSettings, FitSettings, JobSettings):
        if name not in cls.__dataclass_fields__:
            continue
        try:
            built = build_settings(cls, {name: value})
        except TrainerInputError as error:
            assert f"--{name.replace('_', '-')}" in str(error)
            continue
        used = getattr(built, name)
        if type(value) in (int, float) and not isinstance(used, tuple):
            assert math.isfinite(used) and used == type(used)(value)  # used as given
            assert type(used) is float or type(value) is int  # a whole-number setting never truncates 8.5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([".txt", ".jsonl", ".csv"]), data=st.binary(max_size=200) | st.text(max_size=200).map(
    str.encode))
def test_any_prompt_file_gives_prompts_or_a_clear_error(tmp_path, kind, data):
    path = tmp_path / f"prompts{kind}"
    path.write_bytes(b"prompt\n" + data if kind == ".csv" else data)
    try:
        prompts = read_prompts(path).prompts
    except TrainerInputError as error:
        assert str(path) in str(error)
        return
    assert prompts and all(p.strip() and "\n" not in p and "\r" not in p for p in prompts)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_config_file_gives_settings_or_a_clear_error(tmp_path, data):
    path = tmp_path / "settings.toml"
    path.write_bytes(data)
    try:
        read_config_file(path)
    except TrainerInputError as error:
        assert str(path) in str(error)


@pytest.mark.parametrize("index, words", [("{oops", "model_index.json: is not valid JSON"),
                                          ("[1]", "holds a None; supported pipelines"),
                                          ('{"_class_name": ' + NESTED + "}", "model_index.json: JSON nested")])
def test_a_broken_model_index_is_refused_naming_the_file(tmp_path, capsys, index, words):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(index)
    code = cli.main(["generate", "--model", str(model), "--prompts", str(GOOD_PROMPTS(tmp_path)), "--out",
                     str(tmp_path / "t"), "--reward", "toy"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "--model" in err, err
