import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adadiff.policy import (
    FeatureMismatchError,
    PolicyConfig,
    PolicyFileError,
    StepPolicy,
    choose_steps,
    init_policy,
    option_logits,
)
from adadiff.policy.decision import loss_threshold
from policy_helpers import policy_preferring, quality_policy_with_losses, random_conditioning


class FixedLogits(StepPolicy):
    """A real StepPolicy whose forward pass returns given logits: isolates the decision rule under test."""

    def __init__(self, logits: torch.Tensor, options):
        super().__init__(PolicyConfig(options=tuple(options), width=8, heads=1, depth=1))
        self.fixed = logits

    def forward(self, tokens, mask, pooled=None):
        return self.fixed.expand(tokens.shape[0], -1) if self.fixed.dim() == 1 else self.fixed


def test_argmax_picks_the_preferred_option():
    policy = policy_preferring(3)
    choice = choose_steps(policy, random_conditioning(4))
    assert choice.per_prompt == (20, 20, 20, 20) and choice.steps == 20
    assert choice.probs.shape == (4, 10) and torch.allclose(choice.probs.sum(-1), torch.ones(4))
    assert "20 steps" in choice.summary()


@pytest.mark.parametrize("preferred", [(0, 2), (2, 0, 1), (1, 2, 0)])
def test_batch_gets_the_most_demanding_prompt_wherever_it_sits(preferred):
    """A sampler runs one schedule per batch: the batch takes the largest count, not the last or first row's."""
    logits = torch.eye(3)[list(preferred)] * 5
    expected = tuple((10, 20, 30)[i] for i in preferred)
    choice = choose_steps(FixedLogits(logits, (10, 20, 30)), torch.randn(len(preferred), 77, 768))
    assert choice.per_prompt == expected and choice.steps == 30
    losses = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 5.0, 0.0]])[list(preferred)]  # quality policies too
    quality = choose_steps(FixedLosses(losses, (10, 20, 30)), torch.randn(len(preferred), 77, 768))
    assert quality.per_prompt == expected and quality.steps == 30


def test_limits_clamp_each_prompt():
    policy = policy_preferring(0)  # 5 steps
    assert choose_steps(policy, random_conditioning(), min_steps=12).steps == 12
    assert choose_steps(policy_preferring(9), random_conditioning(), max_steps=30).steps == 30
    rows = FixedLogits(torch.eye(5)[[0, 4, 2]] * 5, (10, 20, 30, 40, 50))  # 10, 50 and 30 steps
    choice = choose_steps(rows, torch.randn(3, 77, 768), min_steps=15, max_steps=40)
    assert choice.per_prompt == (15, 40, 30) and choice.steps == 40
    with pytest.raises(ValueError, match="min_steps \\(40\\) is larger than max_steps \\(20\\)"):
        choose_steps(policy, random_conditioning(), min_steps=40, max_steps=20)


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=10, max_size=10),
    biases=st.lists(st.floats(-3, 3), min_size=2, max_size=6),
)
def test_quality_bias_is_monotonic(logits, biases):
    policy = FixedLogits(torch.tensor(logits), range(5, 55, 5))
    conditioning = torch.zeros(1, 4, 768)
    steps = [choose_steps(policy, conditioning, quality_bias=b).steps for b in sorted(biases)]
    assert steps == sorted(steps)


def test_quality_bias_moves_an_undecided_policy_both_ways():
    policy = FixedLogits(torch.zeros(10), range(5, 55, 5))
    conditioning = torch.zeros(1, 4, 768)
    assert choose_steps(policy, conditioning, quality_bias=1.0).steps == 50
    assert choose_steps(policy, conditioning, quality_bias=-1.0).steps == 5


def test_mismatched_conditioning_names_policy_and_widths():
    policy = init_policy(PolicyConfig(token_dim=2048, pooled_dim=1280), info={"model_family": "sdxl"})
    policy.source = "/models/adadiff/sdxl_policy.safetensors"
    with pytest.raises(FeatureMismatchError) as error:
        choose_steps(policy, random_conditioning())
    assert "policy sdxl_policy.safetensors expects 2048-wide conditioning, got 768" in str(error.value)
    assert isinstance(error.value, PolicyFileError)
    with pytest.raises(FeatureMismatchError, match="1280-wide pooled text vector, got none"):
        choose_steps(policy, random_conditioning(width=2048))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_conditioning_decides_like_fp32(dtype):
    """Hosts hand over fp16/bf16 states; the policy decides in fp32 and changes its mind only on near-ties."""
    policy = init_policy(PolicyConfig(), seed=3)
    with torch.no_grad():
        policy.head[-1].weight.mul_(30)  # confident, prompt-dependent logits, as after training
    conditioning = random_conditioning(64, seed=5)
    reference = option_logits(policy, conditioning)
    low = option_logits(policy, conditioning.to(dtype))
    assert low.dtype == torch.float32
    error = (low - reference).abs().max()
    assert error < 0.5
    assert len(set(reference.argmax(-1).tolist())) > 1
    top2 = reference.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * error  # decisions that rounding of the input cannot flip
    assert clear.sum() >= 16
    assert torch.equal(low.argmax(-1)[clear], reference.argmax(-1)[clear])


