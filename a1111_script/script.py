"""The AUTOMATIC1111 / Forge scripts: the always-on "AdaDiff" accordion and the "AdaDiff per-prompt steps" entry of
the Script dropdown. Only this module and :mod:`.ui` import the webui's ``modules``; ``scripts/adadiff_steps.py``
imports this one.

The accordion sets ``p.steps`` in ``process_batch``, after the webui has applied styles and removed ``<lora:...>``
tags and before it computes the conditioning and the sampler's schedule, so every sampler, hires fix, img2img and
prompt editing follow the new count. A batch shares one noise schedule, so its most demanding prompt wins. The
dropdown script gives every image its own count by running the job one image per batch; the choice itself is made by
the accordion's hook, which it asks through an attribute on each run's ``p``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from modules import devices, paths, processing, script_callbacks, scripts, sd_models, shared

from .job import JOB_ATTRIBUTE, REQUEST_ATTRIBUTE, choose_batch_steps, current_job, start_job
from .policy_store import EXTENSION_POLICY_FOLDER, PolicyStore
from .settings import restore_requested_steps
from .ui import accordion_controls, paste_enabled, policy_controls, prompt_list_box

MODELS_POLICY_FOLDER = Path(paths.models_path) / "adadiff"
MODELS_POLICY_FOLDER.mkdir(parents=True, exist_ok=True)  # so users see where policies go
store = PolicyStore({
    "models/adadiff": MODELS_POLICY_FOLDER,
    f"extensions/{EXTENSION_POLICY_FOLDER.parent.name}/policies": EXTENSION_POLICY_FOLDER,
})
# The model families the webui flags on its loaded checkpoint, by flag.
FAMILY_FLAGS = {"is_sdxl": "SDXL", "is_sd2": "SD2.x", "is_sd1": "SD1.x"}

# Pasting an image's infotext (the paste button, PNG Info's "Send to") puts the user's own steps back into Sampling
# steps, not the count AdaDiff chose, so that a job that later falls back runs what the user asked for. The webui
# runs these callbacks for /sdapi/v1/png-info's parameters too; the infotext text itself keeps the count used.
script_callbacks.on_infotext_pasted(lambda infotext, params: restore_requested_steps(params))


def encode_prompts(sd_model, prompts: list[str]):
    """The batch's text conditioning as the webui computes it: a tensor (SD1.x/2.x) or a dict (SDXL)."""
    with torch.no_grad(), devices.autocast():
        return sd_model.get_learned_conditioning(prompts)


def sampler_least_steps(p) -> tuple[int, str]:
    """The fewest steps the job's samplers run, and why: UniPC refuses fewer than its order (a webui setting, 3 by
    default); the other samplers run from 1."""
    if "UniPC" in (p.sampler_name, getattr(p, "hr_sampler_name", None)):
        order = int(getattr(shared.opts, "uni_pc_order", 1))
        return order, f"UniPC (Settings: UniPC order {order})"
    return 1, ""


def checkpoint_family() -> str | None:
    """The loaded checkpoint's model family, when the webui flags it as one AdaDiff knows; None before one is loaded.

    Read from ``sd_models.model_data`` (A1111 v1.10.1 and Forge): ``shared.sd_model`` loads the checkpoint on first
    access, and this runs while the UI is built, which would wait for the load and defeat
    ``--skip-load-model-at-start``.
    """
    model = sd_models.model_data.sd_model
    return next((family for flag, family in FAMILY_FLAGS.items() if getattr(model, flag, False)), None)


class AdaDiffAccordion(scripts.Script):
    """Always-on: when enabled, each batch runs at the step count the policy picks for its prompts."""

    def title(self):
        return "AdaDiff"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        enabled, controls = accordion_controls(store, self.elem_id, checkpoint_family)
        self.infotext_fields = [(enabled, paste_enabled), *controls.paste_fields()]
        return [enabled, *controls.as_list()]

    def process(self, p, enabled, *controls):
        setattr(p, JOB_ATTRIBUTE, None)
        request = getattr(p, REQUEST_ATTRIBUTE, None)
        if request is not None:
            start_job(p, request, store.load)
        elif enabled:
            start_job(p, controls, store.load)

    def process_batch(self, p, *args, prompts, **kwargs):
        job = current_job(p)
        if job is not None:
            choose_batch_steps(p, job, list(prompts), lambda batch: encode_prompts(p.sd_model, batch),
                               least_steps=sampler_least_steps(p))


class AdaDiffPerPromptScript(scripts.Script):
    """Script dropdown: every prompt (and every image of a wildcard prompt) at its own step count, one result."""

    def title(self):
        return "AdaDiff per-prompt steps"

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        controls = policy_controls(store, self.elem_id, checkpoint_family)
        return [*controls.as_list(), prompt_list_box(self.elem_id)]

    def run(self, p, policy, knob, min_steps, max_steps, prompt_lines):
        return run_per_prompt(p, (policy, knob, min_steps, max_steps), prompt_lines)


def run_per_prompt(p, controls: tuple, prompt_lines: str | None):
    """One ``process_images`` per prompt line, one image per batch, merged like the webui's "Prompts from file"."""
    prompts = [line.strip() for line in str(prompt_lines or "").splitlines() if line.strip()] or [p.prompt]
    processing.fix_seed(p)  # every prompt line starts from the same seeds, so lines compare fairly
    images_per_prompt = p.n_iter * p.batch_size
    shared.state.job_count = len(prompts) * images_per_prompt
    images, infotexts, all_prompts, all_negative_prompts, all_seeds, all_subseeds = [], [], [], [], [], []
    for prompt in prompts:
        if shared.state.interrupted:
            break
        run = copy.copy(p)
        run.prompt = prompt
        run.n_iter, run.batch_size = images_per_prompt, 1
        run.do_not_save_grid = True
        run.extra_generation_params = dict(p.extra_generation_params)
        setattr(run, REQUEST_ATTRIBUTE, controls)
        processed = processing.process_images(run)
        images += processed.images
        infotexts += processed.infotexts
        all_prompts += processed.all_prompts
        all_negative_prompts += processed.all_negative_prompts
        all_seeds += processed.all_seeds
        all_subseeds += processed.all_subseeds
    return processing.Processed(
        p,
        images,
        p.seed,
        infotexts[0] if infotexts else "",
        all_prompts=all_prompts,
        all_negative_prompts=all_negative_prompts,
        all_seeds=all_seeds,
        all_subseeds=all_subseeds,
        infotexts=infotexts,
    )
