"""Exact promises of the trainer's fit, evaluation and table that the mutation run (`make mutation`) found unguarded."""
import math

import pytest
import torch

from adadiff.policy import PolicyFeatures
from adadiff.trainer.config import FitSettings
from adadiff.trainer.evaluate import evaluate_choices
from adadiff.trainer.fit import LOSS_CLIP_PCT, fit_policy, policy_info
from adadiff.trainer.table import RewardTable

OPTIONS = (10, 20, 40)
DESCRIPTION = {"model": {"model_family": "sd15", "name": "tiny.safetensors", "fingerprint": "abc123"},
               "sampling": {"sampler": "euler", "cfg": 7.0}, "seeds": [0, 1], "reward": {"name": "clip"}}


def tiny_table(n=12, seeds=2) -> RewardTable:
    generator = torch.Generator().manual_seed(0)
    iqs = torch.tensor([0.5, 0.8, 1.0]) + 0.01 * torch.rand(n, seeds, len(OPTIONS), generator=generator)
    features = PolicyFeatures(torch.randn(n, 3, 8, generator=generator).half(), torch.ones(n, 3, dtype=torch.bool))
    return RewardTable(tuple(f"p{i}" for i in range(n)), OPTIONS, tuple(range(seeds)), features, iqs, {},
                       torch.zeros_like(iqs), DESCRIPTION)


def test_policy_info_records_model_sampling_and_a_quality_reward():
    """The policy file names its base model, sampling (with the table's seeds) and the quality target it learned."""
    assert policy_info(DESCRIPTION, FitSettings(tolerance_pct=2.5)) == {
        "model_family": "sd15",
        "base_model": {"name": "tiny.safetensors", "fingerprint": "abc123"},
        "sampling": {"sampler": "euler", "cfg": 7.0, "seeds": [0, 1]},
        "reward": {"backend": "clip", "objective": "quality", "tolerance_pct": 2.5,
                   "target": "IQS loss against the largest option, % of its IQS, seed-averaged"},
    }


def test_policy_info_records_the_reinforce_reward_terms():
    """A REINFORCE policy's file states the reward's k, lambda, gamma and both terms."""
    settings = FitSettings(objective="reinforce", top_k=2, quality_weight=0.5, miss_penalty=3.0)
    assert policy_info(DESCRIPTION, settings)["reward"] == {
        "backend": "clip", "objective": "reinforce", "top_k": 2, "quality_weight": 0.5, "miss_penalty": 3.0,
        "saving_term": "1 - (steps / max_steps)^2",
        "quality_term": "IQS min-max normalised over the options, per prompt and seed"}


FAST = dict(policy_width=16, policy_depth=1, fit_batch_size=4, val_fraction=0.25, max_updates=6, patience=6,
            lr=2e-3, weight_decay=0.05, fit_seed=3)


@pytest.mark.parametrize("objective", ["quality", "reinforce"])
def test_the_fit_summary_states_how_the_policy_was_fitted(objective):
    """The summary saved in the policy file: sizes of the split, the optimiser's settings and the objective's own."""
    settings = FitSettings(objective=objective, tolerance_pct=3.0, baseline="batch", entropy=0.2, **FAST)
    result = fit_policy(tiny_table(), settings, show_progress=False)
    summary = result.summary
    assert summary["trained"] is True and summary["objective"] == objective
    assert (summary["prompts_train"], summary["prompts_val"]) == (9, 3)
    assert (summary["lr"], summary["weight_decay"], summary["seed"]) == (2e-3, 0.05, 3)
    assert summary["updates"] == 3 * summary["epochs"]  # 9 training prompts in batches of 4
    assert summary["val_mean_steps"] == pytest.approx(result.history[summary["best_epoch"] - 1]["val_mean_steps"],
                                                      abs=1e-3)
    if objective == "quality":
        assert summary["tolerance_pct"] == 3.0 and "baseline" not in summary
        assert summary["validation_score"] == (f"minus the mean squared error of the predicted loss (%, clipped at "
                                               f"{LOSS_CLIP_PCT:g}), all options")
    else:
        assert (summary["baseline"], summary["entropy"], summary["estimator"]) == ("batch", 0.2, "exact")
        assert summary["validation_score"] == "mean reward of the argmax choice" and "tolerance_pct" not in summary
    assert result.policy.config.tolerance_pct == 3.0 and result.policy.config.dropout == 0.0


def quality_table(rows, options, prompts=None) -> RewardTable:
    """A one-seed table with the given IQS per prompt and option, sampling time proportional to steps."""
    iqs = torch.tensor(rows, dtype=torch.float32)[:, None, :]
    time_s = (torch.tensor(options, dtype=torch.float32) * 0.01).expand_as(iqs).clone()
    features = PolicyFeatures(torch.randn(len(rows), 3, 8).half(), torch.ones(len(rows), 3, dtype=torch.bool))
    return RewardTable(prompts or tuple(f"p{i}" for i in range(len(rows))), tuple(options), (0,), features, iqs, {},
                       time_s, {})


def test_a_policy_that_picks_per_prompt_is_told_it_pays_off():
    """Easy prompts at 10 steps, hard ones at 30: it beats a fixed 20 steps and its own random twin by > 2 SE."""
    table = quality_table([[1.0, 1.0], [0.5, 1.0]] * 4, (10, 30))
    report = evaluate_choices(table, torch.tensor([0, 1] * 4))
    differences = torch.tensor([0.0, 0.25] * 4)  # against a blend of half 10 and half 30 steps
    se = differences.std().item() / math.sqrt(8)
    assert report["fixed_matched"]["policy_minus_se"] == pytest.approx(se)
    assert report["checks"] == {"saving_at_least_40pct": False, "iqs_drop_at_most_1pct": True,
                                "beats_random_same_distribution_by_2se": True, "beats_fixed_matched_by_2se": True,
                                "at_least_80pct_of_oracle_saving": True}
    assert report["verdict"] == {
        "per_prompt_pays_off": True, "recommended_fixed_steps": 30,
        "summary": f"per-prompt steps pay off: the policy saves 33% of the steps at 0.00% less IQS and beats a fixed "
                   f"20.0 steps by +0.1250 ({0.125 / se:.1f} SE)"}


def test_a_policy_that_does_not_pay_off_is_told_which_fixed_count_to_use():
    """The verdict names the fewest fixed steps within the tolerance, their IQS loss and their saving."""
    table = quality_table([[0.9, 0.9, 0.9], [0.5, 0.9, 0.9], [0.3, 0.6, 0.9], [0.9, 0.95, 0.9]], (10, 20, 30))
    report = evaluate_choices(table, torch.tensor([1, 1, 1, 1]), tolerance_pct=10.0)
    drop = 100 * (0.9 - 0.8375) / 0.9  # the fixed 20 steps' mean IQS against the fixed 30 steps'
    assert report["fixed_within_tolerance"] == {"steps": 20, "iqs": pytest.approx(0.8375), "iqs_drop_pct":
                                                pytest.approx(drop, abs=1e-4), "saving_pct": pytest.approx(100 / 3)}
    assert report["verdict"]["summary"] == (
        "per-prompt steps do not pay off here: the policy does not beat both a fixed count at its mean steps and a "
        f"random policy with its step distribution by 2 SE; use a fixed 20 steps (the fewest within 10% of the "
        f"largest option's IQS: {drop:.2f}% less, 33% fewer steps)")
    assert report["tolerance_pct"] == 10.0 and report["n_seeds"] == 1
    assert report["share_of_oracle_saving"] == pytest.approx((1 - 20 / 30) / (1 - 17.5 / 30))  # oracle: 10, 20, 30, 10
