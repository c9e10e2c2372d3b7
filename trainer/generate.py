"""Make the reward table: every prompt at every step option and seed, from the same initial noise, scored.

Each prompt's initial noise is drawn from a generator seeded by (seed, prompt text), so it is the same for every
option, every batch composition, every process and every rerun: a resumed or multi-process table equals an
uninterrupted one. Work is split into chunks of ``batch_size`` prompts; under ``accelerate launch`` each process
takes every n-th chunk, and all of them write into the same folder (see :mod:`.table`).

Filling the table (:func:`fill_table`) only needs something that renders images and policy input for prompts (an
:class:`ImageSource`): the trainer's diffusers pipeline here, ComfyUI's own sampling in the calibration node.

Cost cuts, both exact or recorded as inferred:

* an option at the reward's reference step count is the reference image itself, so it is rendered once;
* ``search="bisect"`` (rewards whose IQS saturates at ``converged_at``, i.e. ``convergence``): per prompt and seed,
  render the fewest-step option and the reference, then bisect the options for the first one that converges. If
  the curve is monotone in steps, every option above it scores ``converged_at`` and every one below less, which is
  all the fit's top-k ranking and the oracle read. Options not rendered get values interpolated linearly in steps
  between their rendered neighbours and ``measured = False`` in the table (:attr:`.table.RewardTable.measured`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..policy import PolicyFeatures, policy_features
from .config import GenerateSettings, TrainerInputError
from .models import host_conditioning, prompt_token_limit, token_lengths
from .table import (FEATURE_DTYPE, MEASURED, TABLE_FORMAT, TABLE_VERSION, TableFolder, chunk_count, features_name,
                    probe_name, reference_name, unit_name)

logger = logging.getLogger(__name__)


def process_state():
    """This process's place in an ``accelerate launch`` (a single process when started plainly).

    Without CUDA the processes talk over gloo; accelerate only starts several CPU processes through its torchrun
    path: ``accelerate launch --multi_gpu --num_processes N`` (its ``--cpu`` flag starts one process).
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def noise_seed(seed: int, prompt: str) -> int:
    """The generator seed of one prompt's initial noise: depends only on the seed and the prompt text."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_size(pipe, settings: GenerateSettings) -> int:
    return settings.size or pipe.unet.config.sample_size * pipe.vae_scale_factor


def describe_table(pipe, prompts: Sequence[str], reward, settings: GenerateSettings, model: dict) -> dict:
    """Everything that decides the table's numbers; a folder is only ever resumed for an identical description."""
    return table_description(prompts, reward, settings, model, {
        "scheduler": settings.scheduler, "scheduler_class": type(pipe.scheduler).__name__,
        "guidance": settings.guidance, "size": image_size(pipe, settings), "prompt_syntax": settings.prompt_syntax})


def table_description(prompts: Sequence[str], reward, settings: GenerateSettings, model: dict, sampling: dict) -> dict:
    """The description of a table made by any image source (``sampling`` says how it samples)."""
    description = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "prompts": list(prompts),
        "options": list(settings.options),
        "seeds": list(settings.seeds),
        "batch_size": settings.batch_size,
        "sampling": sampling,
        "model": model,
        "reward": {"name": reward.name, "settings": settings.reward_settings,
                   "reference_steps": reward.reference_steps},
    }
    if settings.search != "full":  # absent for full tables, so tables made before the setting existed still resume
        description["search"] = settings.search
    return description


def check_search(reward, settings: GenerateSettings) -> None:
    """Refuse a bisecting search for a reward whose IQS never saturates (nothing could be inferred)."""
    if settings.search == "bisect" and (getattr(reward, "converged_at", None) is None or not reward.reference_steps):
        raise TrainerInputError(f"--search bisect needs a reward whose IQS saturates once an image has converged to "
                                f"its reference (convergence); {reward.name} does not: use --search full")


def warn_about_long_prompts(pipe, prompts: Sequence[str], syntax: str = "plain") -> int:
    """Say, before any sampling, which prompts the text encoder will cut and where; returns how many."""
    limit = prompt_token_limit(pipe)
    long_ones = [(i, n) for i, n in enumerate(token_lengths(pipe, prompts)) if n > limit]
    if long_ones:
        shown = ", ".join(f"#{i + 1} ({n} tokens)" for i, n in long_ones[:5])
        cut = ("both the images and the policy's features" if syntax == "plain" else
               f"the images (the policy's features read the whole prompt in chunks, as {syntax} does)")
        logger.warning("%d prompt(s) are longer than the text encoder takes and will be truncated at %d tokens: the "
                       "rest of the prompt is ignored for %s (%s%s)",
                       len(long_ones), limit, cut, shown, ", ..." if len(long_ones) > 5 else "")
    return len(long_ones)


