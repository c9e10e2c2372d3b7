"""AdaDiff Step Selector: a step count (and matching sigmas) per prompt, to wire into any sampler."""
from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from .step_inputs import CATEGORY, check_policy_name, decide_steps, fingerprint_policy_inputs, step_policy_inputs

SIGMAS_OUTPUT = 1  # position of the SIGMAS output, as links in the prompt refer to it


class AdaDiffStepSelector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaDiffStepSelector",
            display_name="AdaDiff Step Selector",
            category=CATEGORY,
            description="Reads the prompt's conditioning and picks how many denoising steps it needs, using a "
                        "trained AdaDiff step policy. Wire 'steps' into KSampler, or 'sigmas' into "
                        "SamplerCustom / SamplerCustomAdvanced. A batch gets the count of its most demanding prompt.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The positive prompt's conditioning (from CLIP Text "
                                                          "Encode); the policy judges the prompt from it."),
                *step_policy_inputs(),
                # "simple" is what a new KSampler shows (its list's first entry), so a fresh selector matches it.
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Scheduler for the 'sigmas' output; match the sampler's. Unused without a "
                                       "model."),
                io.Model.Input("model", optional=True,
                               tooltip="The model the sampler uses; needed only for the 'sigmas' output, which "
                                       "depends on the model's noise schedule."),
            ],
            outputs=[
                io.Int.Output("steps", display_name="steps",
                              tooltip="Step count chosen for this prompt (batch); connect to KSampler's steps."),
                io.Sigmas.Output("sigmas", display_name="sigmas",
                                 tooltip="The noise schedule for the chosen step count, exact for the connected "
                                         "model and scheduler; for SamplerCustom / SamplerCustomAdvanced."),
                io.String.Output("summary", display_name="summary",
                                 tooltip="The chosen steps and the policy's probability for every step option, "
                                         "per prompt."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, positive, policy, min_steps, max_steps, quality_bias, scheduler, model=None) -> io.NodeOutput:
        choice = decide_steps(positive, policy, min_steps, max_steps, quality_bias)
        if model is not None:
            model_sampling = model.get_model_object("model_sampling")
            sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, choice.steps).cpu()
        elif cls._sigmas_output_is_linked():
            raise ValueError("the 'sigmas' output needs the 'model' input: connect the model the sampler uses, "
                             "so the schedule matches it")
        else:
            sigmas = torch.zeros(0)  # nothing reads it
        return io.NodeOutput(choice.steps, sigmas, choice.summary())

    @classmethod
    def _sigmas_output_is_linked(cls) -> bool:
        prompt, node_id = cls.hidden.prompt or {}, str(cls.hidden.unique_id)
        return any(
            isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id and value[1] == SIGMAS_OUTPUT
            for node in prompt.values() for value in node.get("inputs", {}).values()
        )

    @classmethod
    def validate_inputs(cls, policy=None):
        return check_policy_name(policy)

    @classmethod
    def fingerprint_inputs(cls, **inputs):
        return fingerprint_policy_inputs(**inputs)
