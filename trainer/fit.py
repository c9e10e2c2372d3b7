"""Fit a step policy on a cached reward table; the diffusion model is never touched.

Two objectives (``--objective``), both trained on the same table:

**quality** (the default, chosen on the known-answer benchmark ``benchmarks/known_answer.py``): the policy
predicts, per prompt, each option's quality loss against the largest option, in percent of that option's IQS:
``L(x, u) = 100 * (Q(x, U) - Q(x, u)) / |Q(x, U)|`` with ``Q`` the IQS averaged over seeds. The network's head is
monotone by construction (fewer steps never predict less loss), the fit is a least-squares regression on the loss
clipped at 20% (decisions fall within the knob's widest tolerance, 10%; beyond that a loss need only be known as
large, and the clip keeps a 50% loss at 5 steps from drowning the 1% differences that matter), and the decision is
the fewest steps whose predicted loss is within a threshold that the validation prompts calibrate
(:mod:`.loss_threshold`): the largest at which their average observed loss, plus two standard errors, stays within
the tolerance. Least squares estimates the *mean* loss, so an
option that is sometimes fine and sometimes 7% worse is predicted at its average and not taken at 1% (measured on
the known-answer benchmark at seed noise 0.01: a log-like ``asinh`` target, whose mean sits below the average, took
such options and lost 2.3% IQS; the clipped loss lost 0.2-0.8%). Why not a lower clip: a clipped mean understates
rare large losses. Measured, one fit each: on the known-answer benchmark at seed noise 0.01 a clip at 5% kept 93%
of the true oracle's saving where 20% kept 87%, but on the embedded demo's table (one seed, heavy-tailed losses)
the policy then lost 6.0% IQS against 50 steps (clip 10%: 4.8%, 20%: 1.7%, 40%: 2.6%, none: 2.5%): the benchmark's
losses are 0 or over 4%, real ones are not. Why a regression at all: the target is an average, so seed
noise averages out across prompts with similar features instead of being memorised, which is what REINFORCE on
per-seed top-k ranks did (measured by an outside review: 98% of the true oracle's saving without noise, 62% with
IQS noise of 0.002). The largest option is the reference rather than the prompt's best option because the maximum
of noisy values is biased upward; its noise is zero-mean and averages out like any other.

**reinforce** (the paper's, arXiv 2311.14768): for prompt x, seed s and step option u with s_u steps,

    R(x, s, u) = O(u) + lambda * Q(x, s, u)   if u's IQS ranks in the top k of x's options at seed s,
               = -gamma                         otherwise,

with the step saving ``O(u) = 1 - (s_u / s_max)^2`` and the quality ``Q`` = the option's IQS min-max normalised over
the options of that prompt and seed (0 = worst option, 1 = best; 1 for all when every option scores the same), so
Q is comparable across prompts whatever the IQS backend's scale. The policy only sees the prompt, so the training
target is R averaged over seeds. Ties in IQS rank the fewer-step option first. k = 3 (the paper's); lambda = 1
weighs quality and saving alike, both lie in [0, 1]; gamma = 1 makes missing the top k cost as much as the largest
possible saving is worth. Gradient: REINFORCE's; ``estimator="exact"`` weighs every option by its probability (the
expectation sampled REINFORCE estimates, computable because the table holds every option's reward), ``"sampled"``
draws ``actions_per_prompt`` options per prompt as the paper does. The ``expected`` baseline subtracts the
policy's exact expected reward, ``batch`` the batch mean. The entropy bonus is 0.3 for a measured reason: with
0.01 the softmax saturated on the option best on average within ~100 updates and the gradient that would tell
prompts apart vanished.

Common to both: the token states are layer-normalised once per table (the network's first step, whose affine part
stays learnable); no dropout; AdamW with weight decay; a seeded validation share of the prompts (identical prompt
texts always on the same side) scores every pass over the training prompts, and the best pass's weights are kept:
the regression's own loss for ``quality`` (smooth, so noise cannot pick a lucky pass), the argmax's reward for
``reinforce``. Length and patience are counted in updates, not passes, so a table of 100 prompts and one of
10,000 both get the few hundred updates a policy needs. Deterministic for a given seed and thread count.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..policy import PolicyConfig, StepPolicy, init_policy
from ..policy.decision import first_within, loss_threshold
from ..policy.network import normalise_tokens
from .config import POLICY_HEADS, FitSettings, TrainerInputError
from .loss_threshold import calibrated_thresholds
from .table import RewardTable

logger = logging.getLogger(__name__)

_EVAL_BATCH = 1024
# Losses beyond this (in %) only need to be known as large: the knob's widest tolerance is 10%.
LOSS_CLIP_PCT = 20.0


def step_saving(options: tuple[int, ...]) -> torch.Tensor:
    """O(u) = 1 - (s_u / s_max)^2 for each option."""
    steps = torch.tensor(options, dtype=torch.float32)
    return 1 - (steps / steps.max()) ** 2


def normalised_quality(iqs: torch.Tensor) -> torch.Tensor:
    """Q: IQS [..., O] min-max normalised over the options (last axis); 1 where all options tie."""
    low, high = iqs.min(-1, keepdim=True).values, iqs.max(-1, keepdim=True).values
    spread = high - low
    return torch.where(spread > 0, (iqs - low) / spread.clamp_min(1e-12), torch.ones_like(iqs))


def in_top_k(iqs: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [..., O]: the option is among the k best by IQS; ties go to the fewer-step (earlier) option."""
    order = torch.sort(iqs, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(iqs.shape[-1]).expand_as(order).contiguous())
    return ranks < k


