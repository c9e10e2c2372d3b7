"""ComfyUI's own sampling as the trainer's image source: KSampler's code path for the connected MODEL/CLIP/VAE.

Each prompt is sampled alone, from the noise KSampler would draw for seed ``noise_seed(seed, prompt)``, so every step
option of a prompt starts from the same noise, whatever else is in the table, in this run or after a restart.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import comfy.sample
import torch

from ..policy import PolicyFeatures, policy_features
from ..trainer.generate import noise_seed

_FAMILIES = {"SD15": "sd15", "SD20": "sd2", "SDXL": "sdxl"}  # ComfyUI model config -> the policy files' family
_FINGERPRINT_VALUES = 4096  # values read from each sampled weight tensor


class ComfySource:
    """Renders images [B, 3, H, W] in [0, 1] with ``comfy.sample.sample`` and reads prompts as CLIPTextEncode does."""

    def __init__(self, model, clip, vae, *, sampler_name: str, scheduler: str, cfg: float, size: int, negative: str):
        self.model, self.clip, self.vae = model, clip, vae
        self.sampler_name, self.scheduler, self.cfg, self.size = sampler_name, scheduler, cfg, size
        self._conditioning: dict[str, list] = {}
        self.negative = self.conditioning(negative)

    def conditioning(self, text: str) -> list:
        """CLIPTextEncode's output for ``text`` (encoded once per prompt)."""
        if text not in self._conditioning:
            self._conditioning[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self._conditioning[text]

    def features(self, prompts: Sequence[str]) -> PolicyFeatures:
        if len(prompts) != 1:
            raise ValueError("the ComfyUI source reads one prompt per table chunk (batch_size 1)")
        return policy_features(self.conditioning(prompts[0]))

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seed: int, steps: int) -> tuple[torch.Tensor, float]:
        started = time.perf_counter()
        images = []
        for prompt in prompts:
            latent = torch.zeros([1, 4, self.size // 8, self.size // 8])
            latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
            prompt_seed = noise_seed(seed, prompt)
            noise = comfy.sample.prepare_noise(latent, prompt_seed)
            samples = comfy.sample.sample(self.model, noise, steps, self.cfg, self.sampler_name, self.scheduler,
                                          self.conditioning(prompt), self.negative, latent, seed=prompt_seed,
                                          disable_pbar=True)
            decoded = self.vae.decode(samples)
            images.append(decoded.reshape(-1, *decoded.shape[-3:]).movedim(-1, 1).float().clamp(0, 1).cpu())
        return torch.cat(images), time.perf_counter() - started


def model_description(model) -> dict:
    """What the table and the policy file record about a ComfyUI MODEL: family, class and a fingerprint of its
    weights and of the patches (LoRAs) applied to it, so a table is never resumed for another model or LoRA."""
    config_name = type(model.model.model_config).__name__
    digest = hashlib.sha256(config_name.encode())
    state = model.model.state_dict()
    keys = sorted(state)
    for key in keys[:8] + keys[-8:]:
        values = state[key].flatten()[:_FINGERPRINT_VALUES].float().cpu()
        digest.update(f"{key}:{tuple(state[key].shape)}".encode())
        digest.update(values.numpy().tobytes())
    for key in sorted(model.patches):
        for strength, patch, strength_model, *_ in model.patches[key]:
            digest.update(f"{key}:{strength}:{strength_model}:{type(patch).__name__}".encode())
            tensors = [t for t in getattr(patch, "weights", patch if isinstance(patch, tuple) else (patch,))
                       if isinstance(t, torch.Tensor)]
            if tensors:
                digest.update(tensors[0].flatten()[:_FINGERPRINT_VALUES].float().cpu().numpy().tobytes())
    return {"model_family": _FAMILIES.get(config_name, config_name.lower()), "name": f"ComfyUI {config_name}",
            "fingerprint": "sha256:" + digest.hexdigest(), "lora_patched_weights": len(model.patches)}
