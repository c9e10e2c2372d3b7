"""Load each policy file once per version on disk, so hosts pick up a retrained file without a restart."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .fileformat import load_policy
from .network import StepPolicy

log = logging.getLogger(__name__)


def file_signature(path: str | Path) -> tuple[int, int]:
    """What identifies one version of a file on disk: modification time and size."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


class PolicyCache:
    """Policies by path; a file is read again when its modification time or size changes."""

    def __init__(self):
        self._loaded: dict[str, tuple[tuple[int, int], StepPolicy]] = {}

    def load(self, path: str | Path) -> StepPolicy:
        path = str(path)
        signature = file_signature(path)
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        policy = load_policy(path)
        self._loaded[path] = (signature, policy)
        log.info("AdaDiff: loaded policy %s (step options %s)", path, ", ".join(map(str, policy.config.options)))
        return policy