def option_rewards(iqs: torch.Tensor, options: tuple[int, ...], settings: FitSettings) -> torch.Tensor:
    """The paper's reward for every prompt and option, averaged over seeds: IQS [N, S, O] -> R [N, O]."""
    rewards = torch.where(in_top_k(iqs, settings.top_k),
                          step_saving(options) + settings.quality_weight * normalised_quality(iqs),
                          torch.tensor(-settings.miss_penalty))
    return rewards.mean(1)


def quality_loss_pct(iqs: torch.Tensor) -> torch.Tensor:
    """L: IQS [N, S, O] -> each option's loss against the largest option, in % of its seed-averaged IQS [N, O]."""
    quality = iqs.double().mean(1)
    reference = quality[:, -1:]
    return (100 * (reference - quality) / reference.abs().clamp_min(1e-12)).float()


def split_indices(n: int, val_fraction: float, seed: int, prompts=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (train, validation) split of n prompts; both sides get at least one prompt. With ``prompts``, the
    split is drawn over distinct texts, so a repeated prompt never sits on both sides."""
    keys = list(range(n)) if prompts is None else list(prompts)
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise TrainerInputError(f"the reward table holds {len(distinct)} distinct prompt(s); fitting needs at least "
                                "2 (one to validate)")
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(len(distinct) * val_fraction)), len(distinct) - 1)
    held = {distinct[i] for i in order[:n_val].tolist()}
    is_val = torch.tensor([key in held for key in keys])
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


@dataclass
class FitResult:
    policy: StepPolicy
    history: list[dict]  # one entry per pass: train_loss, val_score, val_mean_steps
    summary: dict


@dataclass(frozen=True)
class _Inputs:
    """A table's policy input, layer-normalised once."""

    normalised: torch.Tensor  # [N, T, D] in the table's feature dtype
    mask: torch.Tensor
    pooled: torch.Tensor | None

    @classmethod
    def of(cls, features) -> "_Inputs":
        tokens = features.tokens
        normalised = torch.empty_like(tokens)
        for start in range(0, len(tokens), _EVAL_BATCH):  # in slices, so fp32 never holds a large table whole
            normalised[start:start + _EVAL_BATCH] = normalise_tokens(tokens[start:start + _EVAL_BATCH])
        return cls(normalised, features.mask, features.pooled)

    def outputs(self, policy: StepPolicy, index: torch.Tensor) -> torch.Tensor:
        pooled = None if self.pooled is None else self.pooled[index].float()
        return policy.forward_normalised(self.normalised[index].float(), self.mask[index], pooled)


class _Quality:
    """Regression of each option's quality loss, clipped at LOSS_CLIP_PCT; validation by the same loss."""

    def __init__(self, table: RewardTable, settings: FitSettings):
        self.targets = quality_loss_pct(table.iqs).clamp(max=LOSS_CLIP_PCT)

    def error(self, outputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return (outputs.clamp(max=LOSS_CLIP_PCT) - self.targets[index]).pow(2).mean()

    def loss(self, outputs: torch.Tensor, index: torch.Tensor, settings: FitSettings, sampler) -> tuple:
        loss = self.error(outputs, index)
        return loss, loss.item()

    def score(self, outputs: torch.Tensor, index: torch.Tensor, settings: FitSettings) -> tuple[float, torch.Tensor]:
        return -self.error(outputs, index).item(), first_within(outputs, settings.tolerance_pct)


class _Reinforce:
    """The paper's policy gradient on the table's rewards; validation by the argmax's reward."""

    def __init__(self, table: RewardTable, settings: FitSettings):
        self.rewards = option_rewards(table.iqs, table.options, settings)

    def loss(self, outputs: torch.Tensor, index: torch.Tensor, settings: FitSettings, sampler) -> tuple:
        log_probs = torch.log_softmax(outputs, -1)
        probs = log_probs.exp()
        batch_rewards = self.rewards[index]
        expected = (probs.detach() * batch_rewards).sum(-1, keepdim=True)  # V(x): the exact expected reward
        if settings.estimator == "exact":  # every action weighed by its probability: no sampling noise
            baseline = expected if settings.baseline == "expected" else _batch_or_zero(expected, settings)
            gain = (probs * (batch_rewards - baseline)).sum(-1)
            achieved = expected.squeeze(1)
        else:
            actions = torch.multinomial(probs.detach(), settings.actions_per_prompt, replacement=True,
                                        generator=sampler)
            chosen = batch_rewards.gather(1, actions)  # [B, K]
            baseline = expected if settings.baseline == "expected" else _batch_or_zero(chosen, settings)
            gain = ((chosen - baseline) * log_probs.gather(1, actions)).mean(-1)
            achieved = chosen.mean(-1)
        entropy = -(probs * log_probs).sum(-1)
        return -gain.mean() - settings.entropy * entropy.mean(), -achieved.mean().item()

    def score(self, outputs: torch.Tensor, index: torch.Tensor, settings: FitSettings) -> tuple[float, torch.Tensor]:
        choices = outputs.argmax(-1)
        return self.rewards[index, choices].mean().item(), choices


_OBJECTIVES = {"quality": _Quality, "reinforce": _Reinforce}


def fit_policy(table: RewardTable, settings: FitSettings, *, info: dict | None = None,
               show_progress: bool = True) -> FitResult:
    """Train a policy on ``table``; ``info`` (model, sampling, reward) is completed with the training summary."""
    started = time.perf_counter()
    objective = _OBJECTIVES[settings.objective](table, settings)
    train, val = split_indices(len(table), settings.val_fraction, settings.fit_seed, table.prompts)
    inputs = _Inputs.of(table.features)
    config = PolicyConfig(options=table.options, token_dim=table.features.token_dim,
                          pooled_dim=table.features.pooled_dim, width=settings.policy_width,
                          depth=settings.policy_depth, heads=POLICY_HEADS, dropout=0.0,
                          objective=settings.objective, tolerance_pct=settings.tolerance_pct)
    policy = init_policy(config, settings.fit_seed, info)
    steps = torch.tensor(table.options, dtype=torch.float32)
    history: list[dict] = []
    best = (-float("inf"), 0, None)  # (validation score, pass, weights)
    sampler = torch.Generator().manual_seed(settings.fit_seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    updates_per_epoch = math.ceil(len(train) / settings.fit_batch_size)
    max_epochs = math.ceil(settings.max_updates / updates_per_epoch)
    bar = tqdm(range(1, max_epochs + 1), desc="fit policy", unit="pass", disable=not show_progress,
               dynamic_ncols=True)
    for epoch in bar:
        train_loss = _train_epoch(policy, optimizer, inputs, objective, train, settings, sampler)
        val_score, choices = _validate(policy, inputs, objective, val, settings)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_score": val_score,
                        "val_mean_steps": steps[choices].mean().item()})
        if val_score > best[0]:
            best = (val_score, epoch, copy.deepcopy(policy.state_dict()))
        bar.set_postfix(val_score=f"{val_score:.4f}", best_pass=best[1])
        if (epoch - best[1]) * updates_per_epoch >= settings.patience:
            break
    bar.close()
    policy.load_state_dict(best[2])
    policy.eval()
    best_entry = history[best[1] - 1]
    if settings.objective == "quality":
        best_entry = _calibrate(policy, inputs, table, val, steps, best_entry)
    summary = {
        "trained": True,
        "objective": settings.objective,
        "validation_score": VALIDATION_SCORES[settings.objective],
        "prompts_train": len(train),
        "prompts_val": len(val),
        "epochs": len(history),
        "updates": len(history) * updates_per_epoch,
        "best_epoch": best[1],
        "val_score": round(best_entry["val_score"], 5),
        "val_mean_steps": round(best_entry["val_mean_steps"], 3),
        "fit_seconds": round(time.perf_counter() - started, 2),
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "seed": settings.fit_seed,
    }
    if settings.objective == "quality":
        summary.update(tolerance_pct=settings.tolerance_pct, threshold_pct=round(best_entry["threshold_pct"], 4))
    else:
        summary.update(baseline=settings.baseline, entropy=settings.entropy, estimator=settings.estimator)
    policy.info = {**policy.info, "summary": summary}
    logger.info("fit (%s): best validation score %.4f at pass %d of %d (%.1f mean steps), %.1f s", settings.objective,
                best_entry["val_score"], best[1], len(history), best_entry["val_mean_steps"], summary["fit_seconds"])
    return FitResult(policy, history, summary)


VALIDATION_SCORES = {
    "quality": f"minus the mean squared error of the predicted loss (%, clipped at {LOSS_CLIP_PCT:g}), all options",
    "reinforce": "mean reward of the argmax choice",
}


def policy_info(description: dict, settings: FitSettings) -> dict:
    """What the policy file records about its model, sampling and reward, from the table it was fitted on (their
    kinds are checked when the table loads; a table without them cannot make a policy file)."""
    missing = [key for key in ("model", "sampling", "reward") if key not in description]
    if missing:
        raise TrainerInputError(f"the reward table's table.json records no {', '.join(map(repr, missing))}, which the "
                                "policy file records: the table is damaged; delete the folder and generate it again")
    model = description["model"]
    if settings.objective == "quality":
        objective = {"objective": "quality", "tolerance_pct": settings.tolerance_pct,
                     "target": "IQS loss against the largest option, % of its IQS, seed-averaged"}
    else:
        objective = {"objective": "reinforce", "top_k": settings.top_k, "quality_weight": settings.quality_weight,
                     "miss_penalty": settings.miss_penalty, "saving_term": "1 - (steps / max_steps)^2",
                     "quality_term": "IQS min-max normalised over the options, per prompt and seed"}
    return {
        "model_family": model.get("model_family"),  # null or left out: unknown
        "base_model": {"name": model["name"], "fingerprint": model["fingerprint"]},
        "sampling": {**description["sampling"], "seeds": description["seeds"]},
        "reward": {"backend": description["reward"]["name"], **objective},
    }


def _train_epoch(policy, optimizer, inputs: _Inputs, objective, train, settings: FitSettings, sampler) -> float:
    """One pass over the training prompts; returns the mean training loss."""
    policy.train()
    order = train[torch.randperm(len(train), generator=sampler)]
    total, count = 0.0, 0
    for start in range(0, len(order), settings.fit_batch_size):
        index = order[start:start + settings.fit_batch_size]
        loss, reported = objective.loss(inputs.outputs(policy, index), index, settings, sampler)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += reported * len(index)
        count += len(index)
    return total / count


@torch.no_grad()
def _calibrate(policy: StepPolicy, inputs: _Inputs, table: RewardTable, val: torch.Tensor, steps: torch.Tensor,
               entry: dict) -> dict:
    """Give a quality policy the thresholds its validation prompts support (see :mod:`.loss_threshold`); the
    returned history entry reports the steps they choose."""
    predicted = torch.cat([inputs.outputs(policy, val[i:i + _EVAL_BATCH]) for i in range(0, len(val), _EVAL_BATCH)])
    thresholds = calibrated_thresholds(predicted, quality_loss_pct(table.iqs)[val], policy.config.tolerance_pct)
    policy.config = dataclasses.replace(policy.config, calibrated_thresholds_pct=thresholds)
    threshold = loss_threshold(policy.config, 0.0)
    return {**entry, "val_mean_steps": steps[first_within(predicted, threshold)].mean().item(),
            "threshold_pct": threshold}


def _batch_or_zero(rewards: torch.Tensor, settings: FitSettings) -> torch.Tensor:
    return rewards.mean() if settings.baseline == "batch" else torch.zeros(())


@torch.no_grad()
def _validate(policy: StepPolicy, inputs: _Inputs, objective, index: torch.Tensor, settings: FitSettings):
    """The objective's validation score and the option each validation prompt gets at inference."""
    policy.eval()
    outputs = torch.cat([inputs.outputs(policy, index[i:i + _EVAL_BATCH]) for i in range(0, len(index), _EVAL_BATCH)])
    return objective.score(outputs, index, settings)
