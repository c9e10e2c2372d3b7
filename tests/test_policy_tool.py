"""``adadiff_policy.py``: the policy command a ComfyUI or webui user runs from the host's own folder, with the pack in
a folder of any name (here ``custom_nodes/ComfyUI-AdaDiff``) and no ``adadiff`` package importable."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACK = Path("custom_nodes") / "ComfyUI-AdaDiff"


@pytest.fixture
def comfy_root(tmp_path) -> Path:
    """A ComfyUI folder as a user has it: the pack cloned under the usual name, and models/adadiff/."""
    pack = tmp_path / PACK
    pack.mkdir(parents=True)
    for name in ("__init__.py", "adadiff_policy.py"):
        shutil.copy(REPO / name, pack)
    shutil.copytree(REPO / "policy", pack / "policy", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models" / "adadiff").mkdir(parents=True)
    # An importable 'adadiff' that refuses to load: the tool must not depend on the pack being installed.
    poison = tmp_path / "poison" / "adadiff"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the policy tool imported an installed adadiff')\n")
    return tmp_path


def run_tool(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "poison")}
    return subprocess.run([sys.executable, str(PACK / "adadiff_policy.py"), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_init_and_inspect_from_the_comfyui_folder(comfy_root):
    made = run_tool(comfy_root, "init", "--out", "models/adadiff/untrained.safetensors", "--token-dim", "768",
                    "--options", "4,8,12", "--model-family", "sd15")
    assert made.returncode == 0, made.stderr
    assert (comfy_root / "models" / "adadiff" / "untrained.safetensors").is_file()
    shown = run_tool(comfy_root, "inspect", "models/adadiff/untrained.safetensors")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("AdaDiff policy untrained.safetensors")
    assert "step options:   4, 8, 12" in shown.stdout and "model family:   sd15" in shown.stdout


def test_a_bad_file_is_named_with_exit_status_2(comfy_root):
    (comfy_root / "models" / "adadiff" / "broken.safetensors").write_bytes(b"not a policy")
    shown = run_tool(comfy_root, "inspect", "models/adadiff/broken.safetensors")
    assert shown.returncode == 2
    assert "broken.safetensors" in shown.stderr and "Traceback" not in shown.stderr
