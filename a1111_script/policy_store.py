"""Where the webui finds step policies, and loading each file once per version on disk.

Policies live in the webui's ``models/adadiff/`` and in the extension's own ``policies/`` folder; the controls list
them by file name. A file replaced on disk (new mtime or size) is read again on the next job, so a retrained policy
needs no restart.
"""
from __future__ import annotations

from pathlib import Path

from ..policy import PolicyCache, PolicyFileError, StepPolicy

POLICY_SUFFIX = ".safetensors"
EXTENSION_POLICY_FOLDER = Path(__file__).resolve().parent.parent / "policies"


class PolicyStore:
    """Policy files by name from a list of folders (the first folder wins on a name clash), loaded with a cache."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(folder) for folder in folders]
        self._cache = PolicyCache()

    def names(self) -> list[str]:
        return sorted(self._paths())

    def path(self, name: str) -> Path:
        path = self._paths().get(name)
        if path is None:
            folders = ", ".join(str(folder) for folder in self.folders)
            raise PolicyFileError(f"policy file '{name}' was not found in {folders}; put the {POLICY_SUFFIX} policy "
                                  "there and pick it again (the refresh button re-reads the folders)")
        return path

    def load(self, name: str) -> StepPolicy:
        """The named policy, read from disk only when the file is new or changed since the last read."""
        return self._cache.load(self.path(name))

    def _paths(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix == POLICY_SUFFIX and path.is_file():
                        found.setdefault(path.name, path)
        return found
