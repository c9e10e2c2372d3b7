"""``adadiff-train`` / ``python -m adadiff.trainer``: generate, fit, evaluate, run, demo.

Every check a user can fail (prompt file, settings, output folder, scheduler, reward, model files) runs before the
first image is sampled. Ctrl-C leaves the reward table valid: rerunning the same command continues it.
Multi-process generation: ``accelerate launch --multi_gpu --num_processes N -m adadiff.trainer generate ...`` (or
``run``; on CPU too, see :func:`.generate.process_state`); fitting and evaluating then happen on the main process.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from ..policy import PolicyFileError, load_policy, save_policy
from .config import (FitSettings, GenerateSettings, JobSettings, TrainerInputError, add_flags, build_settings,
                     check_known_keys, read_config_file, setting_names)
from .prompts import read_prompts
from .report import REPORT_FILES, summary_text, write_report

logger = logging.getLogger("adadiff.trainer")

DEMO_OUT = "outputs/demo"
POLICY_FILE = "policy.safetensors"
_INTERRUPTED = 130

_JOB_FLAGS = {
    "generate": {"prompts", "out"},
    "fit": {"table", "out", "force"},
    "evaluate": {"policy", "table", "prompts", "out", "force"},
    "run": {"prompts", "eval_prompts", "heldout_fraction", "out", "force"},
    "demo": {"out", "force"},
}
_SETTINGS = {
    "generate": (GenerateSettings,),
    "fit": (FitSettings,),
    "evaluate": (GenerateSettings,),
    "run": (GenerateSettings, FitSettings),
    "demo": (GenerateSettings, FitSettings),
}
_HELP = {
    "generate": "sample every prompt at every step option and seed, score the images: the reward table",
    "fit": "fit a step policy on a reward table (REINFORCE; never runs the diffusion model)",
    "evaluate": "compare a policy with fixed, matched, random, heuristic and oracle step choices on held-out prompts",
    "run": "generate + fit + evaluate, with held-out prompts",
    "demo": "run on the embedded demo model with its own training and held-out prompts",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adadiff-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in _HELP.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", help="a TOML file holding any of these settings (flags win over it)")
        add_flags(command, JobSettings, only=_JOB_FLAGS[name])
        for settings_class in _SETTINGS[name]:
            add_flags(command, settings_class)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _set_up_logging()
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        from_file = read_config_file(args.config)
        # one file may serve every command (e.g. generate, then fit), so only names no command reads are refused
        check_known_keys(args.config, from_file, setting_names(JobSettings, GenerateSettings, FitSettings))
        return _COMMANDS[args.command](from_file, flags)
    except (TrainerInputError, PolicyFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every finished piece of the reward table is saved; rerun the same command to continue",
              file=sys.stderr)
        return _INTERRUPTED


def _set_up_logging() -> None:
    """Our messages once (main process); the libraries' per-call chatter (e.g. a truncation notice for every batch,
    already said once before sampling) silenced."""
    import diffusers
    import transformers

    from .generate import process_state

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    state = process_state()
    for old in list(logger.handlers):  # main() may run more than once in a process (tests, notebooks)
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if state.is_main_process else logging.ERROR)  # say things once, not per process
    logger.propagate = False


def _generate(from_file: dict, flags: dict) -> int:
    job = build_settings(JobSettings, from_file, flags)
    settings = build_settings(GenerateSettings, from_file, flags)
    prompts = _required_prompts(job.prompts)
    out = _required(job.out, "--out", "the reward table folder to write or continue")
    table = _make_table(settings, prompts, Path(out))
    if table is not None:
        print(_table_summary(table))
    return 0


def _fit(from_file: dict, flags: dict) -> int:
    from .fit import fit_policy, policy_info
    from .table import load_table

    job = build_settings(JobSettings, from_file, flags)
    settings = build_settings(FitSettings, from_file, flags)
    table_folder = _required(job.table, "--table", "the reward table folder made by generate")
    out = _policy_path(_required(job.out, "--out", "the policy .safetensors file to write"), job.force)
    table = load_table(table_folder)
    result = fit_policy(table, settings, info=policy_info(table.description, settings))
    save_policy(result.policy, out)
    summary = result.summary
    print(f"policy {out} ({summary['objective']}): best validation score {summary['val_score']:.4f} at pass "
          f"{summary['best_epoch']} of {summary['epochs']}, {summary['val_mean_steps']:.1f} mean steps on "
          f"{summary['prompts_val']} validation prompts ({summary['fit_seconds']:.0f} s)")
    if "threshold_pct" in summary:
        print(f"  each prompt takes the fewest steps whose predicted loss is within {summary['threshold_pct']:.3g}%: "
              f"the threshold the validation prompts showed keeps {summary['tolerance_pct']:g}% less IQS on average")
    return 0


def _evaluate(from_file: dict, flags: dict) -> int:
    from .evaluate import evaluate_policy
    from .table import load_table

    job = build_settings(JobSettings, from_file, flags)
    out = Path(_required(job.out, "--out", "the folder for the report"))
    _check_writable(out, "--out")
    _refuse_overwrite([out / name for name in REPORT_FILES], job.force)
    policy = load_policy(_required(job.policy, "--policy", "the policy file to evaluate"))
    if job.table is None:  # make the table here, for the policy's own step options and prompt syntax unless told
        defaults = {"options": list(policy.config.options)}
        recorded_syntax = policy.info.get("sampling", {}).get("prompt_syntax")
        if recorded_syntax is not None:
            defaults["prompt_syntax"] = recorded_syntax
        settings = build_settings(GenerateSettings, defaults, from_file, flags)
        made = _make_table(settings, _required_prompts(job.prompts), out / "table")
        if made is None:
            return 0
        table = load_table(out / "table")
    else:
        table = load_table(job.table)
    report = evaluate_policy(policy, table)
    write_report(report, out)
    print(summary_text(report, {"report": str(out / "report.md")}))
    return 0


def _run(from_file: dict, flags: dict) -> int:
    job = build_settings(JobSettings, from_file, flags)
    prompts = _required_prompts(job.prompts)
    if job.eval_prompts is not None:
        eval_prompts = _required_prompts(job.eval_prompts)
    else:
        prompts, eval_prompts = hold_out(prompts, job.heldout_fraction, build_settings(FitSettings, from_file, flags))
    return _run_prompts(prompts, eval_prompts, from_file, flags, job)


def _demo(from_file: dict, flags: dict) -> int:
    demo = embedded_defaults()
    job = build_settings(JobSettings, {"out": DEMO_OUT}, from_file, flags)
    return _run_prompts(demo["train_prompts"], demo["heldout_prompts"], {**demo["settings"], **from_file}, flags, job)


# Sized for the 20-minute budget of `make demo` on 2 CPU cores: each (prompt, seed) costs sum(options) = 275
# guided UNet calls (~1.8 s at guidance 2), so (192 + 128) prompts x 1 seed render in ~10 minutes.
DEMO_TRAIN_PROMPTS = 192
DEMO_HELD_OUT_PROMPTS = 128


def embedded_defaults() -> dict:
    """The demo's model, prompts and settings: the one place that knows the embedded world's API."""
    from .embedded import sampling, split

    return {
        "train_prompts": split.train_prompts(DEMO_TRAIN_PROMPTS),
        "heldout_prompts": list(split.held_out_prompts()[:DEMO_HELD_OUT_PROMPTS]),
        "settings": {"model": "embedded", "reward": "toy", "guidance": sampling.GUIDANCE_SCALE, "batch_size": 32,
                     "seeds": [0]},
    }


def _run_prompts(prompts: list[str], eval_prompts: list[str], from_file: dict, flags: dict, job: JobSettings) -> int:
    """generate (training and held-out tables) + fit + evaluate into ``job.out``."""
    from .evaluate import evaluate_policy
    from .fit import fit_policy, policy_info
    from .table import load_table

    out = Path(_required(job.out, "--out", "the folder for tables, policy and report"))
    eval_prompts = _without_training_prompts(prompts, eval_prompts)
    settings = build_settings(GenerateSettings, from_file, flags)
    fit_settings = build_settings(FitSettings, from_file, flags)
    policy_file = _policy_path(str(out / POLICY_FILE), job.force)
    _refuse_overwrite([out / name for name in REPORT_FILES], job.force)
    made = _make_table(settings, list(prompts) + list(eval_prompts), out / "table", split_at=len(prompts))
    if made is None:  # another process of an accelerate launch: the main one fits and evaluates
        return 0
    table = load_table(out / "table")
    train, held_out = table.subset(range(len(prompts))), table.subset(range(len(prompts), len(table)))
    result = fit_policy(train, fit_settings, info=policy_info(table.description, fit_settings))
    save_policy(result.policy, policy_file)
    report = evaluate_policy(result.policy, held_out)
    if len(table.seeds) >= 2:
        report["seed_split_check"] = _seed_split_check(train, held_out, fit_settings)
    write_report(report, out)
    print(summary_text(report, {"policy": str(policy_file), "report": str(out / "report.md"),
                                "plots": f"{out / 'pareto.png'}, {out / 'steps_by_complexity.png'}"}))
    return 0


def _seed_split_check(train, held_out, fit_settings: FitSettings) -> dict:
    """Fit a second policy on the first half of the seeds only and judge it on the held-out prompts' other seeds:
    seed noise it memorised cannot help it there."""
    from .evaluate import evaluate_policy
    from .fit import fit_policy

    half = len(train.seeds) // 2
    fit_seeds, judged_seeds = list(range(half)), list(range(half, len(train.seeds)))
    policy = fit_policy(train.seed_subset(fit_seeds), fit_settings, show_progress=False).policy
    report = evaluate_policy(policy, held_out.seed_subset(judged_seeds))
    return {"fit_seeds": [train.seeds[i] for i in fit_seeds], "judged_seeds": [train.seeds[i] for i in judged_seeds],
            "mean_steps": report["policy"]["mean_steps"], "saving_pct": report["saving_vs_max"]["steps_pct"],
            "iqs_drop_pct": report["iqs_drop_vs_max_pct"], "verdict": report["verdict"]["summary"]}


def _make_table(settings: GenerateSettings, prompts: list[str], folder: Path, split_at: int | None = None):
    """Check everything, load the model and reward, fill the table; returns the folder (None on non-main processes)."""
    from .generate import generate_table, process_state, warn_about_long_prompts
    from .table import TableFolder

    model = _required(settings.model, "--model", "a diffusers folder, a .safetensors/.ckpt checkpoint or 'embedded'")
    _check_writable(folder, "--out")
    TableFolder(folder).refuse_foreign()
    state = process_state()
    device = state.device if settings.device == "auto" else torch.device(settings.device)
    _checked(lambda: _resolve_scheduler(settings.scheduler), "--scheduler")  # before any weights are read
    reward = _checked(lambda: _build_reward(settings, device), "--reward")
    pipe, info = _checked(lambda: _load_model(model, settings, device), "--model")
    warn_about_long_prompts(pipe, prompts, settings.prompt_syntax)
    if split_at is not None:
        logger.info("reward table for %d training and %d held-out prompts", split_at, len(prompts) - split_at)
    generate_table(pipe, prompts, reward, settings, folder, model=info, state=state)
    return folder if state.is_main_process else None


def _build_reward(settings: GenerateSettings, device: torch.device):
    from .rewards import build_reward

    return build_reward(settings.reward, device=device, options=settings.options, **settings.reward_settings)


def _resolve_scheduler(name: str):
    from .models import resolve_scheduler

    return resolve_scheduler(name)


def _load_model(model: str, settings: GenerateSettings, device: torch.device):
    from .models import load_pipeline, model_info

    pipe = load_pipeline(model, scheduler=settings.scheduler, device=device)
    return pipe, model_info(model, pipe)


def _checked(action, flag: str):
    """Turn the loaders' ValueError / FileNotFoundError into a user error that names the flag."""
    try:
        return action()
    except (ValueError, FileNotFoundError) as error:
        raise TrainerInputError(f"{flag}: {error}") from None


