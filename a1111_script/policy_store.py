"""Where the webui finds step policies, and loading each file once per version on disk.

Policies live in the webui's ``models/adadiff/`` and in the extension's own ``policies/`` folder; the controls list
them by file name, and the folders are read again at every request, so a policy copied in while the webui runs is
usable at once (over the API too). A file replaced on disk (new mtime or size) is read again on the next job, so a
retrained policy needs no restart.

Messages name policies by file name and folders as the webui shows them (``models/adadiff``), never by absolute
path: they end up in every saved image's infotext, and a shared picture should not tell the server's folder names.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..policy import PolicyCache, PolicyFileError, StepPolicy, describe, read_metadata
from ..policy.bounded import short_text

POLICY_SUFFIX = ".safetensors"
EXTENSION_POLICY_FOLDER = Path(__file__).resolve().parent.parent / "policies"


class PolicyStore:
    """Policy files by name from labelled folders (the first folder wins on a name clash), loaded with a cache.

    ``folders`` maps how messages name a folder (e.g. ``models/adadiff``) to where it is.
    """

    def __init__(self, folders: dict[str, Path]):
        self.folders = {label: Path(folder) for label, folder in folders.items()}
        self._cache = PolicyCache()

    def names(self) -> list[str]:
        return sorted(self._paths())

    def path(self, name: str) -> Path:
        path = self._paths().get(name)
        if path is None:
            raise PolicyFileError(f"policy file '{name}' was not found in {' or '.join(self.folders)}; put the "
                                  f"{POLICY_SUFFIX} policy there and pick it again (the refresh button next to the "
                                  "policy list re-reads the folders)")
        return path

    def load(self, name: str) -> StepPolicy:
        """The named policy, read from disk only when the file is new or changed since the last read."""
        path = self.path(name)
        with _errors_naming_only(path):
            return self._cache.load(path)

    def describe(self, name: str) -> str:
        """The named policy's metadata in plain words."""
        path = self.path(name)
        with _errors_naming_only(path):
            return describe(path)

    def token_width(self, name: str) -> int:
        """How wide the text conditioning the named policy reads is (768 SD1.x, 1024 SD2.x, 2048 SDXL)."""
        path = self.path(name)
        with _errors_naming_only(path):
            return int(read_metadata(path)["config"]["token_dim"])

    def _paths(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders.values():
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix == POLICY_SUFFIX and path.is_file():
                        found.setdefault(path.name, path)
        return found


@contextlib.contextmanager
def _errors_naming_only(path: Path):
    """Re-raise a policy file's error with its absolute path replaced by the file name, also where the reader
    shortened a long path (first and last characters, so the folder's start would show)."""
    try:
        yield
    except PolicyFileError as error:
        message = str(error).replace(str(path), path.name).replace(short_text(path), path.name)
        raise type(error)(message) from error
