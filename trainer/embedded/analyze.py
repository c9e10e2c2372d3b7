"""Is the embedded model's prompt -> steps signal real? Measured on held-out prompts and two seeds.

    python -m adadiff.trainer.embedded.analyze --out DIR

Renders every held-out prompt at each step option from the same noise per (prompt, seed), scores all images with
ToyIQS, and writes DIR/analysis.json, DIR/grid.png and the raw scores DIR/scores.pt (reused by --reuse-scores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .checker import PROPERTIES
from .grid import save_grid
from .model import MODEL_DIR, load_embedded_pipeline
from .sampling import GUIDANCE_SCALE, STEP_OPTIONS, render_steps
from .scorer import CLEAN_TOLERANCE, ToyIQS, alignment_components
from .split import held_out_prompts
from .world import detail_level, parse_caption, render_batch

ORACLE_TOLERANCE = 0.01  # an option is good enough when its IQS is within 1% of the prompt's best


def oracle_indices(iqs: np.ndarray, tolerance: float = ORACLE_TOLERANCE) -> np.ndarray:
    """[P, O] IQS -> index of the fewest steps whose IQS is within `tolerance` (relative) of the row's best."""
    good = iqs >= (1 - tolerance) * iqs.max(axis=1, keepdims=True)
    return good.argmax(axis=1)


def share_explained_by_prompt(values: np.ndarray) -> float:
    """1 - within-prompt sum of squares / total sum of squares, for values [P, seeds]."""
    total = ((values - values.mean()) ** 2).sum()
    within = ((values - values.mean(axis=1, keepdims=True)) ** 2).sum()
    return float(1 - within / total) if total > 0 else 0.0


def fixed_budget_iqs(iqs: np.ndarray, options: np.ndarray, mean_steps: float) -> np.ndarray:
    """Per-prompt IQS [P] of a fixed step count with the given mean: a mix of the two neighbouring options."""
    hi = int(np.clip(np.searchsorted(options, mean_steps), 1, len(options) - 1))
    weight_hi = (mean_steps - options[hi - 1]) / (options[hi] - options[hi - 1])
    return (1 - weight_hi) * iqs[:, hi - 1] + weight_hi * iqs[:, hi]


def shuffled_choice_iqs(iqs: np.ndarray, chosen: list[np.ndarray], permutations: int = 50) -> np.ndarray:
    """Per-prompt IQS [P] of a random policy with the oracle's step distribution: the choices made on one seed,
    handed to randomly permuted prompts and scored on the other seed (mean over fixed-seed permutations)."""
    rng = np.random.default_rng(0)
    rows = np.arange(iqs.shape[0])
    total = np.zeros(iqs.shape[0])
    for _ in range(permutations):
        for a in (0, 1):
            total += iqs[rows, 1 - a, chosen[a][rng.permutation(len(rows))]]
    return total / (2 * permutations)


def cross_seed_oracle(iqs: np.ndarray, options: np.ndarray) -> dict:
    """Steps chosen per prompt on one seed, scored on the other (both directions); iqs is [P, 2, O].

    Compared with a fixed step count of the same mean (the issue's criterion) and with a random policy of the same
    step distribution (the method's key control: when steps depend on IQS curves that are steep, a mix of few and
    many steps can beat the fixed middle even if the choice carries no information about the prompt)."""
    chosen = [oracle_indices(iqs[:, a]) for a in (0, 1)]
    rows = np.arange(iqs.shape[0])
    scored = np.stack([iqs[rows, 1 - a, chosen[a]] for a in (0, 1)], axis=1).mean(1)  # [P]
    shuffled = shuffled_choice_iqs(iqs, chosen)
    steps = np.stack([options[chosen[a]] for a in (0, 1)], axis=1).mean(1)
    mean_steps = float(steps.mean())
    fixed = np.stack([fixed_budget_iqs(iqs[:, b], options, mean_steps) for b in (0, 1)], axis=1).mean(1)
    at_max = iqs[:, :, -1].mean(1)
    difference = scored - fixed
    drop = (at_max - scored) / at_max.mean()
    se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x)))  # noqa: E731
    return {
        "mean_steps": mean_steps,
        "saving_pct": 100 * (1 - mean_steps / options[-1]),
        "iqs": float(scored.mean()),
        "iqs_max_option": float(at_max.mean()),
        "iqs_drop_pct": float(100 * drop.mean()),
        "fixed_same_mean_iqs": float(fixed.mean()),
        "advantage_over_fixed": float(difference.mean()),
        "advantage_in_se": float(difference.mean() / se(difference)) if se(difference) > 0 else 0.0,
        "shuffled_same_distribution_iqs": float(shuffled.mean()),
        "advantage_over_shuffled": float((scored - shuffled).mean()),
        "advantage_over_shuffled_in_se": float((scored - shuffled).mean() / se(scored - shuffled))
        if se(scored - shuffled) > 0 else 0.0,
        "se": {"iqs": se(scored), "fixed_same_mean_iqs": se(fixed), "advantage_over_fixed": se(difference),
               "advantage_over_shuffled": se(scored - shuffled), "iqs_drop_pct": 100 * se(drop)},
    }


def by_step_means(values: np.ndarray, options: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float]:
    """Mean of [P, seeds, O] values per step option, over all prompts or the selected rows."""
    chosen = values if rows is None else values[rows]
    return {str(s): float(chosen[:, :, j].mean()) if len(chosen) else float("nan") for j, s in enumerate(options)}