def generate_table(pipe, prompts: Sequence[str], reward, settings: GenerateSettings, folder, *, model: dict,
                   state=None, show_progress: bool = True) -> TableFolder:
    """Fill ``folder`` with the reward table, resuming whatever is already there; returns the folder.

    ``state`` is an ``accelerate.PartialState`` (one is made if None): its process takes every
    ``num_processes``-th chunk. Interrupting (Ctrl-C, kill) at any point leaves a valid, resumable folder.
    """
    check_search(reward, settings)
    if state is None:
        state = process_state()
    table = TableFolder(folder)
    description = describe_table(pipe, prompts, reward, settings, model)
    if state.is_main_process:
        table.open(description)
    state.wait_for_everyone()
    if not state.is_main_process:
        table.open(description, remove_leftovers=False)
    chunks = range(state.process_index, chunk_count(len(prompts), settings.batch_size), state.num_processes)
    source = PipelineSource(pipe, settings)
    planned = planned_steps(table, prompts, reward, settings, chunks)
    with tqdm(total=planned, desc="reward table", unit="step", disable=not (show_progress and state.is_main_process),
              dynamic_ncols=True) as bar:
        fill_table(table, source, prompts, reward, settings, chunks, process=state.process_index,
                   progress=bar.update)
    state.wait_for_everyone()
    return table


class ImageSource(Protocol):
    """What fills a table: images [B, 3, H, W] in [0, 1] (and the seconds they took) and the prompts' policy input."""

    def sample(self, prompts: Sequence[str], seed: int, steps: int) -> tuple[torch.Tensor, float]: ...

    def features(self, prompts: Sequence[str]) -> PolicyFeatures: ...


class PipelineSource:
    """A diffusers pipeline as an image source (the trainer's own models)."""

    def __init__(self, pipe, settings: GenerateSettings):
        self.pipe, self.settings = pipe, settings

    def sample(self, prompts: Sequence[str], seed: int, steps: int) -> tuple[torch.Tensor, float]:
        return sample(self.pipe, prompts, seed, steps, self.settings)

    def features(self, prompts: Sequence[str]) -> PolicyFeatures:
        """As the host named by the prompt syntax conditions them: one conditioning entry per prompt, so prompts of
        different chunk counts are padded and masked, each read as the host reads it alone."""
        entries = host_conditioning(self.pipe, prompts, self.settings.prompt_syntax)
        return policy_features([[states, {} if pooled is None else {"pooled_output": pooled}]
                                for states, pooled in entries])


@dataclass(frozen=True)
class _Reference:
    images: torch.Tensor
    time_s: torch.Tensor  # [B] seconds per image


def planned_steps(table: TableFolder, prompts: Sequence[str], reward, settings: GenerateSettings,
                  chunks: Sequence[int]) -> int:
    """Sampling steps (summed over images) still to run: exact for a full search, the expected count for bisect."""
    return round(sum(_steps_per_image(table, reward, settings, chunk, seed) * len(_chunk(prompts, chunk, settings))
                     for chunk in chunks for seed in settings.seeds))


def _steps_per_image(table: TableFolder, reward, settings: GenerateSettings, chunk: int, seed: int) -> float:
    options = settings.options
    todo = [o for o in options if not table.has(unit_name(chunk, seed, o))]
    if not todo:
        return 0.0
    reference = reward.reference_steps or 0
    if settings.search == "bisect":  # floor, reference, the top option if it is not the reference, ~log2 probes
        inner = options[1:-1]
        probes = math.ceil(math.log2(len(inner) + 1)) * (sum(inner) / len(inner)) if inner else 0.0
        return options[0] + reference + (options[-1] if options[-1] != reference else 0) + probes
    return sum(o for o in todo if o != reference) + reference


def fill_table(table: TableFolder, source: ImageSource, prompts: Sequence[str], reward, settings: GenerateSettings,
               chunks: Sequence[int], *, process: int = 0, progress: Callable[[int], object] = lambda steps: None,
               estimate: bool = True) -> int:
    """Render and score every missing piece of ``chunks``; returns the number of images rendered.

    ``progress`` is called with the sampling steps (summed over images) of every rendering. With ``estimate``, a
    short timed warm-up first logs how long the remaining work should take.
    """
    check_search(reward, settings)
    for chunk in chunks:
        if not table.has(features_name(chunk)):
            table.write(features_name(chunk), feature_tensors(source.features(_chunk(prompts, chunk, settings))),
                        process)
    work = [(chunk, seed) for chunk in chunks for seed in settings.seeds
            if any(not table.has(unit_name(chunk, seed, o)) for o in settings.options)]
    if work and estimate:
        _log_estimate(source, _chunk(prompts, work[0][0], settings), settings,
                      planned_steps(table, prompts, reward, settings, chunks))
    rendered = 0
    for chunk, seed in work:
        chunk_prompts = _chunk(prompts, chunk, settings)
        references, made = _references(source, table, reward, chunk, seed, chunk_prompts, process)
        if made:
            progress(made)
            rendered += len(chunk_prompts)
        fill = _bisect_units if settings.search == "bisect" else _measure_units
        rendered += fill(table, source, reward, settings, chunk, seed, chunk_prompts, references, process, progress)
        table.remove(reference_name(chunk, seed))
    return rendered


