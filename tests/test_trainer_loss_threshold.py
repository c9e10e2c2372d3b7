"""The calibrated threshold: the largest one whose held-out choices keep the average loss within the tolerance."""
import pytest
import torch

from adadiff.policy.network import CALIBRATED_BIASES
from adadiff.trainer import loss_threshold
from adadiff.trainer.loss_threshold import calibrated_thresholds

AT_KNOB_0 = CALIBRATED_BIASES.index(0.0)


def test_the_threshold_is_the_largest_keeping_the_average_loss_within_the_tolerance(monkeypatch):
    monkeypatch.setattr(loss_threshold, "CONFIDENCE_SE", 0.0)  # the average alone
    predicted = torch.tensor([[9.0, 2.0, 0.0], [9.0, 0.5, 0.0], [9.0, 3.0, 0.0], [9.0, 6.0, 0.0]])
    observed = torch.tensor([[20.0, 0.0, 0.0], [20.0, 4.0, 0.0], [20.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    # thresholds from 0.5 to just below 9 lose 4% on one prompt of four (1% on average); 9 and above lose 20%
    threshold = calibrated_thresholds(predicted, observed, tolerance_pct=1.0)[AT_KNOB_0]
    assert 8.5 < threshold < 9.0
    assert calibrated_thresholds(predicted, observed, tolerance_pct=0.99)[AT_KNOB_0] < 0.5  # 1% is too much


def test_a_dip_back_under_the_tolerance_beyond_the_first_excess_is_not_taken(monkeypatch):
    """Noise can make a larger threshold look better than a smaller one; every threshold up to the chosen one must
    keep the tolerance, so the choice never jumps over a threshold known to lose too much."""
    monkeypatch.setattr(loss_threshold, "CONFIDENCE_SE", 0.0)
    predicted = torch.tensor([[2.0, 0.0], [5.0, 0.0]])
    observed = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])  # from 2: 1.5% on average; from 5: 0%
    assert calibrated_thresholds(predicted, observed, tolerance_pct=1.0)[AT_KNOB_0] < 2.0


def test_the_average_must_hold_by_two_standard_errors():
    """Four prompts averaging 0.9% with one losing 3.6% do not vouch for 1%: 0.9 + 2 * 0.9 (SE) > 1."""
    predicted = torch.tensor([[1.5, 0.0]] * 3 + [[2.5, 0.0]])
    observed = torch.tensor([[0.0, 0.0]] * 3 + [[3.6, 0.0]])
    threshold = calibrated_thresholds(predicted, observed, tolerance_pct=1.0)[AT_KNOB_0]
    assert threshold < 2.5  # the three harmless prompts may take fewer steps, the fourth may not
    assert threshold >= 1.5
    assert calibrated_thresholds(predicted, observed, tolerance_pct=2.8)[AT_KNOB_0] >= 2.5  # 0.9 + 1.8 <= 2.8
    assert calibrated_thresholds(predicted, observed, tolerance_pct=1.5)[AT_KNOB_0] < 2.5  # SE = sd / sqrt(4), not less


def test_two_validation_prompts_that_lose_nothing_vouch_for_any_threshold():
    thresholds = calibrated_thresholds(torch.tensor([[2.0, 0.0], [5.0, 0.0]]), torch.zeros(2, 2), tolerance_pct=1.0)
    assert min(thresholds) >= 5.0


def test_the_thresholds_tried_scale_with_the_tolerance():
    """At a tolerance of 0.01% the threshold that keeps it can be 0.004%: the grid is the tolerance times 1/1000 ...
    1000, so it has thresholds that small."""
    predicted = torch.tensor([[0.004, 0.0], [0.008, 0.0]] * 4)
    observed = torch.tensor([[0.0, 0.0], [5.0, 0.0]] * 4)
    assert 0.004 <= calibrated_thresholds(predicted, observed, tolerance_pct=0.01)[AT_KNOB_0] < 0.008


def test_one_validation_prompt_vouches_for_nothing():
    thresholds = calibrated_thresholds(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.0]]), tolerance_pct=1.0)
    assert thresholds == (0.0,) * len(CALIBRATED_BIASES)  # every prompt keeps the largest option


@pytest.mark.parametrize("seed", range(3))
def test_a_larger_tolerance_never_gets_a_smaller_threshold(seed):
    generator = torch.Generator().manual_seed(seed)
    predicted = torch.rand(50, 6, generator=generator).mul(10).sort(-1, descending=True).values
    predicted[:, -1] = 0
    observed = predicted + torch.randn(50, 6, generator=generator)
    observed[:, -1] = 0
    thresholds = calibrated_thresholds(predicted, observed, tolerance_pct=1.0)
    assert list(thresholds) == sorted(thresholds, reverse=True) and thresholds[0] > thresholds[-1]
