"""Fix the scorer's SSIM saturation level from training prompts only (never the held-out split).

    python -m adadiff.trainer.embedded.calibrate

An image counts as converged once it is as close (SSIM) to its long-run sample as a typical image at the largest
step option is; the level printed is the chosen percentile of SSIM(largest option, reference) over training
prompts. Copy it into `scorer.SSIM_SATURATION` before any policy is judged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .model import MODEL_DIR, load_embedded_pipeline
from .sampling import GUIDANCE_SCALE, STEP_OPTIONS, render_steps
from .scorer import REFERENCE_STEPS, ssim
from .split import train_prompts

CALIBRATION_SEED = 7  # noise seed used only here


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=MODEL_DIR, help="pipeline folder")
    p.add_argument("--prompts", type=int, default=200, help="number of training prompts")
    p.add_argument("--percentile", type=float, default=10.0, help="percentile of SSIM at the largest option")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_embedded_pipeline(args.model)
    prompts = train_prompts(args.prompts, seed=CALIBRATION_SEED)
    steps = [STEP_OPTIONS[0], STEP_OPTIONS[len(STEP_OPTIONS) // 2], STEP_OPTIONS[-1], REFERENCE_STEPS]
    images = render_steps(pipe, prompts, CALIBRATION_SEED, steps, GUIDANCE_SCALE)
    for j, n_steps in enumerate(steps[:-1]):
        values = ssim(images[:, j], images[:, -1]).numpy()
        print(f"SSIM to the {REFERENCE_STEPS}-step sample at {n_steps:3d} steps: "
              f"p10 {np.percentile(values, 10):.3f}  median {np.median(values):.3f}")
    level = np.percentile(ssim(images[:, -2], images[:, -1]).numpy(), args.percentile)
    print(f"SSIM saturation ({args.percentile:g}th percentile at {steps[-2]} steps): {level:.3f}")


if __name__ == "__main__":
    main()