def _measure_units(table, source, reward, settings, chunk, seed, prompts, references, process, progress) -> int:
    """Render and score every missing option of one chunk and seed."""
    rendered = 0
    for steps in settings.options:
        if table.has(unit_name(chunk, seed, steps)):
            continue
        images, time_s, new = _render(source, prompts, seed, steps, references, reward, progress)
        rendered += new
        table.write(unit_name(chunk, seed, steps), _scored(reward, images, prompts, references, time_s), process)
    return rendered


def _render(source: ImageSource, prompts, seed, steps, references, reward,
            progress) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images, per-image seconds and how many images were rendered for them: none when the reference was made at
    ``steps`` (it is those images)."""
    if references is not None and steps == reward.reference_steps:
        return references.images, references.time_s, 0
    images, seconds = source.sample(prompts, seed, steps)
    progress(steps * len(prompts))
    return images, torch.full((len(prompts),), seconds / len(prompts)), len(prompts)


def _scored(reward, images, prompts, references, time_s) -> dict[str, torch.Tensor]:
    scores = reward.score(images, list(prompts), None if references is None else references.images)
    row = {name: value.detach().float().cpu() for name, value in scores.items()}
    row["time_s"] = time_s.float()
    return row


def _bisect_units(table, source, reward, settings, chunk, seed, prompts, references, process, progress) -> int:
    """Bisect each prompt's options for the first converged one, then write every option's piece (see module doc).

    Renderings are kept as probe pieces until the chunk is done, so a killed run replays the search from disk.
    """
    options, cap = settings.options, float(reward.converged_at)
    values: dict[str, torch.Tensor] = {}  # name -> [B, O], NaN where not rendered
    measured = torch.zeros(len(prompts), len(options), dtype=torch.bool)

    def record(column: int, rows: torch.Tensor, row_values: dict[str, torch.Tensor]) -> None:
        for name, value in row_values.items():
            values.setdefault(name, torch.full((len(prompts), len(options)), math.nan))[rows, column] = value
        measured[rows, column] = True

    for column, steps in enumerate(options):
        if table.has(probe_name(chunk, seed, steps)):
            probe = table.read(probe_name(chunk, seed, steps))
            rows = probe.pop("rows")
            record(column, rows, probe)
    rendered = 0
    while True:
        targets = next_probes(values.get("iqs"), measured, cap)
        if (targets < 0).all():
            break
        for column in targets.unique().tolist():
            if column < 0:
                continue
            rows = (targets == column).nonzero().flatten()
            steps, subset = options[column], [prompts[i] for i in rows.tolist()]
            subset_references = None if references is None else _Reference(references.images[rows],
                                                                            references.time_s[rows])
            images, time_s, new = _render(source, subset, seed, steps, subset_references, reward, progress)
            rendered += new
            record(column, rows, _scored(reward, images, subset, subset_references, time_s))
            done = measured[:, column].nonzero().flatten()
            table.write(probe_name(chunk, seed, steps),
                        {"rows": done, **{name: value[done, column] for name, value in values.items()}}, process)
    steps = torch.tensor(options, dtype=torch.float64)
    filled = {name: interpolate_unmeasured(value, measured, steps) for name, value in values.items()}
    for column, option in enumerate(options):
        if not table.has(unit_name(chunk, seed, option)):
            table.write(unit_name(chunk, seed, option),
                        {**{name: value[:, column] for name, value in filled.items()}, MEASURED: measured[:, column]},
                        process)
    for option in options:
        table.remove(probe_name(chunk, seed, option))
    return rendered


def next_probes(iqs: torch.Tensor | None, measured: torch.Tensor, cap: float) -> torch.Tensor:
    """Per prompt, the option index to render next, or -1 when its first converged option is pinned down.

    Order: the fewest-step option and the largest (the curve's ends), then bisection between the last option known
    below ``cap`` and the first known at it. A prompt whose largest option never converges gets every option.
    """
    n_options = measured.shape[1]
    targets = torch.full((measured.shape[0],), -1, dtype=torch.long)
    for row in range(measured.shape[0]):
        known = measured[row]
        if not known[0]:
            targets[row] = 0
        elif not known[-1]:
            targets[row] = n_options - 1
        elif iqs[row, -1] < cap:
            missing = (~known).nonzero().flatten()
            targets[row] = missing[0] if len(missing) else -1
        else:
            converged = (known & (iqs[row] >= cap)).nonzero().flatten()
            first = converged[0].item()
            below = known[:first].nonzero().flatten()
            last_below = below[-1].item() if len(below) else -1
            if first - last_below > 1:
                targets[row] = (last_below + first) // 2
    return targets


def interpolate_unmeasured(values: torch.Tensor, measured: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[B, O] values with the unmeasured ones filled linearly in steps between the nearest measured neighbours."""
    filled = values.clone()
    for row in range(values.shape[0]):
        known = measured[row].nonzero().flatten()
        for column in (~measured[row]).nonzero().flatten().tolist():
            left, right = known[known < column][-1].item(), known[known > column][0].item()
            weight = (steps[column] - steps[left]) / (steps[right] - steps[left])
            filled[row, column] = values[row, left] + weight.item() * (values[row, right] - values[row, left])
    return filled


@torch.no_grad()
def sample(pipe, prompts: Sequence[str], seed: int, steps: int, settings: GenerateSettings) -> tuple[torch.Tensor, float]:
    """Images [B, 3, H, W] in [0, 1] on CPU for ``prompts`` at ``steps`` steps, and the seconds the call took."""
    size = image_size(pipe, settings)
    latent_shape = (pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    generators = [torch.Generator().manual_seed(noise_seed(seed, p)) for p in prompts]
    latents = torch.stack([torch.randn(latent_shape, generator=g) for g in generators])
    started = time.perf_counter()
    output = pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=settings.guidance, height=size,
                  width=size, latents=latents.to(pipe.device, pipe.dtype), generator=generators, output_type="pt")
    images = output.images.float().cpu()  # moving to CPU waits for the device, so the time is the real one
    return images, time.perf_counter() - started


def _chunk(prompts: Sequence[str], chunk: int, settings: GenerateSettings) -> list[str]:
    return list(prompts[chunk * settings.batch_size:(chunk + 1) * settings.batch_size])


def feature_tensors(features: PolicyFeatures) -> dict[str, torch.Tensor]:
    """A chunk's policy input as stored in the table (tokens in FEATURE_DTYPE)."""
    tensors = {"tokens": features.tokens.to(FEATURE_DTYPE), "mask": features.mask}
    if features.pooled is not None:
        tensors["pooled"] = features.pooled.float()
    return tensors


def _references(source: ImageSource, table: TableFolder, reward, chunk: int, seed: int, prompts: list[str],
                process: int) -> tuple[_Reference | None, int]:
    """The reward's reference images for this chunk and seed (from disk when a killed run already made them), and
    the sampling steps spent making them now."""
    if not reward.reference_steps:
        return None, 0
    name = reference_name(chunk, seed)
    if table.has(name):
        stored = table.read(name)
        if "time_s" in stored:  # pieces of older versions lack the time: render again
            return _Reference(stored["images"], stored["time_s"]), 0
    images, seconds = source.sample(prompts, seed, reward.reference_steps)
    time_s = torch.full((len(prompts),), seconds / len(prompts))
    table.write(name, {"images": images, "time_s": time_s}, process)
    return _Reference(images, time_s), reward.reference_steps * len(prompts)


def _log_estimate(source: ImageSource, prompts: list[str], settings: GenerateSettings, steps_left: int) -> None:
    """Time two short renderings (after an untimed one that absorbs lazy set-up) and say how long the rest takes."""
    low, high = settings.options[0], settings.options[1]
    source.sample(prompts[:1], settings.seeds[0], low)
    seconds = {steps: source.sample(prompts, settings.seeds[0], steps)[1] for steps in (low, high)}
    per_step = max((seconds[high] - seconds[low]) / (high - low), 0.0) / len(prompts)  # per image and step
    per_image = max(seconds[low] / len(prompts) - per_step * low, 0.0)  # encoding, decoding, set-up
    images = steps_left / (sum(settings.options) / len(settings.options))
    total = steps_left * per_step + images * per_image
    logger.info("reward table: about %d sampling steps over %d images still to run; estimated %s (warm-up: %.4f s per "
                "step and %.3f s per image besides, batches of %d)", steps_left, round(images), _duration(total),
                per_step, per_image, len(prompts))


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
