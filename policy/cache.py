"""Load each policy file once per version on disk, so hosts pick up a retrained file without a restart."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .fileformat import load_policy
from .network import StepPolicy

log = logging.getLogger(__name__)


def file_signature(path: str | Path) -> tuple[int, ...]:
    """What identifies one version of a file on disk: which file (device, inode) and its size, modification and
    change times. A copy or download can carry the old mtime over (``cp -p``, ``os.utime``), but writing or
    replacing a file always gives it a new change time, which nothing but the system clock can set."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class PolicyCache:
    """Policies by path; a file is read again when it changes on disk (see :func:`file_signature`)."""

    def __init__(self):
        self._loaded: dict[str, tuple[tuple[int, ...], StepPolicy]] = {}

    def load(self, path: str | Path) -> StepPolicy:
        path = str(path)
        try:
            signature = file_signature(path)
        except OSError:
            signature = None  # missing, a dangling link, a name too long: load_policy says which, in its own words
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        policy = load_policy(path)
        self._loaded[path] = (signature, policy)
        log.info("AdaDiff: loaded policy %s (step options %s)", path, ", ".join(map(str, policy.config.options)))
        return policy
