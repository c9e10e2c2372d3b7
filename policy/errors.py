"""Errors a user can act on: each message names the file, the problem and what to do."""


class PolicyFileError(Exception):
    """A policy file that cannot be used: missing, corrupt, of another format version, or broken inside."""


class FeatureMismatchError(PolicyFileError):
    """The conditioning handed to a policy is not the kind it was trained on (e.g. SDXL policy, SD1.5 prompt)."""
