"""Evaluation: every baseline's number checked by hand on a small table; the report files a user reads."""
import json
import math

import pytest
import torch

from adadiff.policy import PolicyConfig, PolicyFeatures, init_policy
from adadiff.trainer.evaluate import evaluate_choices, evaluate_policy
from adadiff.trainer.report import REPORT_FILES, summary_text, write_report
from adadiff.trainer.table import RewardTable

OPTIONS = (10, 20, 30)
QUALITY = [[0.9, 0.9, 0.9], [0.5, 0.9, 0.9], [0.3, 0.6, 0.9], [0.9, 0.95, 0.9]]
PROMPTS = ("a", "a b c", "a b c d e", "a b")


def hand_table(seeds=1) -> RewardTable:
    quality = torch.tensor(QUALITY)[:, None, :].expand(-1, seeds, -1).clone()
    if seeds == 2:  # seed noise that averages out
        quality[:, 0] += 0.02
        quality[:, 1] -= 0.02
    time_s = (torch.tensor(OPTIONS, dtype=torch.float32) * 0.01).expand_as(quality).clone()
    features = PolicyFeatures(torch.randn(4, 3, 8).half(), torch.ones(4, 3, dtype=torch.bool))
    return RewardTable(PROMPTS, OPTIONS, tuple(range(seeds)), features, quality, {}, time_s, {})


@pytest.mark.parametrize("seeds", [1, 2])
def test_every_comparison_matches_the_hand_computation(seeds):
    report = evaluate_choices(hand_table(seeds), torch.tensor([0, 1, 2, 0]))
    approx = lambda value: pytest.approx(value, abs=1e-6)  # noqa: E731
    assert report["n_prompts"] == 4 and report["options"] == [10, 20, 30]
    assert report["policy"]["mean_steps"] == approx(17.5) and report["policy"]["iqs"] == approx(0.9)
    assert report["policy"]["time_s"] == approx(0.175)
    assert {k: v["iqs"] for k, v in report["fixed"].items()} == {"10": approx(0.65), "20": approx(0.8375), "30": approx(0.9)}
    assert report["fixed_matched"]["options"] == [10, 20] and report["fixed_matched"]["weight_of_lower"] == approx(0.25)
    assert report["fixed_matched"]["iqs"] == approx(0.25 * 0.65 + 0.75 * 0.8375)
    assert report["random_same_distribution"]["mean_steps"] == approx(17.5)
    assert report["random_same_distribution"]["iqs"] == approx((0.9 + 0.7 + 0.525 + 0.9125) / 4)
    assert report["heuristic_wordcount"]["mean_steps"] == approx(17.5)  # shortest prompts got the fewest steps
    assert report["heuristic_wordcount"]["iqs"] == approx(0.9)
    assert report["oracle"] == {"mean_steps": approx(17.5), "iqs": approx(0.9), "time_s": approx(0.175),
                                "steps_sd": approx(torch.tensor([10.0, 20, 30, 10]).std().item())}
    assert report["saving_vs_max"]["steps_pct"] == approx(100 * (1 - 17.5 / 30))
    assert report["saving_vs_max"]["time_pct"] == approx(100 * (1 - 0.175 / 0.3))
    assert report["iqs_drop_vs_max_pct"] == approx(0.0) and report["share_of_oracle_saving"] == approx(1.0)
    differences = torch.tensor([0.9, 0.9, 0.9, 0.9]) - torch.tensor([0.9, 0.7, 0.525, 0.9125])
    assert report["random_same_distribution"]["policy_minus_se"] == approx(differences.std().item() / 2)
    assert report["checks"]["saving_at_least_40pct"] and report["checks"]["iqs_drop_at_most_1pct"]


def test_a_constant_choice_is_no_better_than_its_fixed_option_and_the_verdict_names_a_fixed_count():
    report = evaluate_choices(hand_table(), torch.tensor([1, 1, 1, 1]))
    assert report["fixed_matched"]["options"] == [20] and report["fixed_matched"]["policy_minus"] == 0
    assert report["random_same_distribution"]["policy_minus"] == 0
    assert not report["checks"]["beats_random_same_distribution_by_2se"]
    assert report["oracle"]["mean_steps"] == pytest.approx(17.5)
    # fixed means 0.65, 0.8375, 0.9: only 30 steps is within 1% of the largest option
    assert report["fixed_within_tolerance"]["steps"] == 30
    assert report["verdict"] == {"per_prompt_pays_off": False, "recommended_fixed_steps": 30,
                                 "summary": pytest.approx(report["verdict"]["summary"])}
    assert "do not pay off" in report["verdict"]["summary"] and "fixed 30 steps" in report["verdict"]["summary"]


