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
