"""The command line as users run it: kill -9 and resume, two accelerate processes, run end to end, bad inputs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from adadiff.policy import load_policy, read_metadata, save_policy
from adadiff.trainer import cli
from adadiff.trainer.table import TableFolder, load_table
from trainer_fixtures import WORLD_PROMPTS, save_tiny_pipeline

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CONFIG = """options = [2, 4]
seeds = [0, 1]
batch-size = 2
reward = "toy"
guidance = 2.0
device = "cpu"
max-updates = 3
[reward_settings]
grain_saturation = 0.9
"""
UNITS = 3 * 2 * 2  # chunks x seeds x options


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny_pipeline(root / "model")
    (root / "prompts.txt").write_text("\n".join(WORLD_PROMPTS) + "\n")
    (root / "train.txt").write_text("\n".join(WORLD_PROMPTS[:4]) + "\n")
    (root / "heldout.txt").write_text("\n".join(WORLD_PROMPTS[4:]) + "\n")
    (root / "settings.toml").write_text(CONFIG)
    return root


def generate_command(assets, out):
    return ["generate", "--model", str(assets / "model"), "--prompts", str(assets / "prompts.txt"), "--out", str(out),
            "--config", str(assets / "settings.toml")]


@pytest.fixture(scope="module")
def uninterrupted(assets):
    out = assets / "uninterrupted"
    done = subprocess.run([sys.executable, "-m", "adadiff.trainer", *generate_command(assets, out)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"reward table {out}: 6 prompts x 2 seeds x 2 options" in done.stdout
    return out


def same_table(first, second):
    a, b = load_table(first), load_table(second)
    assert a.prompts == b.prompts and torch.equal(a.iqs, b.iqs) and torch.equal(a.features.tokens, b.features.tokens)
    assert a.components.keys() == b.components.keys()
    assert all(torch.equal(a.components[k], b.components[k]) for k in a.components)


def test_kill_9_mid_run_then_the_same_command_continues(assets, uninterrupted):
    out = assets / "killed"
    command = [sys.executable, "-m", "adadiff.trainer", *generate_command(assets, out)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if len(list((out / "units").glob("*-o*.safetensors"))) >= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    folder = TableFolder(out)
    missing = len([n for n in folder.missing_units(folder.read_description()) if "-o" in n])
    assert 0 < missing <= UNITS - 3
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    same_table(out, uninterrupted)


def test_two_accelerate_processes_share_the_work_and_match_one_process(assets, uninterrupted):
    out = assets / "two"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--num_cpu_threads_per_process", "1", "-m", "adadiff.trainer"]
    done = subprocess.run([*launcher, *generate_command(assets, out)], env=ENV, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    writers = set()
    for unit in (out / "units").glob("*.safetensors"):
        with safe_open(str(unit), "pt") as handle:
            writers.add(handle.metadata()["process"])
    assert writers == {"0", "1"}
    same_table(out, uninterrupted)


def test_run_fits_and_evaluates_then_fit_and_evaluate_alone(assets, uninterrupted, capsys):
    out = assets / "run"
    shutil.copytree(uninterrupted, out / "table")  # same prompts and settings: run continues (here: finds it done)
    argv = ["run", "--model", str(assets / "model"), "--prompts", str(assets / "train.txt"), "--eval-prompts",
            str(assets / "heldout.txt"), "--out", str(out), "--config", str(assets / "settings.toml")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "AdaDiff on 2 held-out prompts" in printed and "checks passed" in printed
    for name in ("policy.safetensors", "report.json", "report.md", "choices.csv", "pareto.png",
                 "steps_by_complexity.png"):
        assert (out / name).is_file(), name
    meta = read_metadata(out / "policy.safetensors")
    info = meta["info"]
    assert list(meta["config"]["options"]) == [2, 4] and meta["config"]["token_dim"] == 32
    assert info["model_family"] == "custom" and info["base_model"]["name"] == "model"
    assert info["base_model"]["fingerprint"].startswith("sha256:")
    assert info["sampling"] == {"scheduler": "ddim", "scheduler_class": "DDIMScheduler", "guidance": 2.0,
                                "size": 32, "prompt_syntax": "comfyui", "seeds": [0, 1]}
    assert info["reward"] == {"backend": "toy", "objective": "quality", "tolerance_pct": 1.0,
                              "target": "IQS loss against the largest option, % of its IQS, seed-averaged"}
    assert meta["config"]["objective"] == "quality" and info["summary"]["objective"] == "quality"
    assert info["summary"]["prompts_train"] == 3 and info["summary"]["prompts_val"] == 1
    report = json.loads((out / "report.json").read_text())
    assert report["seed_split_check"]["fit_seeds"] == [0] and report["seed_split_check"]["judged_seeds"] == [1]
    assert "Seed-split check: a policy fitted on seeds [0] only" in (out / "report.md").read_text()
    assert report["cross_seed_oracle"] is not None and "verdict" in report
    assert cli.main(argv) == 2  # a second run would overwrite the policy
    assert "exists and would be overwritten; pass --force" in capsys.readouterr().err
    assert cli.main(["fit", "--table", str(out / "table"), "--out", str(out / "again.safetensors"),
                     "--max-updates", "2", "--objective", "reinforce"]) == 0
    again = read_metadata(out / "again.safetensors")
    assert again["config"]["objective"] == "reinforce" and again["info"]["reward"]["top_k"] == 3
    assert cli.main(["evaluate", "--policy", str(out / "again.safetensors"), "--table", str(out / "table"),
                     "--out", str(out / "eval")]) == 0
    assert "AdaDiff on 6 held-out prompts" in capsys.readouterr().out


def test_fit_says_which_threshold_the_validation_prompts_calibrated(uninterrupted, tmp_path, capsys):
    assert cli.main(["fit", "--table", str(uninterrupted), "--out", str(tmp_path / "p.safetensors"),
                     "--max-updates", "1"]) == 0
    threshold = load_policy(tmp_path / "p.safetensors").config.calibrated_thresholds_pct[4]  # knob 0
    assert (f"each prompt takes the fewest steps whose predicted loss is within {threshold:.3g}%: the threshold the "
            "validation prompts showed keeps 1% less IQS on average") in capsys.readouterr().out


def test_evaluate_reads_held_out_prompts_with_the_policys_prompt_syntax(assets, uninterrupted, tmp_path):
    assert cli.main(["fit", "--table", str(uninterrupted), "--out", str(tmp_path / "p.safetensors"),
                     "--max-updates", "1"]) == 0
    policy = load_policy(tmp_path / "p.safetensors")
    policy.info["sampling"]["prompt_syntax"] = "a1111"  # as if fitted on a table made with --prompt-syntax a1111
    save_policy(policy, tmp_path / "a1111.safetensors")
    assert cli.main(["evaluate", "--policy", str(tmp_path / "a1111.safetensors"), "--model", str(assets / "model"),
                     "--prompts", str(assets / "heldout.txt"), "--out", str(tmp_path / "eval"),
                     "--config", str(assets / "settings.toml")]) == 0
    assert TableFolder(tmp_path / "eval" / "table").read_description()["sampling"]["prompt_syntax"] == "a1111"


def test_evaluate_refuses_to_overwrite_an_evaluation_unless_forced(uninterrupted, tmp_path, capsys):
    assert cli.main(["fit", "--table", str(uninterrupted), "--out", str(tmp_path / "p.safetensors"),
                     "--max-updates", "1"]) == 0
    argv = ["evaluate", "--policy", str(tmp_path / "p.safetensors"), "--table", str(uninterrupted), "--out",
            str(tmp_path / "eval")]
    assert cli.main(argv) == 0
    report = tmp_path / "eval" / "report.json"
    report.write_text("an earlier evaluation")
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "exists and would be overwritten; pass --force" in capsys.readouterr().err
    assert report.read_text() == "an earlier evaluation"
    assert cli.main([*argv, "--force"]) == 0
    assert json.loads(report.read_text())["n_prompts"] == 6


@pytest.fixture
def generate_argv(assets, tmp_path):
    def argv(*extra, prompts=None, model=None):
        return ["generate", "--model", str(model or assets / "model"), "--prompts", str(prompts or
                assets / "prompts.txt"), "--out", str(tmp_path / "table"), "--config", str(assets / "settings.toml"),
                *extra]
    return argv


def run_cli(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--scheduler", "warp9"], "--scheduler: unknown scheduler 'warp9': use one of ddim, dpm++2m"),
    (["--reward", "beauty"], "--reward: unknown reward 'beauty'; known rewards: clip"),
    (["--options", "4,2"], "increasing order"),
])
def test_unknown_names_are_refused_before_sampling(generate_argv, capsys, tmp_path, extra, message):
    code, err = run_cli(generate_argv(*extra), capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "table" / "units").exists()


def test_missing_model_and_missing_weight_files(generate_argv, assets, tmp_path, capsys):
    code, err = run_cli(generate_argv(model=tmp_path / "nowhere"), capsys)
    assert code == 2 and "model not found" in err
    broken = tmp_path / "broken"
    shutil.copytree(assets / "model", broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = run_cli(generate_argv(model=broken), capsys)
    assert code == 2 and "missing weight file" in err and "unet" in err


def test_bad_prompt_files_fail_before_the_model_loads(generate_argv, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red cube\ncaf\xe9\n")
    code, err = run_cli(generate_argv(prompts=bad, model=tmp_path / "not-needed-yet"), capsys)
    assert code == 2 and "line(s) 2 are not UTF-8" in err


def test_long_prompts_are_announced_with_what_happens(generate_argv, capsys):
    assert cli.main(generate_argv()) == 0
    err = capsys.readouterr().err
    assert "1 prompt(s) are longer than the text encoder takes and will be truncated at 14 tokens" in err


def test_foreign_output_folder_unknown_setting_and_missing_flag(generate_argv, tmp_path, capsys, assets):
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "keep.me").write_text("x")
    code, err = run_cli(generate_argv(), capsys)
    assert code == 2 and "is not a reward table; it would be overwritten" in err
    typo = tmp_path / "typo.toml"
    typo.write_text("step_options = [5, 10]\n")
    code, err = run_cli(["generate", "--config", str(typo)], capsys)
    assert code == 2 and "unknown setting(s) ['step_options']" in err
    code, err = run_cli(["generate", "--prompts", str(assets / "prompts.txt"), "--out", str(tmp_path / "t2")], capsys)
    assert code == 2 and "--model is required" in err


def test_ctrl_c_says_how_to_continue(generate_argv, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("adadiff.trainer.generate.generate_table", interrupted)
    code, err = run_cli(generate_argv(), capsys)
    assert code == 130 and "rerun the same command to continue" in err


def test_held_out_split_is_seeded_disjoint_and_never_empty():
    from adadiff.trainer.config import FitSettings, TrainerInputError

    prompts = [f"prompt {i}" for i in range(40)]
    train, held_out = cli.hold_out(prompts, 0.2, FitSettings())
    assert len(held_out) == 8 and sorted(train + held_out) == sorted(prompts)
    assert cli.hold_out(prompts, 0.2, FitSettings()) == (train, held_out)
    assert cli.hold_out(prompts, 0.2, FitSettings(fit_seed=5)) != (train, held_out)
    with pytest.raises(TrainerInputError, match="at least 3"):
        cli.hold_out(prompts[:2], 0.5, FitSettings())


def test_held_out_prompts_seen_in_training_are_left_out(capsys):
    from adadiff.trainer.config import TrainerInputError

    cli._set_up_logging()
    assert cli._without_training_prompts(["a", "b"], ["b", "c"]) == ["c"]
    assert "1 held-out prompt(s) are also training prompts" in capsys.readouterr().err
    with pytest.raises(TrainerInputError, match="every held-out prompt is also a training prompt"):
        cli._without_training_prompts(["a", "b"], ["b"])


def test_demo_refuses_to_overwrite_an_earlier_demo(tmp_path, capsys):
    (tmp_path / "report.json").write_text("{}")
    code, err = run_cli(["demo", "--out", str(tmp_path)], capsys)
    assert code == 2 and "report.json exists and would be overwritten; pass --force" in err


def _subcommands():
    import argparse

    (commands,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(commands.choices)


@pytest.mark.parametrize("command", [[]] + [[name] for name in _subcommands()], ids=lambda c: " ".join(c) or "top")
def test_help_prints_usage_for_the_command_and_every_subcommand(command, capsys):
    """``adadiff-train [command] --help`` prints its usage and exits 0 (a help text's stray % once crashed it)."""
    with pytest.raises(SystemExit) as stop:
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert out.startswith(f"usage: adadiff-train {' '.join(command)}".rstrip()) and "--help" in out
