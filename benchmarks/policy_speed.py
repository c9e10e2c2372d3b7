"""Measure a policy's file size and per-prompt decision time (batch 1) on this machine: the network `adadiff-train
fit` writes by default, and the paper's three attention layers.

Prints measured figures only; the targets (file <= 2 MB, decision <= 1 ms median on one core) are stated next to them,
and so are the load average and a reference matrix product (`fit_speed.py`'s), for figures from a loaded machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adadiff.policy import PolicyConfig, choose_steps, init_policy, save_policy
from adadiff.trainer.config import FitSettings
from fit_speed import reference_op_seconds

FAMILIES = {"sd15": (768, 0), "sd2": (1024, 0), "sdxl": (2048, 1280)}


def time_decisions(policy, conditioning, repeats: int) -> list[float]:
    for _ in range(10):  # warm-up
        choose_steps(policy, conditioning)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        choose_steps(policy, conditioning)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (hosts usually leave several)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU; reference op (2048^2 fp32 matmul): "
          f"{1000 * reference_op_seconds():.1f} ms; load average {os.getloadavg()[0]:.2f}")
    fitted = FitSettings()
    for depth in (fitted.policy_depth, 3):
        config = dict(depth=depth, width=fitted.policy_width, objective=fitted.objective)
        print(f"policy {config}{' (what fit writes by default)' if depth == fitted.policy_depth else ''}:")
        for family, (token_dim, pooled_dim) in FAMILIES.items():
            policy = init_policy(PolicyConfig(token_dim=token_dim, pooled_dim=pooled_dim, **config))
            with tempfile.TemporaryDirectory() as folder:
                size_mb = save_policy(policy, Path(folder) / "p.safetensors").stat().st_size / 2**20
            tokens = torch.randn(1, 77, token_dim, dtype=torch.float16)
            conditioning = [[tokens, {"pooled_output": torch.randn(1, pooled_dim or 768, dtype=torch.float16)}]]
            times = time_decisions(policy, conditioning, args.repeats)
            params = sum(p.numel() for p in policy.parameters())
            print(
                f"  {family:5} [1, 77, {token_dim}]{' + pooled ' + str(pooled_dim) if pooled_dim else ''}: "
                f"{params / 1e6:.2f}M params, file {size_mb:.2f} MB (target <= 2), decision median "
                f"{statistics.median(times) * 1e3:.3f} ms, p90 {sorted(times)[int(0.9 * len(times))] * 1e3:.3f} ms "
                f"(target <= 1)"
            )

if __name__ == "__main__":
    main()
