"""The step policy network: self-attention over the prompt's token states, masked pooling, MLP head.

The paper's shape (3 attention layers, pooling, MLP) at a width that keeps the file a few MB and a decision far
below one UNet step. Hosts' CLIP states carry a few huge-magnitude channels, so the input is layer-normalised
before projection.

Two kinds of head, named by ``PolicyConfig.objective``:

* ``reinforce`` (the paper's): one logit per step option; the decision is the argmax.
* ``quality``: the predicted quality loss of each option against the largest one, in percent of its IQS, made
  monotone by construction (every option below the largest adds a non-negative increment to the next one's loss,
  so fewer steps never predict better quality). The decision is the fewest steps whose predicted loss is within
  the tolerance, a number a user can read ("accept up to 1% less IQS").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

PAPER_OPTIONS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)
OBJECTIVES = ("reinforce", "quality")
# Quality knob positions at which `fit` calibrates a quality policy's per-prompt threshold (see `PolicyConfig`).
CALIBRATED_BIASES = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


# Upper bounds that keep a crafted file from making the loader allocate gigabytes.
_SIZE_LIMITS = {"token_dim": 16384, "pooled_dim": 16384, "width": 2048, "depth": 12, "heads": 64, "ff_mult": 8}


def _whole_number(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return value


def _thresholds(values) -> tuple[float, ...]:
    """Calibrated thresholds as a tuple, or a clear refusal: one finite, non-negative number per knob position, never
    growing as the knob asks for more quality (or the knob could lower the steps)."""
    if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                    for v in values):
        raise ValueError(f"calibrated_thresholds_pct must be a list of numbers, got {values!r}"[:200])
    values = tuple(float(v) for v in values)
    if values and (len(values) != len(CALIBRATED_BIASES) or not all(0.0 <= v < float("inf") for v in values)
                   or any(later > earlier for earlier, later in zip(values, values[1:]))):
        raise ValueError(f"calibrated_thresholds_pct must hold {len(CALIBRATED_BIASES)} finite, non-negative, "
                         f"non-increasing numbers, got {values}"[:200])
    return values


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to rebuild the network; saved in the policy file."""

    options: tuple[int, ...] = PAPER_OPTIONS
    token_dim: int = 768
    pooled_dim: int = 0  # 0: the policy reads no pooled vector (A1111 gives none for SD1.x/2.x)
    width: int = 64
    depth: int = 3
    heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.1
    objective: str = "reinforce"  # files written before objectives existed are REINFORCE policies
    tolerance_pct: float = 1.0  # quality objective: accepted loss against the largest option, % of its IQS
    # Quality objective: the threshold on each prompt's predicted loss (%) at each knob position of CALIBRATED_BIASES,
    # chosen on held-out prompts so that their average loss stays within the tolerance at that position. Empty:
    # the threshold is the tolerance itself (files written before calibration existed).
    calibrated_thresholds_pct: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(_whole_number("step option", o) for o in self.options))
        object.__setattr__(self, "calibrated_thresholds_pct", _thresholds(self.calibrated_thresholds_pct))
        for name, limit in _SIZE_LIMITS.items():
            value = _whole_number(name, getattr(self, name))
            if not 0 <= value <= limit:
                raise ValueError(f"{name} must be between 0 and {limit}, got {value}")
        for name in ("dropout", "tolerance_pct"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {type(value).__name__}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 2 <= len(self.options) <= 256:
            raise ValueError(f"a policy needs 2 to 256 step options, got {len(self.options)}")
        if list(self.options) != sorted(set(self.options)) or self.options[0] < 1:
            raise ValueError(f"step options must be distinct positive integers in increasing order, got {self.options}")
        for name in ("token_dim", "width", "depth", "heads", "ff_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0.0 < self.tolerance_pct < 100.0:
            raise ValueError(f"tolerance_pct must be between 0 and 100, got {self.tolerance_pct}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PolicyConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown policy settings {sorted(unknown)}")
        return cls(**values)


class StepPolicy(nn.Module):
    """Logits over step options for a batch of prompts.

    ``info`` holds the file's descriptive metadata (base model, sampler, reward, training summary) and ``source``
    the file it was loaded from, so errors and summaries can name it.
    """

    def __init__(self, config: PolicyConfig, info: dict | None = None, source: str | None = None):
        super().__init__()
        self.config = config
        self.info = dict(info or {})
        self.source = source
        self.token_norm = nn.LayerNorm(config.token_dim)
        self.token_proj = nn.Linear(config.token_dim, config.width)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            dim_feedforward=config.width * config.ff_mult,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(config.width)
        if config.pooled_dim:
            self.pooled_norm = nn.LayerNorm(config.pooled_dim)
            self.pooled_proj = nn.Linear(config.pooled_dim, config.width)
        head_in = config.width * (2 if config.pooled_dim else 1)
        # the quality head predicts n - 1 increments: the largest option's loss against itself is 0 by definition
        outputs = len(config.options) - (config.objective == "quality")
        self.head = nn.Sequential(nn.Linear(head_in, config.width), nn.GELU(), nn.Linear(config.width, outputs))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T, D] fp32, mask [B, T] bool (True = real token), pooled [B, P] or None -> head outputs:
        logits [B, n] (reinforce) or predicted losses [B, n] in % (quality)."""
        return self._from_projected(self.token_proj(self.token_norm(tokens)), mask, pooled)

    def forward_normalised(self, normalised: torch.Tensor, mask: torch.Tensor,
                           pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` for token states already layer-normalised without affine terms (``normalise_tokens``); the
        trainer normalises a table once instead of on every pass. Same function, rounding aside."""
        return self._from_projected(self.token_proj(normalised * self.token_norm.weight + self.token_norm.bias), mask,
                                    pooled)

    def _from_projected(self, x: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        attend = None if bool(mask.all()) else mask[:, None, None, :]  # no mask in the common case: attention skips it
        for layer in self.encoder.layers:
            x = encoder_layer(layer, x, attend)
        x = self.out_norm(x)
        if attend is None:
            summary = x.mean(1)
        else:
            weights = mask.unsqueeze(-1).to(x.dtype)
            summary = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        if self.config.pooled_dim:
            summary = torch.cat([summary, self.pooled_proj(self.pooled_norm(pooled))], -1)
        out = self.head(summary)
        if self.config.objective == "quality":
            return monotone_losses(out)
        return out

    @property
    def name(self) -> str:
        """How messages refer to this policy: its file name, or its base model when never saved."""
        if self.source:
            return Path(self.source).name
        return f"unsaved policy for {self.info.get('model_family', 'unknown model')}"


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
    """``layer(x)`` for a pre-norm layer, written out: at 77 tokens x 64 wide on a CPU core torch's fused inference
    path takes twice as long (0.41 vs 0.20 ms measured); ``attend`` [B, 1, 1, T] is True where a token is real."""
    attention = layer.self_attn
    batch, tokens, width = x.shape
    heads = attention.num_heads
    qkv = nn.functional.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    mixed = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attend)
    x = x + layer.dropout1(attention.out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width)))
    return x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x))))))


def monotone_losses(increments: torch.Tensor) -> torch.Tensor:
    """Raw outputs [B, n-1] -> losses [B, n], non-increasing along the options and 0 at the largest."""
    steps_down = nn.functional.softplus(increments).flip(-1).cumsum(-1).flip(-1)
    return nn.functional.pad(steps_down, (0, 1))


def normalise_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Layer norm without affine terms, as the policy's first step applies it (its affine part stays learnable)."""
    return nn.functional.layer_norm(tokens.float(), tokens.shape[-1:])


def init_policy(config: PolicyConfig, seed: int = 0, info: dict | None = None) -> StepPolicy:
    """A freshly initialised policy; the same seed always gives the same weights."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        policy = StepPolicy(config, info)
    finally:
        torch.random.set_rng_state(generator_state)
    return policy.eval()