def test_the_oracle_and_the_fixed_recommendation_follow_the_tolerance():
    table = hand_table()
    assert evaluate_choices(table, torch.tensor([0, 1, 2, 0]), tolerance_pct=10.0)["fixed_within_tolerance"]["steps"] == 20
    assert evaluate_choices(table, torch.tensor([0, 1, 2, 0]), tolerance_pct=30.0)["fixed_within_tolerance"]["steps"] == 10
    # at 40%, prompt 2 (0.3, 0.6, 0.9) needs only 20 steps (33% less), prompt 1 (0.5, 0.9, 0.9) still 20 (44% at 10)
    lenient = evaluate_choices(table, torch.tensor([0, 1, 2, 0]), tolerance_pct=40.0)
    assert lenient["oracle"]["mean_steps"] == pytest.approx((10 + 20 + 20 + 10) / 4)


def one_seed_table(quality, options=OPTIONS) -> RewardTable:
    iqs = torch.tensor(quality, dtype=torch.float32)[:, None, :]
    features = PolicyFeatures(torch.randn(len(iqs), 3, 8).half(), torch.ones(len(iqs), 3, dtype=torch.bool))
    return RewardTable(tuple(f"p{i}" for i in range(len(iqs))), options, (0,), features, iqs, {}, torch.ones_like(iqs),
                       {})


# Two easy prompts (10 steps are as good as any) and two hard ones (only 30 steps reach 0.9); the policy gives each
# its right count, so it beats the fixed 20 steps at its mean by 0, 0.3, 0, 0.3 and the random policy with its step
# distribution (half 10, half 30 steps) by 0, 0.3, 0, 0.2: differences that vary from prompt to prompt.
EASY_AND_HARD = [[0.9, 0.9, 0.9], [0.3, 0.6, 0.9], [0.8, 0.8, 0.8], [0.5, 0.6, 0.9]]
RIGHT_COUNTS = [0, 2, 0, 2]


def paired_se(differences) -> float:
    mean = sum(differences) / len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    return math.sqrt(variance / len(differences))


@pytest.mark.parametrize("copies, pays_off", [(1, False), (2, True)])
def test_differences_carry_paired_standard_errors_and_the_verdict_needs_2_se(copies, pays_off):
    """Four prompts: the policy is ahead of both controls by 1.7 paired SE, not enough; the same prompts twice: by
    2.6, enough. The SE is of the per-prompt differences (paired), not of the two sides' IQS (unpaired: 0.079 and
    0.069 here instead of 0.087 and 0.075)."""
    report = evaluate_choices(one_seed_table(EASY_AND_HARD * copies), torch.tensor(RIGHT_COUNTS * copies))
    matched, random = report["fixed_matched"], report["random_same_distribution"]
    assert matched["options"] == [20] and random["mean_steps"] == pytest.approx(20)
    assert matched["policy_minus"] == pytest.approx(0.15) and random["policy_minus"] == pytest.approx(0.125)
    assert matched["policy_minus_se"] == pytest.approx(paired_se([0, 0.3, 0, 0.3] * copies))
    assert random["policy_minus_se"] == pytest.approx(paired_se([0, 0.3, 0, 0.2] * copies))
    assert matched["policy_minus_se"] == pytest.approx({1: math.sqrt(0.0075), 2: math.sqrt(0.18 / 7 / 8)}[copies])
    margins = [entry["policy_minus"] / entry["policy_minus_se"] for entry in (matched, random)]
    assert all((margin > 2) == pays_off for margin in margins)  # one side of the 2 SE line or the other
    assert report["checks"]["beats_fixed_matched_by_2se"] == pays_off
    assert report["checks"]["beats_random_same_distribution_by_2se"] == pays_off
    assert report["verdict"]["per_prompt_pays_off"] == pays_off
    assert ("per-prompt steps pay off: the policy saves 33% of the steps" in report["verdict"]["summary"]) == pays_off
    assert report["verdict"]["recommended_fixed_steps"] == 30  # fixed means 0.625, 0.725, 0.875


