"""Encode a host's token chunks with a diffusers pipeline's text encoders and weigh them as that host does.

Every chunk is ``start, 75 prompt tokens, end`` padded to 77 with the tokenizer's pad token (the end token for
SD1.x and SDXL's CLIP-L, ``!`` for SD2.x and SDXL's CLIP-G, as both hosts pad). The states are those the hosts hand
the sampler: CLIP's final-layer-normed output for SD1.x/2.x, both encoders' penultimate states side by side for SDXL
with CLIP-G's projected pooled vector taken from the first chunk. Chunks are concatenated along the token axis.

Weights (``weights != 1``) change the states after the encoder, differently per host:

* ComfyUI: ``z_empty + (z - z_empty) * w`` per token, where ``z_empty`` is the empty prompt's chunk at the same
  position (only tokens whose weight is not 1 are touched);
* A1111 ("Original" emphasis): ``z * w``, then the chunk is rescaled so its mean over all tokens and channels is
  what it was before weighting, per text encoder (SDXL's CLIP-L and CLIP-G states each keep their own mean, as the
  webui weighs inside each embedder before joining them). The webui takes that mean over the whole batch it encodes
  at once; here it is taken per prompt, as the webui does for a batch of one prompt (ComfyUI always encodes one
  prompt at a time).

The pooled vector is never weighted (both hosts take it before weighting).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .prompt_syntax import PromptSyntax, TokenChunk, prompt_chunks


@dataclass(frozen=True)
class _Encoder:
    """One text encoder of the pipeline and how the hosts read it."""

    model: object
    pad_id: int
    penultimate: bool  # SDXL: hidden_states[-2] without the final layer norm
    pooled: bool  # SDXL's CLIP-G: its projected pooled vector is the policy's pooled input


def _encoders(pipe) -> list[_Encoder]:
    second = getattr(pipe, "text_encoder_2", None)
    if second is None:
        return [_Encoder(pipe.text_encoder, pipe.tokenizer.pad_token_id, False, False)]
    return [_Encoder(pipe.text_encoder, pipe.tokenizer.pad_token_id, True, False),
            _Encoder(second, pipe.tokenizer_2.pad_token_id, True, True)]


@torch.no_grad()
def encode_with_syntax(pipe, prompts: Sequence[str], syntax: PromptSyntax
                       ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per prompt: (states [1, 77 * chunks, D], pooled [1, P] or None), as the named host computes them."""
    tokenizer = pipe.tokenizer
    chunks_per_prompt = [prompt_chunks(tokenizer, prompt, syntax) for prompt in prompts]
    all_chunks = [chunk for chunks in chunks_per_prompt for chunk in chunks]
    empty = TokenChunk((), ())
    states, pooled = [], None
    for encoder in _encoders(pipe):
        ids = torch.tensor([_chunk_ids(tokenizer, chunk, encoder.pad_id) for chunk in [*all_chunks, empty]])
        z, pooled_all = _run(encoder, ids.to(encoder.model.device))
        # Weighed per encoder, before SDXL's two are joined: A1111 weighs inside each embedder, so CLIP-L and
        # CLIP-G each keep their own chunk mean (ComfyUI's formula is per element, so the order does not matter).
        z_empty, z = z[-1], z[:-1]
        states.append(torch.stack([_weigh(z[i], _chunk_weights(chunk, z.shape[1]).to(z), z_empty, syntax)
                                   for i, chunk in enumerate(all_chunks)]))
        if encoder.pooled:
            pooled = pooled_all
    z = torch.cat(states, dim=-1)
    results, start = [], 0
    for chunks in chunks_per_prompt:
        first_pooled = None if pooled is None else pooled[start:start + 1]
        results.append((z[start:start + len(chunks)].reshape(1, -1, z.shape[-1]), first_pooled))
        start += len(chunks)
    return results


def _chunk_ids(tokenizer, chunk: TokenChunk, pad_id: int) -> list[int]:
    length = tokenizer.model_max_length
    ids = [tokenizer.bos_token_id, *chunk.ids, tokenizer.eos_token_id]
    return ids + [pad_id] * (length - len(ids))


def _chunk_weights(chunk: TokenChunk, length: int) -> torch.Tensor:
    weights = [1.0, *chunk.weights]
    return torch.tensor(weights + [1.0] * (length - len(weights)), dtype=torch.float32)


def _run(encoder: _Encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    output = encoder.model(ids, output_hidden_states=encoder.penultimate)
    states = output.hidden_states[-2] if encoder.penultimate else output.last_hidden_state
    pooled = output.text_embeds if encoder.pooled else None
    return states.float(), None if pooled is None else pooled.float()


def _weigh(z: torch.Tensor, weights: torch.Tensor, z_empty: torch.Tensor, syntax: PromptSyntax) -> torch.Tensor:
    """One chunk's states [77, D] weighted as the host weighs them."""
    if bool((weights == 1.0).all()):
        return z
    if syntax == "comfyui":
        changed = weights != 1.0
        weighted = z.clone()
        weighted[changed] = (z[changed] - z_empty[changed]) * weights[changed, None] + z_empty[changed]
        return weighted
    original_mean = z.mean()
    weighted = z * weights[:, None]
    return weighted * (original_mean / weighted.mean())