def test_training_mode_is_restored_and_decisions_are_deterministic():
    policy = init_policy(PolicyConfig(), seed=2).train()
    conditioning = random_conditioning(8)
    first = choose_steps(policy, conditioning)
    assert policy.training
    assert choose_steps(policy, conditioning).per_prompt == first.per_prompt


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_policy_matches_cpu():
    policy = init_policy(PolicyConfig(), seed=3)
    conditioning = random_conditioning(32, seed=9)
    cpu = option_logits(policy, conditioning)
    gpu = option_logits(policy.cuda(), conditioning.cuda().half())
    assert torch.allclose(cpu, gpu, atol=0.05)


class FixedLosses(StepPolicy):
    """A real quality-objective StepPolicy whose forward pass returns given predicted losses (in %)."""

    def __init__(self, losses: torch.Tensor, options, tolerance_pct=1.0, calibrated=()):
        super().__init__(PolicyConfig(options=tuple(options), width=8, heads=1, depth=1, objective="quality",
                                      tolerance_pct=tolerance_pct, calibrated_thresholds_pct=calibrated))
        self.fixed = losses

    def forward(self, tokens, mask, pooled=None):
        return self.fixed.expand(tokens.shape[0], -1) if self.fixed.dim() == 1 else self.fixed


def test_a_quality_policy_takes_the_fewest_steps_within_its_tolerance():
    policy = FixedLosses(torch.tensor([[30.0, 4.0, 0.9, 0.2, 0.0], [0.5, 0.3, 0.08, 0.0, 0.0]]), (10, 20, 30, 40, 50))
    choice = choose_steps(policy, torch.randn(2, 77, 768))
    assert choice.per_prompt == (30, 10) and choice.steps == 30 and choice.probs is None
    assert choice.tolerance_pct == 1.0
    assert "within 1% of 50 steps" in choice.summary() and "prompt 0: 30 steps (10:30.00%, 20:4.00%" in choice.summary()
    assert choose_steps(policy, torch.randn(2, 77, 768), quality_bias=1.0).per_prompt == (50, 30)  # 0.1%
    assert choose_steps(policy, torch.randn(2, 77, 768), quality_bias=-1.0).per_prompt == (20, 10)  # 10%
    assert choose_steps(policy, torch.randn(2, 77, 768), quality_bias=3.0).per_prompt == (50, 40)  # 0.001%


def test_a_quality_policy_reads_its_own_tolerance():
    losses = torch.tensor([6.0, 2.0, 0.0])
    assert choose_steps(FixedLosses(losses, (5, 10, 15), tolerance_pct=1.0), torch.randn(1, 77, 768)).steps == 15
    assert choose_steps(FixedLosses(losses, (5, 10, 15), tolerance_pct=3.0), torch.randn(1, 77, 768)).steps == 10


@settings(max_examples=100, deadline=None)
@given(raw=st.lists(st.floats(-10, 10), min_size=9, max_size=9), biases=st.lists(st.floats(-3, 3), min_size=2,
                                                                                   max_size=6))
def test_a_quality_policy_is_monotonic_in_the_knob_through_its_real_head(raw, biases):
    policy = init_policy(PolicyConfig(options=tuple(range(5, 55, 5)), objective="quality", width=8, heads=1, depth=1))
    with torch.no_grad():
        policy.head[-1].weight.zero_()
        policy.head[-1].bias.copy_(torch.tensor(raw))
    losses = option_logits(policy, torch.randn(1, 77, 768))[0]
    assert losses[-1] == 0 and bool((losses[:-1] >= losses[1:]).all())  # monotone head, 0 at the largest option
    steps = [choose_steps(policy, torch.randn(1, 77, 768), quality_bias=b).steps for b in sorted(biases)]
    assert steps == sorted(steps)


def test_a_quality_policy_built_to_predict_given_losses_decides_by_them():
    config = PolicyConfig(options=(1, 2, 3), token_dim=768, objective="quality", tolerance_pct=1.0)
    policy = quality_policy_with_losses([20.0, 0.5, 0.0], config)
    torch.testing.assert_close(option_logits(policy, random_conditioning(2)), torch.tensor([[20.0, 0.5, 0.0]] * 2),
                               atol=1e-3, rtol=1e-4)
    assert choose_steps(policy, random_conditioning()).steps == 2
    assert choose_steps(policy, random_conditioning(), quality_bias=1.0).steps == 3


