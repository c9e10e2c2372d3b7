"""Reward tables whose answer is known: the yardstick for the fit and the evaluation before any real model.

A synthetic world of "words" (random token states, each with a hidden difficulty that a fixed, unknown direction
of its state decides) makes prompts of 3 to 40 words (by default 15%: 76 to 110),
laid out as the hosts lay them out: a start state, the words, end-token states up to the 77-token chunk's end
(real tokens, mask True), a second chunk for long prompts, and masked padding after a one-chunk prompt when the
table also holds two-chunk ones. A prompt's difficulty (the mean of its words') sets the step option ``d`` at which
its noise-free IQS curve stops improving; below it the curve falls linearly in the missing steps, so every option
below the answer loses well over 1%. On top come a per-(prompt, seed) offset (a seed that makes a better image
makes it at every step count) and per-image noise ``sigma``: the seed noise every real reward model has. The true
oracle is ``d`` itself. ``signal=False`` draws difficulties independently of the words: no policy can do better
than a fixed count there, and an honest evaluation must say so.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..policy import PAPER_OPTIONS, PolicyFeatures
from .table import FEATURE_DTYPE, RewardTable

CHUNK = 77
VOCABULARY = 400
MAX_WORDS = 110  # long prompts have 76-110 words, which take a second chunk
SECONDS_PER_STEP = 0.1  # nominal sampling time: time savings equal step savings
_DROP_AT_ZERO_STEPS = 0.4  # IQS lost at 0 steps, relative to the saturated level


@dataclass(frozen=True)
class KnownAnswer:
    """A noisy table as `generate` would write it, with the truth it was drawn from."""

    table: RewardTable
    true_iqs: torch.Tensor  # [N, O] noise-free, seed-free curves
    answer: torch.Tensor  # [N] option index where each prompt's curve saturates (the true oracle)

    def truth_table(self) -> RewardTable:
        """The same prompts with their noise-free curves as a one-seed table, for judging choices exactly."""
        table = self.table
        iqs = self.true_iqs[:, None, :]
        return RewardTable(table.prompts, table.options, (0,), table.features, iqs, {}, table.time_s[:, :1],
                           table.description)

    def convergence_table(self, converged_at: float) -> RewardTable:
        """The table a convergence reward would give: each image's IQS over the same seed's at the largest option
        (the reference), capped at ``converged_at``; for the bisecting search, whose inference needs a cap."""
        table = self.table
        iqs = (table.iqs / table.iqs[..., -1:]).clamp(max=converged_at)
        reward = {"name": "known-answer convergence", "converged_at": converged_at}
        return RewardTable(table.prompts, table.options, table.seeds, table.features, iqs, {}, table.time_s,
                           {**table.description, "reward": reward})


def known_answer_table(n_prompts: int, *, sigma: float, signal: bool = True, seeds: int = 2, width: int = 768,
                       options: tuple[int, ...] = PAPER_OPTIONS, long_share: float = 0.15, world_seed: int = 0,
                       seed: int = 0) -> KnownAnswer:
    """A table of ``n_prompts`` prompts; tables with the same ``world_seed`` share words (train and test sets),
    ``seed`` draws the prompts and the noise; ``long_share`` of the prompts take a second 77-token chunk."""
    world = torch.Generator().manual_seed(world_seed)
    vocabulary = torch.randn(VOCABULARY, width, generator=world)
    hidden = torch.nn.functional.normalize(torch.randn(width, generator=world), dim=0)
    word_difficulty = 0.5 * (1 + torch.erf(vocabulary @ hidden / 2**0.5))  # uniform in (0, 1), read off the state
    start_state, end_state = torch.randn(width, generator=world), torch.randn(width, generator=world)
    draw = torch.Generator().manual_seed(1_000_003 * (seed + 1) + world_seed)
    long = torch.rand(n_prompts, generator=draw) < long_share
    lengths = torch.where(long, torch.randint(CHUNK - 1, MAX_WORDS + 1, (n_prompts,), generator=draw),
                          torch.randint(3, 41, (n_prompts,), generator=draw))
    words = torch.randint(0, VOCABULARY, (n_prompts, MAX_WORDS), generator=draw)
    is_word = torch.arange(MAX_WORDS)[None, :] < lengths[:, None]
    mean_difficulty = (word_difficulty[words] * is_word).sum(1) / lengths
    if not signal:
        mean_difficulty = mean_difficulty[torch.randperm(n_prompts, generator=draw)]
    answer = _answer_index(mean_difficulty, len(options))
    features = _token_states(words, lengths, vocabulary, start_state, end_state, draw)
    steps = torch.tensor(options, dtype=torch.float32)
    needed = steps[answer]
    base = 0.7 + 0.2 * torch.rand(n_prompts, generator=draw)
    missing = (needed[:, None] - steps[None, :]).clamp_min(0) / needed[:, None]
    true_iqs = base[:, None] * (1 - _DROP_AT_ZERO_STEPS * missing)
    seed_offset = 0.01 * torch.randn(n_prompts, seeds, 1, generator=draw)
    iqs = true_iqs[:, None, :] + seed_offset + sigma * torch.randn(n_prompts, seeds, len(options), generator=draw)
    prompts = tuple(f"prompt {seed}-{i} ({int(lengths[i])} words)" for i in range(n_prompts))
    description = {"model": {"model_family": "known-answer", "name": f"known-answer sigma={sigma}",
                             "fingerprint": f"world{world_seed}"},
                   "sampling": {"scheduler": "none"}, "reward": {"name": "known-answer"}, "seeds": list(range(seeds))}
    time_s = (SECONDS_PER_STEP * steps).expand_as(iqs).clone()
    table = RewardTable(prompts, tuple(options), tuple(range(seeds)), features, iqs, {}, time_s, description)
    return KnownAnswer(table, true_iqs, answer)


def _answer_index(mean_difficulty: torch.Tensor, n_options: int) -> torch.Tensor:
    """Mean word difficulty -> option index. Means of many words crowd around 0.5, so they are spread by their
    rank in a fixed reference distribution (Irwin-Hall-like: a normal with the mean's spread for ~20 words)."""
    spread = (mean_difficulty - 0.5) / 0.065
    quantile = 0.5 * (1 + torch.erf(spread / 2**0.5))
    return (quantile * n_options).long().clamp(0, n_options - 1)


def _token_states(words, lengths, vocabulary, start_state, end_state, draw) -> PolicyFeatures:
    """Host-like layout: [start, words..., end, end, ...] per 77-token chunk; one- or two-chunk prompts."""
    n, width = len(lengths), vocabulary.shape[1]
    two_chunks = bool((lengths > CHUNK - 2).any())
    total = 2 * CHUNK if two_chunks else CHUNK
    tokens = torch.empty(n, total, width, dtype=FEATURE_DTYPE)
    mask = torch.zeros(n, total, dtype=torch.bool)
    for i in range(n):
        length = int(lengths[i])
        chunks = 2 if length > CHUNK - 2 else 1
        row = end_state.expand(chunks * CHUNK, width).clone()
        for chunk in range(chunks):
            row[chunk * CHUNK] = start_state
            part = words[i, chunk * (CHUNK - 2):min(length, (chunk + 1) * (CHUNK - 2))]
            row[chunk * CHUNK + 1:chunk * CHUNK + 1 + len(part)] = vocabulary[part]
        row += 0.1 * torch.randn(row.shape, generator=draw)  # the context each token picks up in a real encoder
        tokens[i, :len(row)] = row.to(FEATURE_DTYPE)
        tokens[i, len(row):] = 0
        mask[i, :len(row)] = True
    return PolicyFeatures(tokens, mask)
