"""A CLIP tokenizer built locally from the world's own vocabulary (no download).

A byte-pair encoder is trained on the world's words until every word is one token; the vocabulary and merges are
then handed to transformers' `CLIPTokenizer`, so the pipeline tokenizes exactly as it would for Stable Diffusion.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from .world import (BACKGROUND_COLOURS, BACKGROUND_PATTERNS, COUNT_WORDS, OBJECT_COLOURS, SHAPES, SIZES,
                    TEXTURES)

START, END = "<|startoftext|>", "<|endoftext|>"
TEXT_POSITIONS = 24  # longest caption is 19 words; plus start and end tokens


def world_words() -> list[str]:
    words = [*COUNT_WORDS, *SIZES, *TEXTURES, *OBJECT_COLOURS, *SHAPES, *(s + "s" for s in SHAPES),
             *BACKGROUND_PATTERNS, *BACKGROUND_COLOURS, "and", "on", "background"]
    return sorted(set(words))


def build_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary holds every world word as a single token."""
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = sorted({ch for w in world_words() for ch in w})
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=[START, END], initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(world_words() * 4, trainer)
    merges = _merges_of(bpe)
    # The trainer orders tied merges in a hash order that changes between processes; number tokens canonically
    # (sorted), so every caption gets the same ids in every process.
    vocab = {token: i for i, token in enumerate([START, END, *sorted(set(bpe.get_vocab()) - {START, END})])}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_POSITIONS)


def _merges_of(bpe: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
