"""Install what AdaDiff needs into the host's Python, and only what is missing or too old.

AUTOMATIC1111 and Forge run this file at launch (``launch.run_extension_installer``); ComfyUI-Manager runs it as a
script after cloning the pack. torch and its companions are never installed or upgraded here: the host brings its own
build, and replacing it breaks installs.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
HOST_PACKAGES = {"torch", "torchvision", "torchaudio", "xformers"}


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """The requirement lines of ``path`` that this Python does not satisfy, host packages left out."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare host Python: pip always carries its own copy
        from pip._vendor.packaging.requirements import Requirement

    missing = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.name.lower() in HOST_PACKAGES:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def main() -> int:
    missing = missing_requirements()
    if missing:
        print(f"AdaDiff: installing {', '.join(missing)}")
        subprocess.check_call([sys.executable, "-m", "pip", "install", *missing])
    return 0


if __name__ == "__main__":
    sys.exit(main())
