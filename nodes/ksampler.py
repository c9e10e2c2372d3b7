"""AdaDiff KSampler: KSampler whose step count comes from the step policy instead of a widget."""
from __future__ import annotations

import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's top-level nodes.py (this package is reached only through relative imports)
from comfy_api.latest import io

from .step_inputs import CATEGORY, check_policy_name, decide_steps, fingerprint_policy_inputs, step_policy_inputs


class AdaDiffKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaDiffKSampler",
            display_name="AdaDiff KSampler",
            category=CATEGORY,
            description="KSampler that lets an AdaDiff step policy choose the number of steps for each prompt. "
                        "Samples with ComfyUI's own KSampler code, so progress and results match KSampler's.",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                *step_policy_inputs(),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as in KSampler."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES,
                               tooltip="The sampling algorithm, as in KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES,
                               tooltip="How noise is removed over the steps, as in KSampler."),
                io.Conditioning.Input("positive", tooltip="What to include in the image; the policy also reads "
                                                          "it to choose the step count."),
                io.Conditioning.Input("negative", tooltip="What to exclude from the image."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much to denoise, as in KSampler; below 1 keeps the input's structure."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="LATENT", tooltip="The denoised latent."),
                io.Int.Output("steps", display_name="steps", tooltip="The step count the policy chose and the "
                                                                     "sampler ran."),
            ],
        )

    @classmethod
    def execute(cls, model, seed, policy, min_steps, max_steps, quality_bias, cfg, sampler_name, scheduler,
                positive, negative, latent_image, denoise=1.0) -> io.NodeOutput:
        choice = decide_steps(positive, policy, min_steps, max_steps, quality_bias)
        (latent,) = comfy_nodes.common_ksampler(model, seed, choice.steps, cfg, sampler_name, scheduler, positive,
                                                negative, latent_image, denoise=denoise)
        return io.NodeOutput(latent, choice.steps)

    @classmethod
    def validate_inputs(cls, policy=None):
        return check_policy_name(policy)

    @classmethod
    def fingerprint_inputs(cls, **inputs):
        return fingerprint_policy_inputs(**inputs)
