"""Exact promises of the trainer's fit, evaluation and table that the mutation run (`make mutation`) found unguarded."""
import json
import math
import time
from pathlib import Path

import pytest
import torch

from adadiff.policy import PolicyConfig, PolicyFeatures, choose_steps, init_policy
from adadiff.trainer.config import FitSettings, TrainerInputError
from adadiff.trainer.evaluate import _checks, _verdict, evaluate_choices, evaluate_policy, policy_choices
from adadiff.trainer.fit import LOSS_CLIP_PCT, fit_policy, policy_info, split_indices
from adadiff.trainer.known_answer import known_answer_table
from adadiff.trainer.table import (MEASURED, TABLE_FORMAT, TABLE_VERSION, RewardTable, TableFolder, chunk_count,
                                   features_name, load_table, probe_name, reference_name, unit_name)

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
    if objective == "quality":
        # the summary reports what the calibrated policy does on the validation prompts, not the raw tolerance's pick
        config = result.policy.config
        assert summary["threshold_pct"] == pytest.approx(config.calibrated_thresholds_pct[4], abs=1e-4)
        _, val = split_indices(12, settings.val_fraction, settings.fit_seed, tiny_table().prompts)
        rows = tiny_table().features
        chosen = choose_steps(result.policy, PolicyFeatures(rows.tokens[val], rows.mask[val])).per_prompt
        assert summary["val_mean_steps"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-3)
        assert summary["tolerance_pct"] == 3.0 and "baseline" not in summary
        assert summary["validation_score"] == (f"minus the mean squared error of the predicted loss (%, clipped at "
                                               f"{LOSS_CLIP_PCT:g}), all options")
    else:
        assert summary["val_mean_steps"] == pytest.approx(
            result.history[summary["best_epoch"] - 1]["val_mean_steps"], abs=1e-3)
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