def hold_out(prompts: list[str], fraction: float, fit_settings: FitSettings) -> tuple[list[str], list[str]]:
    """A seeded split of one prompt list into training and held-out prompts."""
    if len(prompts) < 3:
        raise TrainerInputError(f"--prompts holds {len(prompts)} prompt(s); run needs at least 3 (training, "
                                "validation and held-out), or pass --eval-prompts")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(fit_settings.fit_seed)).tolist()
    n_held_out = min(max(1, round(len(prompts) * fraction)), len(prompts) - 2)
    held_out = set(order[:n_held_out])
    return ([p for i, p in enumerate(prompts) if i not in held_out], [p for i, p in enumerate(prompts) if i in held_out])


def _without_training_prompts(prompts: list[str], eval_prompts: list[str]) -> list[str]:
    """Held-out prompts the policy also trained on would flatter it: drop them, loudly."""
    seen = set(prompts)
    kept = [p for p in eval_prompts if p not in seen]
    if len(kept) < len(eval_prompts):
        logger.warning("%d held-out prompt(s) are also training prompts and were left out of the evaluation",
                       len(eval_prompts) - len(kept))
    if not kept:
        raise TrainerInputError("every held-out prompt is also a training prompt; pass other --eval-prompts")
    return kept


def _required_prompts(path: str | None) -> list[str]:
    return list(read_prompts(_required(path, "--prompts", "a .txt, .jsonl or .csv prompt file")).prompts)


