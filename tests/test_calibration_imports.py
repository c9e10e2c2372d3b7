"""What ComfyUI's calibration node imports from the trainer stays light: no diffusers, transformers, open_clip or
accelerate (ComfyUI may lack them, and importing them costs seconds and memory at every start)."""
import subprocess
import sys

HEAVY = ("diffusers", "transformers", "open_clip", "accelerate", "matplotlib")
CALIBRATION_IMPORTS = ("adadiff.trainer.cli", "adadiff.trainer.config", "adadiff.trainer.evaluate",
                       "adadiff.trainer.fit", "adadiff.trainer.generate", "adadiff.trainer.report",
                       "adadiff.trainer.rewards", "adadiff.trainer.table")


def test_the_trainer_pieces_the_calibration_node_uses_import_no_heavy_library():
    code = (
        "import sys, importlib\n"
        f"for name in {CALIBRATION_IMPORTS!r}: importlib.import_module(name)\n"
        "from adadiff.trainer.rewards import build_reward\n"
        "build_reward('convergence', options=(1, 2))\n"
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