def test_table_pieces_keep_their_names_on_disk():
    """Piece names are the on-disk format a resumed or older table is read by."""
    assert unit_name(3, 1, 20) == "c00003-s1-o20.safetensors"
    assert features_name(12) == "c00012-features.safetensors"
    assert reference_name(0, 7) == "c00000-s7-ref.safetensors"
    assert probe_name(2, 0, 5) == "c00002-s0-o5-probe.safetensors"
    assert [chunk_count(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


def test_a_table_written_in_chunks_loads_as_one(tmp_path):
    """Chunks of different token lengths are padded (mask False), scores land at [prompt, seed, option], the
    measured flags stay booleans and extra reward components are kept."""
    prompts, options, seeds = ["a", "b", "c"], [5, 10], [0, 3]
    description = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "prompts": prompts, "options": options,
                   "seeds": seeds, "batch_size": 2}
    folder = TableFolder(tmp_path / "table")
    folder.open(description)
    lengths = {0: 4, 1: 2}  # chunk 0 holds prompts a, b; chunk 1 prompt c, with fewer tokens
    for chunk, start in enumerate((0, 2)):
        size = len(prompts[start:start + 2])
        folder.write(features_name(chunk), {"tokens": torch.full((size, lengths[chunk], 6), chunk + 1.0).half(),
                                            "mask": torch.ones(size, lengths[chunk], dtype=torch.bool),
                                            "pooled": torch.full((size, 2), chunk + 1.0)})
        for s in seeds:
            for o in options:
                rows = torch.arange(start, start + size, dtype=torch.float32)
                folder.write(unit_name(chunk, s, o), {"iqs": rows * 100 + s * 10 + o, "time_s": rows + o,
                                                      "clip": -rows, MEASURED: rows != 1})
    table = load_table(folder.folder)
    expected = torch.tensor([[[n * 100 + s * 10 + o for o in options] for s in seeds] for n in range(3)],
                            dtype=torch.float32)
    assert torch.equal(table.iqs, expected) and table.iqs.dtype == torch.float32
    assert torch.equal(table.time_s[:, 0], torch.tensor([[5.0, 10.0], [6.0, 11.0], [7.0, 12.0]]))
    assert set(table.components) == {"clip"} and torch.equal(table.components["clip"][2], torch.full((2, 2), -2.0))
    assert table.measured.dtype == torch.bool and table.measured[:, 0, 0].tolist() == [True, False, True]
    assert table.features.tokens.shape == (3, 4, 6) and table.features.mask.tolist()[2] == [True, True, False, False]
    assert table.features.tokens[2, :2].eq(2).all() and table.features.tokens[2, 2:].eq(0).all()
    assert torch.equal(table.features.pooled[:, 0], torch.tensor([1.0, 1.0, 2.0]))
    assert (table.prompts, table.options, table.seeds) == (("a", "b", "c"), (5, 10), (0, 3))
    assert_same_table(table.seed_subset([1]), table, rows=[0, 1, 2], seeds=[1])
    assert_same_table(table.subset([2, 0]), table, rows=[2, 0], seeds=[0, 1])
    assert_same_table(table.subset(torch.tensor([1])), table, rows=[1], seeds=[0, 1])
    plain = tiny_table(n=4)  # no pooled vector, no measured flags
    assert_same_table(plain.subset([3, 1]), plain, rows=[3, 1], seeds=[0, 1])
    assert_same_table(plain.seed_subset([1, 0]), plain, rows=[0, 1, 2, 3], seeds=[1, 0])


def assert_same_table(part: RewardTable, table: RewardTable, rows: list[int], seeds: list[int]):
    """``part`` holds exactly the given rows (prompts) and seed positions of ``table``, every field."""
    r, s = torch.tensor(rows), torch.tensor(seeds)
    assert part.prompts == tuple(table.prompts[i] for i in rows) and part.options == table.options
    assert part.seeds == tuple(table.seeds[i] for i in seeds) and part.description == table.description
    for mine, whole in [(part.features.tokens, table.features.tokens), (part.features.mask, table.features.mask),
                        (part.features.pooled, table.features.pooled)]:
        assert mine is None if whole is None else torch.equal(mine, whole[r])
    for mine, whole in [(part.iqs, table.iqs), (part.time_s, table.time_s), (part.measured, table.measured),
                        *((part.components[k], table.components[k]) for k in table.components)]:
        assert mine is None if whole is None else torch.equal(mine, whole[r][:, s])
    assert set(part.components) == set(table.components)


def test_a_policy_is_judged_on_every_prompt_of_a_table_larger_than_one_decision_batch():
    """Tables of any size are decided in batches, pooled vector included; each prompt gets its own decision."""
    n = 300  # more than one decision batch (256)
    generator = torch.Generator().manual_seed(1)
    features = PolicyFeatures(torch.randn(n, 3, 8, generator=generator).half(), torch.ones(n, 3, dtype=torch.bool),
                              torch.randn(n, 4, generator=generator))
    iqs = torch.rand(n, 1, 3, generator=generator)
    table = RewardTable(tuple(f"p{i}" for i in range(n)), OPTIONS, (0,), features, iqs, {}, torch.ones_like(iqs), {})
    policy = init_policy(PolicyConfig(options=OPTIONS, token_dim=8, pooled_dim=4, width=8, heads=2, depth=1), seed=2)
    with torch.no_grad():
        policy.head[-1].weight.mul_(50)  # decisions that differ from prompt to prompt
    alone = [OPTIONS.index(choose_steps(policy, PolicyFeatures(features.tokens[i:i + 1], features.mask[i:i + 1],
                                                               features.pooled[i:i + 1])).steps) for i in range(n)]
    picks = policy_choices(policy, table)
    assert picks.tolist() == alone and len(set(alone)) > 1


@pytest.mark.parametrize("objective, tolerance", [("quality", 5.0), ("reinforce", 1.0)])
def test_the_oracle_uses_a_quality_policys_own_tolerance(objective, tolerance):
    """A quality policy is judged at the tolerance it was trained for, a REINFORCE policy at the default 1%; the
    report names the policy's objective and file."""
    policy = init_policy(PolicyConfig(options=(10, 20, 30), token_dim=8, width=8, heads=2, depth=1,
                                      objective=objective, tolerance_pct=5.0), seed=0)
    policy.source = "/models/adadiff/judged.safetensors"
    table = quality_table([[0.9, 0.9, 0.9], [0.5, 0.9, 0.9], [0.3, 0.6, 0.9], [0.9, 0.95, 0.9]], (10, 20, 30))
    report = evaluate_policy(policy, table)
    assert report["tolerance_pct"] == tolerance
    assert report["policy"]["objective"] == objective and report["policy"]["file"] == "judged.safetensors"


@pytest.mark.parametrize("halves, share", [
    ([[1.0, 1.0], [0.5, 1.0]], -1.0),  # prompt 0 easy on seed 0 only, prompt 1 on seed 1 only: the halves disagree
])
def test_the_split_half_correlation_keeps_its_sign(halves, share):
    table = two_seed_table([halves, halves[::-1]], (10, 20))
    cross = evaluate_choices(table, torch.tensor([1, 1]))["cross_seed_oracle"]
    assert cross["share_of_spread_from_prompt"] == pytest.approx(share)


def test_a_split_half_spread_of_exactly_one_step_is_still_correlated():
    """Choices 1, 2, 3 steps on both halves: standard deviation 1, correlation 1 (not 'no spread')."""
    rows = [[[1.0, 1.0, 1.0]] * 2, [[0.5, 1.0, 1.0]] * 2, [[0.5, 0.5, 1.0]] * 2]
    cross = evaluate_choices(two_seed_table(rows, (1, 2, 3)), torch.tensor([2, 2, 2]))["cross_seed_oracle"]
    assert cross["share_of_spread_from_prompt"] == pytest.approx(1.0)


def two_seed_table(quality, options) -> RewardTable:
    iqs = torch.tensor(quality, dtype=torch.float32)  # [N, 2 seeds, O]
    features = PolicyFeatures(torch.randn(len(iqs), 3, 8).half(), torch.ones(len(iqs), 3, dtype=torch.bool))
    return RewardTable(tuple(f"p{i}" for i in range(len(iqs))), options, (0, 1), features, iqs, {},
                       torch.ones_like(iqs), {})


def test_a_batch_baseline_changes_what_sampled_reinforce_learns():
    """With sampled actions the baseline is subtracted from each sampled reward, so 'batch' and 'none' differ."""
    table = tiny_table(n=12)
    fits = [fit_policy(table, FitSettings(objective="reinforce", estimator="sampled", baseline=baseline, **FAST),
                       show_progress=False).policy.state_dict() for baseline in ("batch", "none")]
    assert not all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])


