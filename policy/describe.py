"""A policy file's metadata in plain words, for the CLI and the hosts' "about this policy" boxes."""
from __future__ import annotations

from pathlib import Path

from .fileformat import read_metadata
from .network import CALIBRATED_BIASES

MAX_SHOWN_CHARACTERS = 200  # per metadata value: a file cannot fill the screen


def describe(path: Path) -> str:
    """A policy's metadata in plain words (checked as :func:`.load_policy` checks it; text from the file shown
    escaped, so it cannot move the cursor, recolour the terminal or fake lines)."""
    path = Path(path)
    meta = read_metadata(path)
    config, info = meta["config"], meta["info"]
    size_mb = path.stat().st_size / 2**20
    base = info.get("base_model") or {}
    lines = [
        f"AdaDiff policy {printable(path.name)} ({size_mb:.2f} MB, format version {meta['format_version']})",
        f"  step options:   {', '.join(str(o) for o in config['options'])}",
        f"  reads:          {config['token_dim']}-wide token states"
        + (f" and a {config['pooled_dim']}-wide pooled vector" if config["pooled_dim"] else " (no pooled vector)"),
        f"  network:        {config['depth']} attention layers, width {config['width']}, {config['heads']} heads",
        f"  decides by:     {_decision_rule(config)}",
        f"  model family:   {printable(info.get('model_family') or 'not recorded')}",
        f"  base model:     {printable(base.get('name') or 'not recorded')}"
        + (f" (fingerprint {printable(base['fingerprint'])})" if base.get("fingerprint") else ""),
    ]
    for key in ("sampling", "reward", "summary"):
        value = info.get(key)
        text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) and value else "not recorded"
        lines.append(f"  {key + ':':15} {printable(text)}")
    return "\n".join(lines)


def _decision_rule(config: dict) -> str:
    """The objective in words: what the policy's choice promises."""
    if config["objective"] == "quality" and config["calibrated_thresholds_pct"]:
        threshold = config["calibrated_thresholds_pct"][CALIBRATED_BIASES.index(0.0)]
        return (f"predicted quality (at most {config['tolerance_pct']:g}% less IQS than {config['options'][-1]} "
                f"steps on average over held-out prompts: each prompt takes the fewest steps whose predicted loss is "
                f"within {threshold:.3g}%; the quality knob divides the accepted loss by 10 per unit)")
    if config["objective"] == "quality":
        return (f"predicted quality (the fewest steps whose IQS is predicted within {config['tolerance_pct']:g}% of "
                f"{config['options'][-1]} steps; the quality knob divides that by 10 per unit)")
    return "REINFORCE (the paper's objective: the most likely option; the quality knob shifts it)"


def printable(value, limit: int = MAX_SHOWN_CHARACTERS) -> str:
    """``value`` as one line of visible text: control, format and line-separator characters escaped (``\\x1b``,
    ``\\u202e``), and cut to ``limit`` characters."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