def _required(value, flag: str, what: str):
    if value is None:
        raise TrainerInputError(f"{flag} is required: {what}")
    return value


def _policy_path(path: str, force: bool) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise TrainerInputError(f"--out {path}: policy files end in .safetensors")
    _check_writable(path, "--out")
    _refuse_overwrite([path], force)
    return path


def _check_writable(target: Path, flag: str) -> None:
    """Refuse an output (a folder to fill, or a file to replace) that could never be written: under a file, in a
    folder this user cannot write, a name the system refuses. Runs before any model or table loads."""
    try:
        existing = target
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        folder = existing.parent if existing == target and existing.is_file() else existing
        usable = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    except OSError as error:
        raise TrainerInputError(f"{flag} {target}: cannot be used ({error.strerror}); pick another {flag}") from None
    if not folder.is_dir():
        raise TrainerInputError(f"{flag} {target}: {folder} is a file, so nothing can be written under it; pick "
                                f"another {flag}")
    if not usable:
        raise TrainerInputError(f"{flag} {target}: {folder} is not writable for this user; pick another {flag} or "
                                "change the folder's permissions")


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise TrainerInputError(f"{existing[0]} exists and would be overwritten; pass --force to replace it, or "
                                "another --out")


def _table_summary(folder: Path) -> str:
    from .table import load_table

    table = load_table(folder)
    lines = [f"reward table {folder}: {len(table)} prompts x {len(table.seeds)} seeds x {len(table.options)} options"]
    for index, steps in enumerate(table.options):
        lines.append(f"  {steps:4d} steps: IQS {table.iqs[:, :, index].mean():.4f}, "
                     f"{table.time_s[:, :, index].mean():.3f} s/image")
    return "\n".join(lines)


_COMMANDS = {"generate": _generate, "fit": _fit, "evaluate": _evaluate, "run": _run, "demo": _demo}