@pytest.mark.parametrize("baseline, expected", [("batch", 2.0), ("none", 0.0)])
def test_the_batch_baseline_is_the_batch_mean_and_none_is_zero(baseline, expected):
    """The baseline subtracted from sampled rewards: the batch's mean reward, or nothing."""
    from adadiff.trainer.fit import _batch_or_zero

    assert _batch_or_zero(torch.tensor([[1.0, 3.0], [0.0, 4.0]]), FitSettings(baseline=baseline)).item() == expected


def test_two_prompts_have_standard_errors_and_the_blend_uses_the_neighbours_of_the_mean():
    """Mean 25 steps of (10, 20, 30) blends 20 and 30 half and half; SEs exist from two prompts on; the IQS drop
    is in % of the largest option's IQS."""
    table = quality_table([[0.5, 0.8, 0.9], [0.4, 0.6, 1.0]], (10, 20, 30))
    report = evaluate_choices(table, torch.tensor([1, 2]))
    matched = torch.tensor([0.85, 0.8])  # half of 20 steps' IQS plus half of 30 steps'
    se = matched.std().item() / math.sqrt(2)
    assert report["fixed_matched"]["options"] == [20, 30] and report["fixed_matched"]["weight_of_lower"] == 0.5
    assert report["fixed_matched"]["iqs"] == pytest.approx(0.825) and report["fixed_matched"]["iqs_se"] == (
        pytest.approx(se))
    assert report["random_same_distribution"]["iqs_se"] == pytest.approx(se)
    assert report["iqs_drop_vs_max_pct"] == pytest.approx(100 * (0.95 - 0.9) / 0.95)


def test_one_prompt_has_no_standard_error():
    report = evaluate_choices(quality_table([[0.5, 0.8, 0.9]], (10, 20, 30)), torch.tensor([2]))
    assert math.isnan(report["policy"]["iqs_se"]) and math.isnan(report["fixed"]["10"]["iqs_se"])


