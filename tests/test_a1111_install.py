"""install.py, which A1111/Forge run at launch and ComfyUI-Manager after cloning: only what is missing, never torch."""
import importlib.util
import subprocess
import sys
from pathlib import Path

INSTALL = Path(__file__).resolve().parent.parent / "install.py"


def load_install():
    spec = importlib.util.spec_from_file_location("adadiff_install", INSTALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_missing_or_too_old_requirements_are_listed_and_never_torch(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\n"
        "safetensors>=0.4\n"
        "numpy  # inline comment\n"
        "torch>=99\n"
        "torchvision\n"
        "numpy>=9999\n"
        "adadiff-surely-absent-package==1.0\n"
        "another-absent-package; python_version < '3'\n"
    )
    assert load_install().missing_requirements(requirements) == ["numpy>=9999", "adadiff-surely-absent-package==1.0"]


def test_the_projects_own_requirements_are_met_here_and_name_no_torch():
    install = load_install()
    assert install.missing_requirements() == []
    lines = [line.split("#")[0].strip() for line in install.REQUIREMENTS.read_text().splitlines()]
    assert not [line for line in lines if line.lower().startswith(("torch", "torchvision"))]


def test_main_runs_pip_for_the_missing_ones_only(monkeypatch):
    install = load_install()
    calls = []
    monkeypatch.setattr(install, "missing_requirements", lambda: ["pkg-a>=1", "pkg-b"])
    monkeypatch.setattr(subprocess, "check_call", calls.append)
    assert install.main() == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "pkg-a>=1", "pkg-b"]]
    calls.clear()
    monkeypatch.setattr(install, "missing_requirements", lambda: [])
    install.main()
    assert calls == []


def test_runs_as_a_script_when_nothing_is_missing():
    result = subprocess.run([sys.executable, str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stdout