def summarise(scores: dict[str, np.ndarray], truth: dict[str, np.ndarray], prompts: list[str],
              options: np.ndarray) -> dict:
    """All figures of analysis.json from scores [P, seeds, O] and ground-truth alignment parts [P, seeds]."""
    iqs = scores["iqs"]
    accuracy = {key: {"largest_option": float(scores[key][:, :, -1].mean()), "ground_truth": float(truth[key].mean())}
                for key in (*PROPERTIES, "alignment")}
    for key, row in accuracy.items():
        row["ratio"] = row["largest_option"] / row["ground_truth"] if row["ground_truth"] > 0 else 0.0
    levels = np.array([detail_level(p) for p in prompts])
    grainy = np.array([parse_caption(p).has_grain() for p in prompts])
    by_steps = {level: {str(s): float(iqs[levels == level][:, :, j].mean()) for j, s in enumerate(options)}
                for level in ("simple", "medium", "detailed") if (levels == level).any()}
    oracle = np.stack([options[oracle_indices(iqs[:, s])] for s in range(iqs.shape[1])], axis=1)
    step_gap = np.abs(oracle[:, 0] - oracle[:, 1])
    option_width = options[1] - options[0]
    return {
        "n_prompts": len(prompts), "n_seeds": iqs.shape[1], "step_options": options.tolist(),
        "oracle_tolerance_relative": ORACLE_TOLERANCE,
        "checker_accuracy": accuracy,
        "iqs_max_option_vs_truth": accuracy["alignment"]["ratio"],
        "mean_iqs_by_steps": {"all": {str(s): float(iqs[:, :, j].mean()) for j, s in enumerate(options)}, **by_steps},
        "prompts_per_complexity": {level: int((levels == level).sum()) for level in by_steps},
        **{f"mean_{part}_by_steps": by_step_means(scores[part], options, rows)
           for part, rows in (("alignment", None), ("fidelity", None), ("cleanliness", None), ("grain", grainy))},
        "oracle_mean_steps_by_complexity": {level: float(oracle[levels == level].mean()) for level in by_steps},
        "oracle_mean_steps_grainy_or_not": {"grainy": float(oracle[grainy].mean()) if grainy.any() else None,
                                            "not_grainy": float(oracle[~grainy].mean()) if (~grainy).any() else None},
        "oracle_seed_agreement_exact": float((step_gap == 0).mean()),
        "oracle_seed_agreement": float((step_gap <= option_width).mean()),
        "oracle_variance_explained": share_explained_by_prompt(oracle.astype(float)),
        "cross_seed_oracle": cross_seed_oracle(iqs, options),
    }


def score_all(scorer: ToyIQS, images: torch.Tensor, prompts: list[str]) -> dict:
    """images [P, O, 3, H, W] -> dict of [P, O] arrays."""
    n_prompts, n_options = images.shape[:2]
    flat_prompts = [p for p in prompts for _ in range(n_options)]
    parts = scorer.score(images.reshape(-1, *images.shape[2:]), flat_prompts)
    return {k: v.numpy().reshape(n_prompts, n_options) for k, v in parts.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for analysis.json, grid.png, scores.pt")
    p.add_argument("--model", type=Path, default=MODEL_DIR, help="pipeline folder")
    p.add_argument("--prompts", type=int, default=200, help="number of held-out prompts")
    p.add_argument("--seeds", type=int, nargs=2, default=(0, 1), help="the two noise seeds")
    p.add_argument("--guidance", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance scale")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--reuse-scores", action="store_true", help="recompute figures from OUT/scores.pt")
    args = p.parse_args(argv)
    if not 1 <= args.prompts <= len(held_out_prompts()):
        p.error(f"--prompts must be in 1..{len(held_out_prompts())}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = list(held_out_prompts()[:args.prompts])
    options = np.array(STEP_OPTIONS)
    scorer = ToyIQS()
    cache = args.out / "scores.pt"
    if args.reuse_scores:
        saved = torch.load(cache, weights_only=True)
        scores, truth = ({k: v.numpy() for k, v in saved[part].items()} for part in ("scores", "truth"))
        seconds = saved["seconds"]
    else:
        pipe = load_embedded_pipeline(args.model)
        start = time.time()
        per_seed, truth_per_seed = [], []
        for seed in args.seeds:
            images = render_steps(pipe, prompts, seed, STEP_OPTIONS, args.guidance)
            per_seed.append(score_all(scorer, images, prompts))
            gt = torch.from_numpy(render_batch(prompts, seed)).permute(0, 3, 1, 2)
            truth_per_seed.append({k: v.numpy() for k, v in alignment_components(gt, prompts).items()})
            if seed == args.seeds[0]:
                save_grid(args.out / "grid.png", prompts, images, gt, STEP_OPTIONS)
        seconds = time.time() - start
        scores = {k: np.stack([s[k] for s in per_seed], axis=1) for k in per_seed[0]}
        truth = {k: np.stack([t[k] for t in truth_per_seed], axis=1) for k in truth_per_seed[0]}
        torch.save({"scores": {k: torch.from_numpy(v) for k, v in scores.items()},
                    "truth": {k: torch.from_numpy(v) for k, v in truth.items()}, "prompts": prompts,
                    "seconds": seconds}, cache)
    result = summarise(scores, truth, prompts, options)
    result.update({"model": str(args.model), "guidance_scale": args.guidance, "render_and_score_seconds": seconds,
                   "scorer": {"grain_saturation": scorer.grain_saturation, "alignment_weight": scorer.alignment_weight,
                              "clean_tolerance": CLEAN_TOLERANCE}})
    (args.out / "analysis.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
