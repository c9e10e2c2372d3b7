"""Fix the scorer's grain saturation level from training prompts only (never the held-out split).

    python -m adadiff.trainer.embedded.calibrate

A grainy region counts as fully rendered once its grain is as complete as the model's samples at the largest step
option typically make it: the level printed is the chosen percentile of grain completeness (before saturation) of
training prompts with grain, sampled at the largest option. Copy it into `scorer.GRAIN_SATURATION` before any
policy is judged. The figures by step count are printed for the record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .model import MODEL_DIR, load_embedded_pipeline
from .sampling import GUIDANCE_SCALE, STEP_OPTIONS, render_steps
from .scorer import ToyIQS
from .split import train_prompts
from .world import parse_caption

CALIBRATION_SEED = 7  # noise seed used only here


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=MODEL_DIR, help="pipeline folder")
    p.add_argument("--prompts", type=int, default=400, help="number of training prompts (those with grain are used)")
    p.add_argument("--percentile", type=float, default=10.0, help="percentile of completeness at the largest option")
    p.add_argument("--guidance", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance scale")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_embedded_pipeline(args.model)
    prompts = [c for c in train_prompts(args.prompts, seed=CALIBRATION_SEED) if parse_caption(c).has_grain()]
    steps = [STEP_OPTIONS[0], STEP_OPTIONS[1], STEP_OPTIONS[len(STEP_OPTIONS) // 2], STEP_OPTIONS[-1]]
    images = render_steps(pipe, prompts, CALIBRATION_SEED, steps, args.guidance)
    unsaturated = ToyIQS(grain_saturation=1.0)
    completeness = [unsaturated.score(images[:, j], prompts)["grain"].numpy() for j in range(len(steps))]
    for n_steps, values in zip(steps, completeness):
        print(f"grain completeness at {n_steps:3d} steps ({len(prompts)} training prompts with grain): "
              f"p10 {np.percentile(values, 10):.3f}  median {np.median(values):.3f}")
    level = np.percentile(completeness[-1], args.percentile)
    print(f"grain saturation ({args.percentile:g}th percentile at {steps[-1]} steps): {level:.3f}")


if __name__ == "__main__":
    main()
