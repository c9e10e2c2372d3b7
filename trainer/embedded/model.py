"""The embedded text-to-image model: component builders, its latent space and the packaged pipeline.

The latent is the 32x32 image rearranged losslessly into 16x16x12 (pixel unshuffle of the image in [-1, 1]).
It holds every number of the image, so a near-lossless AutoencoderKL exists (trained to encode to, and decode
from, exactly this rearrangement), and the UNet can be trained on the rearrangement without running the VAE.
A 4-channel 16x16 latent cannot hold the fine textures that make steps matter in this world.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .tokenizer import TEXT_POSITIONS
from .world import IMAGE_SIZE

MODEL_DIR = Path(__file__).resolve().parent / "model"
LATENT_CHANNELS = 12
LATENT_SIZE = IMAGE_SIZE // 2
TEXT_WIDTH = 64


def image_to_latent(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, 32, 32] in [0, 1] -> unscaled [B, 12, 16, 16] latent (the VAE's target encoding)."""
    return F.pixel_unshuffle(images * 2 - 1, 2)


def latent_to_image(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `image_to_latent`, clamped to [0, 1]."""
    return (F.pixel_shuffle(latents, 2) / 2 + 0.5).clamp(0, 1)


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TEXT_POSITIONS,
                            projection_dim=TEXT_WIDTH, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(48, 96, 96), layers_per_block=1, cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4, norm_num_groups=16)


def build_vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=16, sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor, mid_block_add_attention=False)


def build_scheduler() -> DDIMScheduler:
    """v-prediction on the cosine schedule, trailing spacing: few-step sampling starts from pure noise."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def assemble_pipeline(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, unet: UNet2DConditionModel,
                      vae: AutoencoderKL) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def load_embedded_pipeline(path: str | Path = MODEL_DIR, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """The packaged demo model, loaded offline through the same call as any SD checkpoint folder."""
    pipe = StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