def test_the_cross_seed_oracle_splits_any_number_of_seeds_into_even_and_odd_halves():
    """Four seeds: seeds 0 and 2 choose 10 steps, seeds 1 and 3 (one of them losing half at 10) choose 20."""
    seeds = [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.5, 1.0]]
    iqs = torch.tensor([seeds])  # [1 prompt, 4 seeds, 2 options]
    features = PolicyFeatures(torch.randn(1, 3, 8).half(), torch.ones(1, 3, dtype=torch.bool))
    table = RewardTable(("p0",), (10, 20), (0, 1, 2, 3), features, iqs, {}, torch.ones_like(iqs), {})
    assert evaluate_choices(table, torch.tensor([1]))["cross_seed_oracle"]["mean_steps"] == pytest.approx(15.0)


def test_the_cross_seed_oracle_report_by_hand():
    """Seed 0 picks 20 and 10 steps, seed 1 picks 30 and 10; each half's picks are judged on the other half's seeds."""
    table = two_seed_table([[[0.5, 0.9, 0.9], [0.5, 0.5, 1.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]], (10, 20, 30))
    cross = evaluate_choices(table, torch.tensor([2, 2]))["cross_seed_oracle"]
    # judged IQS: prompt 0 (0.5 on seed 1 + 0.9 on seed 0) / 2 = 0.7, prompt 1 1.0; the largest option's 0.95 and 1.0
    assert cross["mean_steps"] == pytest.approx(17.5) and cross["iqs"] == pytest.approx(0.85)
    assert cross["iqs_drop_pct"] == pytest.approx(100 * (0.975 - 0.85) / 0.975)
    assert cross["saving_pct"] == pytest.approx(100 * (1 - 17.5 / 30))
    assert cross["steps_sd"] == pytest.approx((math.sqrt(50) + math.sqrt(200)) / 2)  # per half: sd of (20, 10), (30, 10)


def test_the_cross_seed_oracle_of_one_prompt_has_no_spread():
    table = two_seed_table([[[0.5, 0.9, 0.9], [0.5, 0.5, 1.0]]], (10, 20, 30))
    assert evaluate_choices(table, torch.tensor([2]))["cross_seed_oracle"]["steps_sd"] == 0.0


def _checked(steps_pct=50.0, drop_pct=0.5, minus=(0.03, 0.01), share=0.9) -> dict:
    entry = {"policy_minus": minus[0], "policy_minus_se": minus[1]}
    return _checks({"saving_vs_max": {"steps_pct": steps_pct}, "iqs_drop_vs_max_pct": drop_pct,
                    "random_same_distribution": entry, "fixed_matched": entry, "share_of_oracle_saving": share})


def test_each_check_accepts_a_value_exactly_at_its_limit():
    """40% saving, 1% drop, 80% of the oracle's saving and a margin of exactly 2 SE all pass."""
    assert all(_checked(steps_pct=40.0, drop_pct=1.0, minus=(0.02, 0.01), share=0.8).values())
    assert not any(_checked(steps_pct=39.9, drop_pct=1.01, minus=(0.0199, 0.01), share=0.79).values())


@pytest.mark.parametrize("fixed, random", [(True, False), (False, True)])
def test_beating_only_one_control_does_not_pay_off(fixed, random):
    report = {"checks": {"beats_fixed_matched_by_2se": fixed, "beats_random_same_distribution_by_2se": random},
              "fixed_within_tolerance": {"steps": 30, "iqs_drop_pct": 0.5, "saving_pct": 40.0}, "tolerance_pct": 1.0,
              "fixed_matched": {"steps": 25.0, "policy_minus": 0.01, "policy_minus_se": 0.01},
              "saving_vs_max": {"steps_pct": 50.0}, "iqs_drop_vs_max_pct": 0.5}
    verdict = _verdict(report)
    assert verdict["per_prompt_pays_off"] is False and "use a fixed 30 steps" in verdict["summary"]


TABLE_DESCRIPTION = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "prompts": ["a", "b"], "options": [2, 4],
                     "seeds": [0], "batch_size": 2}


