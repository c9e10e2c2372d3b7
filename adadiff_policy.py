"""Inspect or create AdaDiff step policies from the host's own folder, whatever this pack's folder is called.

From the ComfyUI folder (or the webui folder, with ``extensions/<folder>/`` instead of ``custom_nodes/<folder>/``)::

    python custom_nodes/ComfyUI-AdaDiff/adadiff_policy.py inspect models/adadiff/my_policy.safetensors
    python custom_nodes/ComfyUI-AdaDiff/adadiff_policy.py init --out models/adadiff/new.safetensors --token-dim 768

It is ``python -m adadiff.policy`` for a pack that is not installed as the ``adadiff`` package: it loads only the
pack's ``policy`` package (torch and safetensors, no host code) by path, under a name no installed package uses.
Neither host runs this file: ComfyUI imports the pack's ``__init__.py`` and the webui its ``scripts/*.py``.
"""
import importlib
import sys
import types
from pathlib import Path

PACKAGE_NAME = "adadiff_policy_tool"


def load_policy_cli() -> types.ModuleType:
    """The pack's ``policy/__main__.py``, imported as part of a package named ``PACKAGE_NAME`` rooted here.

    The package module is made empty rather than executed from ``__init__.py``, which would register the ComfyUI
    nodes when run by a Python that can import ComfyUI.
    """
    root = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0]).resolve() == root:
        del sys.path[0]  # Python put the pack folder first; its generic folder names (policy, nodes) must not shadow
    package = types.ModuleType(PACKAGE_NAME, __doc__)
    package.__path__ = [str(root)]
    sys.modules[PACKAGE_NAME] = package
    return importlib.import_module(f"{PACKAGE_NAME}.policy.__main__")


if __name__ == "__main__":
    sys.exit(load_policy_cli().main())
