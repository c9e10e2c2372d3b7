"""Tiny, locally built models and scorers for the trainer's tests (nothing is downloaded).

The pipeline is a real diffusers StableDiffusionPipeline with random weights at 32 px: small enough that a reward
table of a few prompts takes seconds, real enough that every code path (tokenizer, text encoder, UNet, VAE,
scheduler) is the one a user's checkpoint goes through.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adadiff.trainer.embedded.split import train_prompts
from adadiff.trainer.embedded.tokenizer import world_words
from adadiff.trainer.models import load_pipeline, model_info

# The embedded world's words, so its captions (which the `toy` reward can check) tokenize into real tokens.
WORDS = tuple(world_words()) + ("a", "red", "blue", "green", "cube", "ball", "cone", "of", "the", "table", "with")
TEXT_POSITIONS = 16
TOKEN_DIM = 32
WORLD_PROMPTS = tuple(train_prompts(6, seed=1))
PROMPTS = ("a red cube", "two blue balls on a table", "a small green cone", "three tiny striped shapes",
           "a large dotted ball", "many tiny shapes on a striped background", "a blue cube and a red cone")


def build_tokenizer() -> CLIPTokenizer:
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = sorted({ch for word in WORDS for ch in word})
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(list(WORDS) * 4, trainer)
    vocab = dict(sorted(bpe.get_vocab().items(), key=lambda item: item[1]))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_POSITIONS)


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TOKEN_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_POSITIONS, projection_dim=TOKEN_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TOKEN_DIM, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=32)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(folder: Path) -> Path:
    build_tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def load_tiny_model(folder: Path):
    """The tiny pipeline saved into ``folder`` and loaded back the way the trainer loads a user's model, with its
    model info: (pipe, info)."""
    save_tiny_pipeline(folder)
    pipe = load_pipeline(str(folder))
    return pipe, model_info(str(folder), pipe)


class ClosenessToReference:
    """A scorer that needs a reference image: IQS = 1 - mean absolute difference to the long-run image.

    It rises towards 1 as steps approach the reference, and exercises the generator's reference path (rendering,
    storing and reusing the long-run images of a chunk), which backends with `reference_steps` take.
    """

    name = "closeness"

    def __init__(self, reference_steps: int = 12):
        self.reference_steps = reference_steps
        self.calls = 0

    def score(self, images, prompts, references=None):
        assert references is not None and references.shape == images.shape
        assert images.min() >= 0 and images.max() <= 1 and len(prompts) == images.shape[0]
        self.calls += 1
        difference = (images - references).abs().mean(dim=(1, 2, 3))
        return {"iqs": 1 - difference, "difference": difference}


class Brightness:
    """A scorer without a reference: mean brightness (enough to check plumbing, not quality)."""

    name = "brightness"
    reference_steps = None

    def score(self, images, prompts, references=None):
        assert references is None
        return {"iqs": images.mean(dim=(1, 2, 3))}