def test_a_table_folder_refuses_other_settings_naming_every_difference(tmp_path):
    folder = TableFolder(tmp_path / "table")
    folder.open(TABLE_DESCRIPTION)
    folder.open(dict(TABLE_DESCRIPTION))  # the same settings: resumed
    other = {**TABLE_DESCRIPTION, "options": [2, 8], "guidance": 2.0}  # one value changed, one key only here
    with pytest.raises(TrainerInputError) as error:
        folder.open(other)
    assert str(error.value) == (
        f"{tmp_path / 'table'} holds a reward table made with other settings (guidance, options differ); it would be "
        "overwritten. Rerun with the same settings to continue it, pass another --out, or delete the folder to start "
        "over")
    assert json.loads((tmp_path / "table" / "table.json").read_text(encoding="utf-8")) == TABLE_DESCRIPTION


def test_only_the_process_that_removes_leftovers_removes_them(tmp_path):
    folder = TableFolder(tmp_path / "table")
    folder.open(TABLE_DESCRIPTION)
    leftover = folder.units / "c00000-s0-o2.safetensors.partial-123"
    leftover.write_bytes(b"cut")
    folder.open(TABLE_DESCRIPTION, remove_leftovers=False)
    assert leftover.exists()
    folder.open(TABLE_DESCRIPTION)
    assert not leftover.exists()


def test_a_piece_records_the_process_that_wrote_it(tmp_path):
    from safetensors import safe_open

    folder = TableFolder(tmp_path / "table")
    folder.open(TABLE_DESCRIPTION)
    folder.write("c00000-s0-o2.safetensors", {"iqs": torch.zeros(2), "time_s": torch.zeros(2)}, process=3)
    with safe_open(str(folder.units / "c00000-s0-o2.safetensors"), "pt") as handle:
        assert handle.metadata() == {"process": "3"}


def test_a_table_description_of_batch_size_one_is_whole():
    from adadiff.trainer.table import _check_description

    _check_description(Path("table.json"), {**TABLE_DESCRIPTION, "batch_size": 1})  # no error


def test_every_problem_of_a_table_description_is_named_in_one_message():
    from adadiff.trainer.table import _check_description

    with pytest.raises(TrainerInputError) as error:
        _check_description(Path("table.json"), {**TABLE_DESCRIPTION, "prompts": [1, 2], "batch_size": 0})
    assert str(error.value) == ("table.json: damaged ('prompts' must be a list of texts; 'batch_size' must be a whole "
                                "number of at least 1); delete the folder and generate the table again")


def test_a_repeated_prompt_is_quoted_cut_at_60_characters():
    from adadiff.trainer.table import _check_description

    prompt = "p" * 59  # its repr, quotes included, is 61 characters: one too many
    with pytest.raises(TrainerInputError) as error:
        _check_description(Path("table.json"), {**TABLE_DESCRIPTION, "prompts": [prompt, "b", prompt]})
    assert str(error.value) == (f"table.json: prompt 0 and prompt 2 are the same ('{'p' * 29}...{'p' * 14}' (61 "
                                "characters)); a prompt may appear once, or it would be both trained and validated on. "
                                "Generate the table from a file without repeats")