# thresholds at the knob positions -1, -0.75, ..., 1 (CALIBRATED_BIASES), as `fit` writes them
CALIBRATED = (20.0, 12.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25)


@pytest.mark.parametrize("bias, threshold", [(0.0, 3.0), (-1.0, 20.0), (1.0, 0.25), (0.5, 1.0), (0.125, 2.5),
                                             (-0.875, 16.0), (2.0, 0.025), (-2.0, 200.0)])
def test_a_calibrated_quality_policy_takes_its_calibrated_threshold_at_each_knob_position(bias, threshold):
    """At a calibrated position the threshold fit chose; between two, the straight line between them; beyond the
    ends, the end's threshold scaled by 10 per unit, as an uncalibrated tolerance is."""
    losses = torch.tensor([[threshold * 1.01, threshold * 0.99, 0.0]])
    choice = choose_steps(FixedLosses(losses, (10, 20, 30), calibrated=CALIBRATED), torch.randn(1, 77, 768),
                          quality_bias=bias)
    assert choice.steps == 20 and choice.threshold_pct == pytest.approx(threshold)
    assert choice.tolerance_pct == pytest.approx(10 ** -bias)
    assert f"within {threshold:.2g}% of 30 steps, calibrated for {10 ** -bias:.2g}% on average" in choice.summary()


@settings(max_examples=100, deadline=None)
@given(losses=st.lists(st.floats(0, 50), min_size=4, max_size=4), biases=st.lists(st.floats(-3, 3), min_size=2,
                                                                                   max_size=6))
def test_a_calibrated_quality_policy_is_monotonic_in_the_knob(losses, biases):
    policy = FixedLosses(torch.tensor(sorted(losses, reverse=True) + [0.0]), (10, 20, 30, 40, 50),
                         calibrated=CALIBRATED)
    steps = [choose_steps(policy, torch.randn(1, 77, 768), quality_bias=b).steps for b in sorted(biases)]
    assert steps == sorted(steps)


@pytest.mark.parametrize("calibrated, problem", [((1.0,) * 8, "9 finite"), ((1.0,) * 8 + (2.0,), "non-increasing"),
                                                 ((float("nan"),) * 9, "finite"), ((float("inf"),) * 9, "finite"),
                                                 ((-1.0,) * 9, "non-negative"),
                                                 (("1",) * 9, "list of numbers"), ("1" * 9, "list of numbers")])
def test_calibrated_thresholds_that_could_mislead_the_knob_are_refused(calibrated, problem):
    with pytest.raises(ValueError, match=problem):
        PolicyConfig(objective="quality", calibrated_thresholds_pct=calibrated)


def test_calibrated_thresholds_may_be_zero_and_level():
    """The calibration's grid starts at 0 and neighbouring knob positions may share a threshold."""
    calibrated = (2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 0.0)
    assert PolicyConfig(objective="quality", calibrated_thresholds_pct=calibrated).calibrated_thresholds_pct == calibrated


@pytest.mark.parametrize("calibrated", [("x",) * 1000, (1.0,) * 1000])
def test_a_refused_threshold_list_is_named_in_at_most_200_characters(calibrated):
    """A crafted file's list is quoted, not dumped onto the user's screen."""
    with pytest.raises(ValueError) as refused:
        PolicyConfig(objective="quality", calibrated_thresholds_pct=calibrated)
    assert len(str(refused.value)) == 200


def test_the_knob_at_a_calibrated_end_uses_that_ends_threshold_exactly():
    """At -1 and +1 the threshold is the file's own number, not an interpolation that rounds away from it."""
    calibrated = (0.45, 0.44, 0.4, 0.38, 0.36, 0.34, 0.33, 0.3, 0.03)
    config = PolicyConfig(objective="quality", calibrated_thresholds_pct=calibrated)
    assert loss_threshold(config, -1.0) == 0.45 and loss_threshold(config, 1.0) == 0.03


def test_a_calibrated_threshold_equal_to_the_tolerance_is_still_called_calibrated():
    """The grid fit searches holds the tolerance itself; the summary must not take such a policy for an old one."""
    calibrated = (10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1)
    choice = choose_steps(FixedLosses(torch.tensor([[2.0, 0.5, 0.0]]), (10, 20, 30), calibrated=calibrated),
                          torch.randn(1, 77, 768))
    assert choice.threshold_pct == 1.0 and "within 1% of 30 steps, calibrated for 1% on average" in choice.summary()
    old = choose_steps(FixedLosses(torch.tensor([[2.0, 0.5, 0.0]]), (10, 20, 30)), torch.randn(1, 77, 768))
    assert old.threshold_pct is None and old.summary().splitlines()[0] == (
        "AdaDiff: 20 steps (fewest whose predicted quality is within 1% of 30 steps; predicted loss in % per option)")
