"""Where ComfyUI keeps step policies (``models/adadiff/``) and loading each file once per version on disk."""
from __future__ import annotations

import os

import folder_paths

from ..policy import PolicyCache, PolicyFileError, StepPolicy, file_signature

FOLDER_NAME = "adadiff"
POLICY_EXTENSIONS = {".safetensors"}

_cache = PolicyCache()


def register_policy_folder() -> None:
    """Add ``models/adadiff`` to ComfyUI's model folders, keeping any paths an ``extra_model_paths.yaml`` gave, and
    create it, so that users find where policies go.

    Runs at import time: ComfyUI 0.3.x never calls ``ComfyExtension.on_load``.
    """
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    os.makedirs(default, exist_ok=True)
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER_NAME, ([], set()))
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(extensions) | POLICY_EXTENSIONS)


def policy_names() -> list[str]:
    return folder_paths.get_filename_list(FOLDER_NAME)


def policy_folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER_NAME)


def policy_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER_NAME, name)
    if path is None:
        folders = ", ".join(policy_folders())
        raise PolicyFileError(f"policy file '{name}' was not found in {folders}; put the .safetensors policy there "
                              "(a link must point to an existing file) and pick it again")
    return path


def load_cached_policy(name: str) -> StepPolicy:
    """The policy in ``models/adadiff/<name>``, read again only when the file's mtime or size changed."""
    return _cache.load(policy_path(name))


def policy_fingerprint(name: str | None) -> tuple:
    """What ComfyUI compares to decide whether cached node results still hold: the file's identity and version."""
    path = folder_paths.get_full_path(FOLDER_NAME, name) if name else None
    return name, path, file_signature(path) if path else None
