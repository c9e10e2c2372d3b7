"""Make the reward table: every prompt at every step option and seed, from the same initial noise, scored.

Each prompt's initial noise is drawn from a generator seeded by (seed, prompt text), so it is the same for every
option, every batch composition, every process and every rerun: a resumed or multi-process table equals an
uninterrupted one. Work is split into chunks of ``batch_size`` prompts; under ``accelerate launch`` each process
takes every n-th chunk, and all of them write into the same folder (see :mod:`.table`).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..policy import policy_features
from .config import GenerateSettings
from .models import host_conditioning, prompt_token_limit, token_lengths
from .table import (FEATURE_DTYPE, TABLE_FORMAT, TABLE_VERSION, TableFolder, chunk_count, features_name,
                    reference_name, unit_name)

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
    return {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "prompts": list(prompts),
        "options": list(settings.options),
        "seeds": list(settings.seeds),
        "batch_size": settings.batch_size,
        "sampling": {"scheduler": settings.scheduler, "scheduler_class": type(pipe.scheduler).__name__,
                     "guidance": settings.guidance, "size": image_size(pipe, settings),
                     "prompt_syntax": settings.prompt_syntax},
        "model": model,
        "reward": {"name": reward.name, "settings": settings.reward_settings,
                   "reference_steps": reward.reference_steps},
    }


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
    work = [(c, s, [o for o in settings.options if not table.has(unit_name(c, s, o))])
            for c in chunks for s in settings.seeds]
    work = [(c, s, todo) for c, s, todo in work if todo]
    images_to_make = sum(len(_chunk(prompts, c, settings)) * len(todo) for c, s, todo in work)
    if images_to_make:
        _warm_up(pipe, prompts[0], settings)
    with tqdm(total=images_to_make, desc="reward table", unit="img", disable=not (show_progress and state.is_main_process),
              dynamic_ncols=True) as bar:
        for chunk in chunks:
            if not table.has(features_name(chunk)):
                features = _features(pipe, _chunk(prompts, chunk, settings), settings.prompt_syntax)
                table.write(features_name(chunk), features, state.process_index)
        for chunk, seed, todo in work:
            chunk_prompts = _chunk(prompts, chunk, settings)
            references = _references(pipe, table, reward, chunk, seed, chunk_prompts, settings)
            for steps in todo:
                images, seconds = sample(pipe, chunk_prompts, seed, steps, settings)
                scores = reward.score(images, chunk_prompts, references)
                row = {name: value.detach().float().cpu() for name, value in scores.items()}
                row["time_s"] = torch.full((len(chunk_prompts),), seconds / len(chunk_prompts))
                table.write(unit_name(chunk, seed, steps), row, state.process_index)
                bar.update(len(chunk_prompts))
            table.remove(reference_name(chunk, seed))
    state.wait_for_everyone()
    return table


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


def _features(pipe, prompts: list[str], syntax: str) -> dict[str, torch.Tensor]:
    """The policy input of ``prompts`` as the host named by ``syntax`` conditions them: one conditioning entry per
    prompt, so prompts of different chunk counts are padded and masked, each read as the host reads it alone."""
    entries = host_conditioning(pipe, prompts, syntax)
    features = policy_features([[states, {} if pooled is None else {"pooled_output": pooled}]
                                for states, pooled in entries])
    tensors = {"tokens": features.tokens.to(FEATURE_DTYPE), "mask": features.mask}
    if features.pooled is not None:
        tensors["pooled"] = features.pooled.float()
    return tensors


def _references(pipe, table: TableFolder, reward, chunk: int, seed: int, prompts: list[str],
                settings: GenerateSettings) -> torch.Tensor | None:
    """The reward's reference images for this chunk and seed, from disk when a killed run already made them."""
    if not reward.reference_steps:
        return None
    name = reference_name(chunk, seed)
    if table.has(name):
        return table.read(name)["images"]
    images, _ = sample(pipe, prompts, seed, reward.reference_steps, settings)
    table.write(name, {"images": images})
    return images


def _warm_up(pipe, prompt: str, settings: GenerateSettings) -> None:
    """One tiny call first, so lazy set-up inside torch and diffusers does not land in the first measured time."""
    sample(pipe, [prompt], settings.seeds[0], settings.options[0], settings)

