import subprocess
import sys

from adadiff.policy import load_policy


def _run(*args):
    return subprocess.run([sys.executable, "-m", "adadiff.policy", *args], capture_output=True, text=True)


def test_init_then_inspect(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    created = _run("init", "--out", str(path), "--token-dim", "2048", "--pooled-dim", "1280",
                   "--options", "4,8,16", "--seed", "3", "--model-family", "sdxl")
    assert created.returncode == 0, created.stderr
    policy = load_policy(path)
    assert policy.config.options == (4, 8, 16) and policy.config.pooled_dim == 1280
    shown = _run("inspect", str(path))
    assert shown.returncode == 0
    assert "step options:   4, 8, 16" in shown.stdout
    assert "1280-wide pooled vector" in shown.stdout and "sdxl" in shown.stdout
    assert " MB" in shown.stdout


def test_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "p.safetensors"
    assert _run("init", "--out", str(path), "--token-dim", "768").returncode == 0
    again = _run("init", "--out", str(path), "--token-dim", "768")
    assert again.returncode == 2 and "--force" in again.stderr
    assert _run("init", "--out", str(path), "--token-dim", "768", "--force").returncode == 0


def test_init_reports_bad_options_without_traceback(tmp_path):
    result = _run("init", "--out", str(tmp_path / "p.safetensors"), "--token-dim", "768", "--options", "10,5")
    assert result.returncode == 2
    assert "increasing order" in result.stderr and "Traceback" not in result.stderr


def test_inspect_bad_file_prints_error_and_exits_2(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x80\x04garbage")
    result = _run("inspect", str(path))
    assert result.returncode == 2
    assert "pickle" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
