"""Errors a user can act on: each message names the file, the problem and what to do."""


class PolicyFileError(Exception):
    """A policy file that cannot be used: missing, corrupt, of another format version, or broken inside."""


class FeatureMismatchError(PolicyFileError):
    """The conditioning handed to a policy is not the kind it was trained on (e.g. SDXL policy, SD1.5 prompt)."""


class BadInputError(ValueError):
    """A file or value refused before use (a FIFO, an oversized file, JSON nested too deep); ``kind`` says which
    check failed (``missing``, ``folder``, ``special``, ``too_large``, ``unreadable``, ``invalid``) so callers can
    add the remedy that fits."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind
