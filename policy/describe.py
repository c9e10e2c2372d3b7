"""A policy file's metadata in plain words, for the CLI and the hosts' "about this policy" boxes."""
from __future__ import annotations

from pathlib import Path

from .fileformat import read_metadata


def describe(path: Path) -> str:
    """A policy's metadata in plain words."""
    meta = read_metadata(path)
    config, info = meta["config"], meta["info"]
    size_mb = path.stat().st_size / 2**20
    base = info.get("base_model") or {}
    lines = [
        f"AdaDiff policy {path.name} ({size_mb:.2f} MB, format version {meta['format_version']})",
        f"  step options:   {', '.join(str(o) for o in config['options'])}",
        f"  reads:          {config['token_dim']}-wide token states"
        + (f" and a {config['pooled_dim']}-wide pooled vector" if config["pooled_dim"] else " (no pooled vector)"),
        f"  network:        {config['depth']} attention layers, width {config['width']}, {config['heads']} heads",
        f"  decides by:     {_decision_rule(config)}",
        f"  model family:   {info.get('model_family', 'not recorded')}",
        f"  base model:     {base.get('name', 'not recorded')}"
        + (f" (fingerprint {base['fingerprint']})" if base.get("fingerprint") else ""),
    ]
    for key in ("sampling", "reward", "summary"):
        value = info.get(key)
        text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) and value else "not recorded"
        lines.append(f"  {key + ':':15} {text}")
    return "\n".join(lines)


def _decision_rule(config: dict) -> str:
    """The objective in words: what the policy's choice promises."""
    if config["objective"] == "quality":
        return (f"predicted quality (the fewest steps whose IQS is predicted within {config['tolerance_pct']:g}% of "
                f"{config['options'][-1]} steps; the quality knob divides that by 10 per unit)")
    return "REINFORCE (the paper's objective: the most likely option; the quality knob shifts it)"
