"""The step policy: host-independent network, features, decisions and file format.

Imports only torch and safetensors, never ComfyUI or A1111, so every host and the trainer share it.
"""
from .cache import PolicyCache, file_signature
from .decision import QUALITY_BIAS_SCALE, StepChoice, check_features, choose_steps, option_logits
from .errors import FeatureMismatchError, PolicyFileError
from .describe import describe
from .features import PolicyFeatures, policy_features
from .fileformat import FORMAT_VERSION, load_policy, read_metadata, save_policy
from .network import PAPER_OPTIONS, PolicyConfig, StepPolicy, init_policy

__all__ = [
    "FORMAT_VERSION",
    "PAPER_OPTIONS",
    "QUALITY_BIAS_SCALE",
    "FeatureMismatchError",
    "PolicyCache",
    "PolicyConfig",
    "PolicyFeatures",
    "PolicyFileError",
    "StepChoice",
    "StepPolicy",
    "check_features",
    "choose_steps",
    "describe",
    "file_signature",
    "init_policy",
    "load_policy",
    "option_logits",
    "policy_features",
    "read_metadata",
    "save_policy",
]