def pooled_kinds_table(n=96) -> RewardTable:
    """Half the prompts are best at 2 steps, half only at 6; the kind is written in the pooled vector only."""
    generator = torch.Generator().manual_seed(1)
    hard = torch.arange(n) % 2 == 1
    pooled = torch.randn(n, 4, generator=generator) + torch.where(hard, 4.0, -4.0)[:, None] * torch.tensor(
        [1.0, -1.0, 1.0, -1.0])
    quality = torch.where(hard[:, None], torch.tensor([0.2, 0.5, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    iqs = quality[:, None, :].expand(n, 2, 3).clone()
    features = PolicyFeatures(torch.randn(n, 3, 8, generator=generator).half(), torch.ones(n, 3, dtype=torch.bool),
                              pooled.half())
    return RewardTable(tuple(f"p{i}" for i in range(n)), OPTIONS, (0, 1), features, iqs, {}, torch.zeros_like(iqs),
                       DESCRIPTION)


def test_the_fit_reads_the_pooled_vector_where_the_table_has_one():
    table = pooled_kinds_table()
    result = fit_policy(table, FitSettings(max_updates=300, patience=300, lr=3e-3, policy_width=16, fit_batch_size=16),
                        show_progress=False)
    assert result.policy.config.pooled_dim == 4
    chosen = choose_steps(result.policy, table.features).per_prompt
    right = [steps == (OPTIONS[-1] if i % 2 else OPTIONS[0]) for i, steps in enumerate(chosen)]
    assert sum(right) >= 0.9 * len(right)


def test_weight_decay_reaches_the_optimiser():
    fits = [fit_policy(tiny_table(), FitSettings(**{**FAST, "weight_decay": decay}), show_progress=False)
            .policy.state_dict() for decay in (0.0, 0.5)]
    assert not all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])


@pytest.mark.parametrize("n, fraction, n_val", [(2, 0.5, 1), (10, 0.01, 1), (10, 0.99, 9), (10, 0.2, 2)])
def test_the_split_keeps_at_least_one_prompt_on_each_side(n, fraction, n_val):
    train, val = split_indices(n, fraction, seed=0)
    assert (len(train), len(val)) == (n - n_val, n_val)


def test_one_distinct_prompt_cannot_be_split():
    with pytest.raises(TrainerInputError) as error:
        split_indices(3, 0.5, seed=0, prompts=["same"] * 3)
    assert str(error.value) == "the reward table holds 1 distinct prompt(s); fitting needs at least 2 (one to validate)"


def test_the_fit_runs_max_updates_rounded_up_to_whole_passes_and_numbers_them():
    # 12 prompts, 25% validation: 9 training prompts in batches of 4 = 3 updates per pass; 7 updates -> 3 passes
    result = fit_policy(tiny_table(), FitSettings(**{**FAST, "max_updates": 7, "patience": 1000}), show_progress=False)
    assert [entry["epoch"] for entry in result.history] == [1, 2, 3] and result.summary["updates"] == 9


def test_a_validation_score_that_never_improves_keeps_the_first_pass():
    """Ties do not move the best pass: with a learning rate too small to change any choice, pass 1 is kept."""
    settings = FitSettings(**{**FAST, "objective": "reinforce", "lr": 1e-12, "max_updates": 30, "patience": 6})
    result = fit_policy(tiny_table(), settings, show_progress=False)
    assert len({entry["val_score"] for entry in result.history}) == 1
    assert result.summary["best_epoch"] == 1 and result.summary["epochs"] == 3


def test_the_fit_summary_rounds_as_documented_and_times_the_fit():
    started = time.perf_counter()
    result = fit_policy(tiny_table(), FitSettings(**FAST), show_progress=False)
    elapsed = time.perf_counter() - started
    summary, best = result.summary, result.history[result.summary["best_epoch"] - 1]
    assert summary["val_score"] == round(best["val_score"], 5)
    assert summary["threshold_pct"] == round(result.policy.config.calibrated_thresholds_pct[4], 4)
    assert summary["fit_seconds"] == round(summary["fit_seconds"], 2) and 0 < summary["fit_seconds"] <= elapsed + 0.005


def test_the_quality_summary_rounds_mean_steps_to_3_digits_and_the_threshold_to_4():
    """On 3 validation prompts whose mean steps and threshold have more digits than the summary keeps."""
    table = known_answer_table(12, sigma=0.01, width=16, options=(10, 20, 30, 40)).table
    settings = FitSettings(**FAST)
    result = fit_policy(table, settings, show_progress=False)
    _, val = split_indices(len(table), settings.val_fraction, settings.fit_seed, table.prompts)
    features = table.features
    chosen = choose_steps(result.policy, PolicyFeatures(features.tokens[val], features.mask[val])).per_prompt
    mean_steps, threshold = sum(chosen) / len(chosen), result.policy.config.calibrated_thresholds_pct[4]
    assert round(mean_steps, 3) != round(mean_steps, 4) and round(threshold, 4) != round(threshold, 5)
    assert result.summary["val_mean_steps"] == round(mean_steps, 3)
    assert result.summary["threshold_pct"] == round(threshold, 4)


def test_the_training_loss_is_the_mean_over_every_training_prompt():
    """With a learning rate too small to move the weights, a pass's reported loss is the initial policy's error on
    all 9 training prompts (batches of 4, 4 and 1, weighed by their size)."""
    from adadiff.trainer.fit import _Inputs, _Quality

    table = tiny_table()
    settings = FitSettings(**{**FAST, "lr": 1e-12, "max_updates": 3})
    result = fit_policy(table, settings, show_progress=False)
    train, _ = split_indices(len(table), settings.val_fraction, settings.fit_seed, table.prompts)
    with torch.no_grad():
        error = _Quality(table, settings).error(_Inputs.of(table.features).outputs(result.policy, train), train)
    assert result.history[0]["train_loss"] == pytest.approx(error.item(), rel=1e-4)


def test_sampled_reinforce_is_reproducible_from_its_seed():
    settings = FitSettings(**{**FAST, "objective": "reinforce", "estimator": "sampled"})
    first, again = (fit_policy(tiny_table(), settings, show_progress=False).policy.state_dict() for _ in range(2))
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_the_fit_shows_its_progress_only_when_asked(capsys):
    fit_policy(tiny_table(), FitSettings(**FAST), show_progress=False)
    assert "fit policy" not in capsys.readouterr().err
    result = fit_policy(tiny_table(), FitSettings(**FAST))
    shown = capsys.readouterr().err
    assert "fit policy: " in shown and ("pass/s" in shown or "s/pass" in shown)
    last = result.history[-1]["val_score"]
    assert f"best_pass={result.summary['best_epoch']}, val_score={last:.4f}]" in shown  # tqdm sorts the names
    assert "it/s" not in shown and "s/it" not in shown


def test_the_fit_logs_its_outcome(caplog):
    with caplog.at_level("INFO", logger="adadiff.trainer.fit"):
        result = fit_policy(tiny_table(), FitSettings(**FAST), show_progress=False)
    summary = result.summary
    assert caplog.messages[-1] == (
        f"fit (quality): best validation score {summary['val_score']:.4f} at pass {summary['best_epoch']} of "
        f"{summary['epochs']} ({summary['val_mean_steps']:.1f} mean steps), "
        f"{summary['fit_seconds']:.1f} s")


def test_an_out_folder_that_is_something_else_is_refused_by_name(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainerInputError) as error:
        TableFolder(tmp_path / "file").refuse_foreign()
    assert str(error.value) == f"{tmp_path / 'file'} is a file, not a folder; pass another --out"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "photo.png").write_bytes(b"x")
    with pytest.raises(TrainerInputError) as error:
        TableFolder(tmp_path / "folder").refuse_foreign()
    assert str(error.value) == (f"{tmp_path / 'folder'} exists and is not a reward table; it would be overwritten. "
                                "Pass another --out, or remove the folder")


