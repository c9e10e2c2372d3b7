"""The analysis figures on hand-made reward tables whose answers are known."""

import numpy as np
import pytest

from adadiff.trainer.embedded.analyze import (cross_seed_oracle, fixed_budget_iqs, oracle_indices,
                                              share_explained_by_prompt)

OPTIONS = np.arange(5, 55, 5)


def saturating_table(needs: np.ndarray) -> np.ndarray:
    """IQS [P, O]: 0.5 below a prompt's needed steps, 1.0 from there on."""
    return np.where(OPTIONS[None, :] >= needs[:, None], 1.0, 0.5)


def test_oracle_is_the_fewest_steps_within_tolerance_of_the_best():
    iqs = np.array([[0.5, 0.9, 0.995, 1.0, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert OPTIONS[oracle_indices(iqs, tolerance=0.01)][0] == 15
    assert OPTIONS[oracle_indices(iqs, tolerance=0.2)][0] == 10


def test_share_explained_is_one_when_seeds_agree_and_zero_when_prompts_do_not_matter():
    assert share_explained_by_prompt(np.array([[5.0, 5.0], [20.0, 20.0], [40.0, 40.0]])) == pytest.approx(1.0)
    assert share_explained_by_prompt(np.array([[5.0, 40.0], [40.0, 5.0], [5.0, 40.0], [40.0, 5.0]])) == \
        pytest.approx(0.0)


def test_fixed_budget_mixes_the_neighbouring_options():
    iqs = np.tile(np.linspace(0.1, 1.0, len(OPTIONS)), (2, 1))
    assert fixed_budget_iqs(iqs, OPTIONS, 12.5) == pytest.approx([0.25, 0.25])
    assert fixed_budget_iqs(iqs, OPTIONS, 50.0) == pytest.approx([1.0, 1.0])


def test_cross_seed_oracle_wins_when_needs_belong_to_the_prompt():
    needs = np.repeat([5, 10, 45], 20)
    table = saturating_table(needs)
    result = cross_seed_oracle(np.stack([table, table], axis=1), OPTIONS)
    assert result["mean_steps"] == pytest.approx(needs.mean())
    assert result["iqs_drop_pct"] == pytest.approx(0.0)
    assert result["iqs"] > result["fixed_same_mean_iqs"] + 2 * result["se"]["advantage_over_fixed"]
    assert result["advantage_over_shuffled_in_se"] > 2


def test_cross_seed_oracle_does_not_win_when_needs_are_seed_noise():
    rng = np.random.default_rng(0)
    seeds = [saturating_table(rng.choice([5, 45], size=200)) for _ in range(2)]
    result = cross_seed_oracle(np.stack(seeds, axis=1), OPTIONS)
    assert result["iqs_drop_pct"] > 5
    assert abs(result["advantage_over_shuffled_in_se"]) < 2


def test_summary_holds_the_issue_figures():
    from adadiff.trainer.embedded.analyze import summarise
    from adadiff.trainer.embedded.checker import PROPERTIES
    from adadiff.trainer.embedded.split import held_out_prompts

    prompts = list(held_out_prompts()[:40])
    needs = np.array([45 if "grainy" in p.split() else 10 for p in prompts])
    table = np.stack([saturating_table(needs)] * 2, axis=1)  # [P, seeds, O]
    scores = {key: table for key in (*PROPERTIES, "alignment", "fidelity", "cleanliness", "grain", "iqs")}
    truth = {key: np.ones((len(prompts), 2)) for key in (*PROPERTIES, "alignment")}
    result = summarise(scores, truth, prompts, OPTIONS)
    assert result["iqs_max_option_vs_truth"] == pytest.approx(1.0)
    assert result["oracle_seed_agreement"] == 1.0 and result["oracle_variance_explained"] == pytest.approx(1.0)
    assert result["oracle_mean_steps_grainy_or_not"] == {"grainy": 45.0, "not_grainy": 10.0}
    assert set(result["cross_seed_oracle"]) >= {"mean_steps", "saving_pct", "iqs_drop_pct", "iqs",
                                                "fixed_same_mean_iqs", "se"}
    assert set(result["mean_iqs_by_steps"]) >= {"all", "simple"} and "mean_grain_by_steps" in result
