"""AdaDiff Calibrate: make a step policy for the connected model (LoRAs and all) and sampler, inside ComfyUI.

The same three stages as ``adadiff-train run``, with ComfyUI doing the sampling: the reward table is built piece by
piece in ``output/adadiff_calibration/<policy_name>/table`` (a restart or a cancelled run continues where it
stopped), the policy is fitted on most prompts, judged on the held-out rest, and written to ``models/adadiff/``.
"""
from __future__ import annotations

import logging
import os

import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..policy import save_policy
from ..trainer.cli import hold_out
from ..trainer.config import FitSettings, GenerateSettings, TrainerInputError, parse_int_list
from ..trainer.evaluate import evaluate_policy
from ..trainer.fit import fit_policy, policy_info
from ..trainer.generate import fill_table, planned_steps, table_description
from ..trainer.report import summary_text
from ..trainer.rewards import build_reward
from ..trainer.table import TableFolder, load_table, unit_name
from .calibrate_source import ComfySource, model_description
from .policy_folder import FOLDER_NAME
from .step_inputs import CATEGORY

REWARDS = ("convergence", "clip", "aesthetic")
WORK_FOLDER = "adadiff_calibration"
MIN_PROMPTS = 3  # two to fit (one of them validates) and one to judge the policy on

log = logging.getLogger(__name__)


class AdaDiffCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaDiffCalibrate",
            display_name="AdaDiff Calibrate",
            category=CATEGORY,
            description="Makes a step policy for the connected model, LoRAs and sampler: samples every prompt at the "
                        "step options, scores each image, fits the policy and writes it to models/adadiff/. "
                        "Stopped or restarted, it continues without redoing finished work.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to calibrate for, with any LoRAs already applied."),
                io.Clip.Input("clip", tooltip="Its text encoder: the policy reads the prompts through it."),
                io.Vae.Input("vae", tooltip="Its VAE: images are scored after decoding."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line, like the ones you will generate; a few dozen or more. "
                                        "A fifth are held out to judge the policy."),
                io.String.Input("step_options", default="5,10,15,20,25,30,35,40,45,50",
                                tooltip="The step counts the policy chooses among, comma-separated."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES,
                               tooltip="The sampler you will use, as in KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES,
                               tooltip="The scheduler you will use, as in KSampler."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as in KSampler."),
                io.Int.Input("size", default=512, min=64, max=4096, step=8,
                             tooltip="Image width and height in pixels."),
                io.String.Input("seeds", default="0",
                                tooltip="Seeds, comma-separated: each prompt is sampled once per seed."),
                io.Combo.Input("reward", options=list(REWARDS), default="convergence",
                               tooltip="convergence: similarity (SSIM) to the same seed's image at the most steps; "
                                       "needs no weights. clip / aesthetic need open_clip and their weights."),
                io.Combo.Input("search", options=["bisect", "full"], default="bisect",
                               tooltip="bisect (convergence only): sample each prompt's fewest and most steps and "
                                       "bisect for the first converged option, far fewer steps. full: every option."),
                io.String.Input("policy_name", default="calibrated",
                                tooltip="File name in models/adadiff/ (.safetensors is added); replaced if it exists."),
                io.String.Input("negative", default="", multiline=True, optional=True,
                                tooltip="Negative prompt used while sampling, as you would use it."),
            ],
            outputs=[
                io.String.Output("summary", display_name="summary",
                                 tooltip="The held-out evaluation: saving, quality kept, against a fixed step count "
                                         "with the same mean."),
                io.String.Output("policy", display_name="policy", tooltip="The policy file written."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, prompts, step_options, sampler_name, scheduler, cfg, size, seeds, reward,
                search, policy_name, negative="") -> io.NodeOutput:
        prompt_list = _prompt_lines(prompts)
        name = _policy_file_name(policy_name)
        settings = _settings(step_options, seeds, cfg, size, reward, search, f"{sampler_name}/{scheduler}")
        train_prompts, held_out = hold_out(prompt_list, 0.2, FitSettings())
        prompt_list = train_prompts + held_out
        backend = _reward(reward, settings)
        sampling = {"host": "ComfyUI", "sampler": sampler_name, "scheduler": scheduler, "guidance": cfg,
                    "size": size, "negative": negative}
        description = table_description(prompt_list, backend, settings, model_description(model), sampling)
        folder = os.path.join(folder_paths.get_output_directory(), WORK_FOLDER, name[:-len(".safetensors")], "table")
        table = TableFolder(folder)
        try:
            table.open(description)
        except TrainerInputError as error:
            raise ValueError(f"{error}. In ComfyUI: choose another policy_name, or delete {folder}") from None
        chunks = range(len(prompt_list))  # one prompt per chunk: the finest resumable piece
        existing = sum(table.has(unit_name(c, s, o)) for c in chunks for s in settings.seeds for o in settings.options)
        source = ComfySource(model, clip, vae, sampler_name=sampler_name, scheduler=scheduler, cfg=cfg, size=size,
                             negative=negative)
        bar = comfy.utils.ProgressBar(max(planned_steps(table, prompt_list, backend, settings, chunks), 1))
        rendered = fill_table(table, source, prompt_list, backend, settings, chunks, progress=bar.update)
        with torch.inference_mode(False), torch.enable_grad():  # ComfyUI runs nodes without autograd
            full = load_table(folder)
            train, judged = full.subset(range(len(train_prompts))), full.subset(range(len(train_prompts), len(full)))
            fit_settings = FitSettings()
            result = fit_policy(train, fit_settings, info=policy_info(full.description, fit_settings),
                                show_progress=False)
        path = os.path.join(folder_paths.get_folder_paths(FOLDER_NAME)[0], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_policy(result.policy, path)
        report = evaluate_policy(result.policy, judged)
        summary = "\n".join([
            summary_text(report, {"policy": path, "table": folder}),
            f"  table: {len(prompt_list)} prompts x {len(settings.seeds)} seed(s) x {len(settings.options)} options; "
            f"{rendered} images sampled now, {existing} option pieces were already done",
        ])
        log.info("AdaDiff Calibrate:\n%s", summary)
        return io.NodeOutput(summary, name)


def _prompt_lines(text: str) -> list[str]:
    """Non-empty lines, first occurrence of each kept."""
    prompts = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if len(prompts) < MIN_PROMPTS:
        raise ValueError(f"prompts: {len(prompts)} different prompt(s) given; calibration needs at least "
                         f"{MIN_PROMPTS}, one per line (a few dozen like the ones you generate work better)")
    return prompts


def _policy_file_name(policy_name: str) -> str:
    stem = policy_name.strip().removesuffix(".safetensors")
    if not stem or os.path.basename(stem) != stem or stem.startswith("."):
        raise ValueError(f"policy_name {policy_name!r}: give a plain file name such as my_checkpoint (no folders)")
    return stem + ".safetensors"


def _settings(step_options, seeds, cfg, size, reward, search, scheduler) -> GenerateSettings:
    try:
        return GenerateSettings(model="comfyui", options=parse_int_list(step_options), seeds=parse_int_list(seeds),
                                batch_size=1, guidance=cfg, size=size, reward=reward, search=search,
                                scheduler=scheduler)
    except TrainerInputError as error:
        raise ValueError(str(error).replace("--", "")) from None


def _reward(reward: str, settings: GenerateSettings):
    """The reward backend; a missing package or weights file becomes a message saying what to install."""
    try:
        backend = build_reward(reward, options=settings.options)
    except ImportError as error:
        raise ValueError(f"the {reward} reward needs open_clip_torch, which this ComfyUI lacks ({error}); install it "
                         "into ComfyUI's Python, or use the convergence reward, which needs nothing") from None
    except Exception as error:  # any failure to find or read its weights (missing file, no network, ...)
        raise ValueError(f"the {reward} reward cannot load: {error}; or use the convergence reward, which needs no "
                         "weights") from None
    if settings.search == "bisect" and getattr(backend, "converged_at", None) is None:
        raise ValueError(f"search=bisect works with the convergence reward only; use search=full with {reward}")
    return backend