def test_the_oracle_takes_the_fewest_steps_within_the_tolerance_of_the_largest_option_seed_averaged():
    # p0: seed 0 loses 50% at 10 steps, seed 1 12.5%; seed-averaged IQS 0.5625 against 0.75 is exactly 25% less
    # p1: 25% less at 20 steps (exactly the tolerance), 50% at 10
    # p2: 20 steps is the best option, but the oracle compares with the largest: 10 steps lose 20% against it
    iqs = torch.tensor([[[0.25, 0.5, 0.5], [0.875, 1.0, 1.0]],
                        [[0.5, 0.75, 1.0], [0.5, 0.75, 1.0]],
                        [[0.6, 1.0, 0.75], [0.6, 1.0, 0.75]]])
    features = PolicyFeatures(torch.randn(3, 3, 8).half(), torch.ones(3, 3, dtype=torch.bool))
    table = RewardTable(("p0", "p1", "p2"), (10, 20, 40), (0, 1), features, iqs, {}, torch.ones_like(iqs), {})
    report = evaluate_choices(table, torch.tensor([2, 2, 2]), tolerance_pct=25.0)
    assert [row["oracle_steps"] for row in report["per_prompt"]] == [10, 20, 10]
    assert report["oracle"]["mean_steps"] == pytest.approx(40 / 3)


def two_seed_table(quality) -> RewardTable:
    iqs = torch.tensor(quality, dtype=torch.float32)  # [N, 2 seeds, 2 options]
    features = PolicyFeatures(torch.randn(len(iqs), 3, 8).half(), torch.ones(len(iqs), 3, dtype=torch.bool))
    return RewardTable(tuple(f"p{i}" for i in range(len(iqs))), (10, 20), (0, 1), features, iqs, {},
                       torch.ones_like(iqs), {})


def test_the_cross_seed_oracle_chooses_on_one_seed_and_is_judged_on_the_other():
    # prompt 0: seed 0 says 10 steps suffice, seed 1 that they lose half; prompt 1: both seeds need 20 steps
    table = two_seed_table([[[1.0, 1.0], [0.5, 1.0]], [[0.5, 1.0], [0.5, 1.0]]])
    report = evaluate_choices(table, torch.tensor([1, 1]))
    cross = report["cross_seed_oracle"]
    assert cross["mean_steps"] == pytest.approx((10 + 20 + 20 + 20) / 4)
    assert cross["iqs"] == pytest.approx(((0.5 + 1.0) / 2 + 1.0) / 2)  # 10 steps judged on seed 1 gives 0.5
    assert cross["iqs_drop_pct"] == pytest.approx(12.5)
    assert cross["share_of_spread_from_prompt"] is None  # seed 1's choices do not vary
    assert report["oracle"]["mean_steps"] == 20  # seed-averaged: prompt 0 loses 25% at 10 steps
    assert evaluate_choices(hand_table(), torch.tensor([0, 1, 2, 0]))["cross_seed_oracle"] is None


def test_a_prompt_driven_oracle_repeats_across_seed_halves():
    easy, hard = [[1.0, 1.0], [0.99, 1.0]], [[0.5, 1.0], [0.6, 1.0]]
    table = two_seed_table([easy, hard, easy, hard])
    cross = evaluate_choices(table, torch.tensor([0, 1, 0, 1]))["cross_seed_oracle"]
    assert cross["share_of_spread_from_prompt"] == pytest.approx(1.0)
    # easy prompts take 10 steps on either half; judged on seed 1 they score 0.99, on seed 0 1.0: 0.25% over all four
    assert cross["iqs_drop_pct"] == pytest.approx(0.25, abs=1e-4)


def test_a_policy_is_judged_through_the_hosts_decision_code(tmp_path):
    policy = init_policy(PolicyConfig(options=OPTIONS, token_dim=8, width=16, heads=4), seed=0)
    with torch.no_grad():
        policy.head[-1].bias.copy_(torch.tensor([0.0, 50.0, 0.0]))  # always 20 steps
    report = evaluate_policy(policy, hand_table())
    assert report["policy"]["mean_steps"] == 20 and report["policy"]["step_histogram"]["20"] == 1.0
    write_report(report, tmp_path)
    assert all((tmp_path / name).stat().st_size > 0 for name in REPORT_FILES)
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in ("n_prompts", "options", "policy", "fixed", "fixed_matched", "random_same_distribution",
                "heuristic_wordcount", "oracle", "saving_vs_max", "iqs_drop_vs_max_pct"):
        assert key in saved
    assert set(saved["policy"]) >= {"mean_steps", "iqs", "iqs_se", "time_s"}
    assert set(saved["fixed"]["10"]) == {"iqs", "iqs_se", "time_s"}
    assert "| fixed 30 | 30.00 | 0.9000 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "checks passed" in summary_text(report, {"report": "x"})


def test_a_policy_for_other_options_is_refused():
    policy = init_policy(PolicyConfig(options=(5, 10), token_dim=8, width=16, heads=4), seed=0)
    with pytest.raises(ValueError, match=r"chooses among \(5, 10\).*made for \(10, 20, 30\)"):
        evaluate_policy(policy, hand_table())
