"""The core and the trainer import no host module, so they run anywhere (and a host can't break them)."""
import subprocess
import sys

HOST_MODULES = ("comfy", "comfy_api", "folder_paths", "modules", "gradio", "nodes", "execution", "server")


def test_policy_and_trainer_import_no_host_modules():
    code = (
        "import sys, adadiff.policy, adadiff.trainer\n"
        f"leaked = [m for m in sys.modules if m.split('.')[0] in {HOST_MODULES!r}]\n"
        "print(','.join(leaked))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_package_root_imports_outside_comfyui():
    result = subprocess.run([sys.executable, "-c", "import adadiff; print(adadiff.__name__)"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
