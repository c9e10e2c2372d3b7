"""Fit a step policy by REINFORCE on a cached reward table; the diffusion model is never touched.

The reward is the paper's (arXiv 2311.14768): for prompt x, seed s and step option u with s_u steps,

    R(x, s, u) = O(u) + lambda * Q(x, s, u)   if u's IQS ranks in the top k of x's options at seed s,
               = -gamma                         otherwise,

with the step saving ``O(u) = 1 - (s_u / s_max)^2`` and the quality ``Q`` = the option's IQS min-max normalised over
the options of that prompt and seed (0 = worst option, 1 = best; 1 for all when every option scores the same), so
Q is comparable across prompts whatever the IQS backend's scale. The policy only sees the prompt, so the training
target is R averaged over seeds. Ties in IQS rank the fewer-step option first.

Defaults and why: k = 3 (the paper's); lambda = 1 weighs quality and saving alike, both lie in [0, 1]; gamma = 1
makes missing the top k cost as much as the largest possible saving is worth, so a cheaper option is only taken
when it lands in the top k on most seeds.

Gradient: REINFORCE's. The default ``estimator="exact"`` weighs every option by its probability, which is the
expectation sampled REINFORCE estimates and is computable here because the table holds every option's reward;
``"sampled"`` draws ``actions_per_prompt`` options per prompt as the paper does.

Variance reduction: the ``expected`` baseline subtracts the policy's exact expected reward for the prompt, which the
table makes computable (every option's reward is known); ``batch`` subtracts the batch mean. The entropy bonus is
large by default (0.3) for a measured reason: the options' rewards differ by ~0.1-1, so with a weak bonus (0.01) the
policy learned the option best on average within ~100 updates, its softmax saturated (probability 1.0 on one option,
logits varying by 0.01 across prompts) and the gradient that would tell prompts apart vanished; on caption features
with 0.1 and 0.3 it kept learning per prompt (train reward 0.925 -> 1.06 and 1.13 in 800 updates, per-prompt best
1.34). The bonus softens the optimum but not its argmax, which is what the hosts use. Validation (a seeded share of the
training prompts) scores the argmax choice the hosts make after every pass over the training prompts; the best pass's
weights are kept. Length and patience are counted in updates, not passes, so that a table of 100 prompts and one of
10,000 both get the few hundred updates a policy needs: the small table is passed over many times, the large one
a few. Deterministic for a given seed and thread count.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..policy import PolicyConfig, StepPolicy, init_policy
from .config import POLICY_HEADS, FitSettings, TrainerInputError
from .table import RewardTable

logger = logging.getLogger(__name__)

_EVAL_BATCH = 1024


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


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (train, validation) split of n prompts; both sides get at least one prompt."""
    if n < 2:
        raise TrainerInputError(f"the reward table holds {n} prompt(s); fitting needs at least 2 (one to validate)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return order[n_val:].sort().values, order[:n_val].sort().values


@dataclass
class FitResult:
    policy: StepPolicy
    history: list[dict]  # one entry per epoch: train_reward, val_reward, val_mean_steps
    summary: dict


def fit_policy(table: RewardTable, settings: FitSettings, *, info: dict | None = None,
               show_progress: bool = True) -> FitResult:
    """Train a policy on ``table``; ``info`` (model, sampling, reward) is completed with the training summary."""
    started = time.perf_counter()
    rewards = option_rewards(table.iqs, table.options, settings)
    train, val = split_indices(len(table), settings.val_fraction, settings.fit_seed)
    features = table.features
    config = PolicyConfig(options=table.options, token_dim=features.token_dim, pooled_dim=features.pooled_dim,
                          width=settings.policy_width, depth=settings.policy_depth, heads=POLICY_HEADS)
    policy = init_policy(config, settings.fit_seed, info)
    steps = torch.tensor(table.options, dtype=torch.float32)
    history: list[dict] = []
    best = (-float("inf"), 0, None)  # (val reward, epoch, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.fit_seed)  # dropout draws from the global generator
        sampler = torch.Generator().manual_seed(settings.fit_seed)
        optimizer = torch.optim.Adam(policy.parameters(), lr=settings.lr)
        updates_per_epoch = math.ceil(len(train) / settings.fit_batch_size)
        max_epochs = math.ceil(settings.max_updates / updates_per_epoch)
        bar = tqdm(range(1, max_epochs + 1), desc="fit policy", unit="epoch", disable=not show_progress,
                   dynamic_ncols=True)
        for epoch in bar:
            train_reward = _train_epoch(policy, optimizer, features, rewards, train, settings, sampler)
            choices = _argmax_choices(policy, features, val)
            val_reward = rewards[val, choices].mean().item()
            history.append({"epoch": epoch, "train_reward": train_reward, "val_reward": val_reward,
                            "val_mean_steps": steps[choices].mean().item()})
            if val_reward > best[0]:
                best = (val_reward, epoch, copy.deepcopy(policy.state_dict()))
            bar.set_postfix(val_reward=f"{val_reward:.3f}", best_epoch=best[1])
            if (epoch - best[1]) * updates_per_epoch >= settings.patience:
                break
        bar.close()
    policy.load_state_dict(best[2])
    policy.eval()
    best_entry = history[best[1] - 1]
    summary = {
        "trained": True,
        "prompts_train": len(train),
        "prompts_val": len(val),
        "epochs": len(history),
        "updates": len(history) * updates_per_epoch,
        "best_epoch": best[1],
        "val_reward": round(best_entry["val_reward"], 5),
        "val_mean_steps": round(best_entry["val_mean_steps"], 3),
        "fit_seconds": round(time.perf_counter() - started, 2),
        "lr": settings.lr,
        "baseline": settings.baseline,
        "entropy": settings.entropy,
        "seed": settings.fit_seed,
    }
    policy.info = {**policy.info, "summary": summary}
    logger.info("fit: best validation reward %.4f at epoch %d of %d (%.1f mean steps), %.1f s",
                best_entry["val_reward"], best[1], len(history), best_entry["val_mean_steps"], summary["fit_seconds"])
    return FitResult(policy, history, summary)


def policy_info(description: dict, settings: FitSettings) -> dict:
    """What the policy file records about its model, sampling and reward, from the table it was fitted on."""
    model = description["model"]
    return {
        "model_family": model["model_family"],
        "base_model": {"name": model["name"], "fingerprint": model["fingerprint"]},
        "sampling": {**description["sampling"], "seeds": description["seeds"]},
        "reward": {"backend": description["reward"]["name"], "top_k": settings.top_k,
                   "quality_weight": settings.quality_weight, "miss_penalty": settings.miss_penalty,
                   "saving_term": "1 - (steps / max_steps)^2",
                   "quality_term": "IQS min-max normalised over the options, per prompt and seed"},
    }


def _batch_inputs(features, index: torch.Tensor):
    tokens = features.tokens[index].float()
    pooled = None if features.pooled is None else features.pooled[index].float()
    return tokens, features.mask[index], pooled


def _train_epoch(policy, optimizer, features, rewards, train, settings: FitSettings, sampler) -> float:
    """One pass of REINFORCE over the training prompts; returns the mean reward of the policy's actions."""
    policy.train()
    order = train[torch.randperm(len(train), generator=sampler)]
    total, count = 0.0, 0
    for start in range(0, len(order), settings.fit_batch_size):
        index = order[start:start + settings.fit_batch_size]
        log_probs = torch.log_softmax(policy(*_batch_inputs(features, index)), -1)
        probs = log_probs.exp()
        batch_rewards = rewards[index]
        expected = (probs.detach() * batch_rewards).sum(-1, keepdim=True)  # V(x): the exact expected reward
        if settings.estimator == "exact":  # every action weighed by its probability: no sampling noise
            baseline = expected if settings.baseline == "expected" else _batch_or_zero(expected, settings)
            gain = (probs * (batch_rewards - baseline)).sum(-1)
            sampled = expected.squeeze(1)
        else:
            actions = torch.multinomial(probs.detach(), settings.actions_per_prompt, replacement=True,
                                        generator=sampler)
            chosen = batch_rewards.gather(1, actions)  # [B, K]
            baseline = expected if settings.baseline == "expected" else _batch_or_zero(chosen, settings)
            gain = ((chosen - baseline) * log_probs.gather(1, actions)).mean(-1)
            sampled = chosen.mean(-1)
        entropy = -(probs * log_probs).sum(-1)
        loss = -gain.mean() - settings.entropy * entropy.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += sampled.sum().item()
        count += len(index)
    return total / count


def _batch_or_zero(rewards: torch.Tensor, settings: FitSettings) -> torch.Tensor:
    return rewards.mean() if settings.baseline == "batch" else torch.zeros(())


@torch.no_grad()
def _argmax_choices(policy: StepPolicy, features, index: torch.Tensor) -> torch.Tensor:
    """The option index each prompt gets at inference (argmax, dropout off)."""
    policy.eval()
    choices = [policy(*_batch_inputs(features, index[i:i + _EVAL_BATCH])).argmax(-1)
               for i in range(0, len(index), _EVAL_BATCH)]
    return torch.cat(choices)