def test_the_fit_splits_repeated_prompt_texts_as_one():
    """12 rows holding 6 texts twice: 25% of 6 texts (2) go to validation, with both their rows (4)."""
    table = tiny_table()
    table = RewardTable(tuple(f"p{i // 2}" for i in range(12)), table.options, table.seeds, table.features, table.iqs,
                        {}, table.time_s, table.description)
    assert fit_policy(table, FitSettings(**FAST), show_progress=False).summary["prompts_val"] == 4


def test_a_piece_written_without_a_process_records_process_0(tmp_path):
    from safetensors import safe_open

    folder = TableFolder(tmp_path / "table")
    folder.open(TABLE_DESCRIPTION)
    folder.write("c00000-s0-o2.safetensors", {"iqs": torch.zeros(2), "time_s": torch.zeros(2)})
    with safe_open(str(folder.units / "c00000-s0-o2.safetensors"), "pt") as handle:
        assert handle.metadata() == {"process": "0"}


def test_a_table_is_normalised_whole_in_slices_of_1024_prompts():
    from adadiff.policy.network import normalise_tokens
    from adadiff.trainer.fit import _Inputs

    features = PolicyFeatures(torch.randn(2100, 3, 8).half(), torch.ones(2100, 3, dtype=torch.bool))
    torch.testing.assert_close(_Inputs.of(features).normalised.float(),
                               normalise_tokens(features.tokens).half().float())
