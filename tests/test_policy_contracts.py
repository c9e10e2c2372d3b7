"""Exact promises of the policy's decision and network that the mutation run (`make mutation`) found unguarded."""
import pytest
import torch

from adadiff.policy import PolicyConfig, StepChoice, init_policy
from adadiff.policy.decision import first_within
from adadiff.policy.network import normalise_tokens


def test_a_reinforce_summary_reads_exactly_one_line_per_prompt():
    """The console line the hosts print: chosen steps, then each prompt's distribution to two decimals."""
    choice = StepChoice(20, (20, 10), torch.tensor([[0.125, 0.875], [0.5, 0.5]]), (10, 20))
    assert choice.summary() == ("AdaDiff: 20 steps\n"
                                "prompt 0: 20 steps (10:0.12, 20:0.88)\n"
                                "prompt 1: 10 steps (10:0.50, 20:0.50)")


def test_a_loss_exactly_at_the_tolerance_is_accepted():
    """'Within the tolerance' includes the tolerance itself: 1.0% loss is taken at a 1% tolerance."""
    losses = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
    assert first_within(losses, 1.0).tolist() == [1, 0]


def test_the_pre_normalised_path_reads_the_pooled_vector():
    """The trainer's path gives the host's outputs for an SDXL-like policy too: the pooled vector is not dropped."""
    config = PolicyConfig(token_dim=48, pooled_dim=24, width=16, heads=2, depth=1, dropout=0.0)
    policy = init_policy(config, seed=3)
    tokens, mask, pooled = 3 * torch.randn(2, 7, 48), torch.ones(2, 7, dtype=torch.bool), 4 * torch.randn(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(policy.forward_normalised(normalise_tokens(tokens), mask, pooled),
                                   policy(tokens, mask, pooled), atol=1e-4, rtol=1e-4)
