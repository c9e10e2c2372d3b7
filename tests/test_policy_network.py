import pytest
import torch

from adadiff.policy import PAPER_OPTIONS, PolicyConfig, StepPolicy, init_policy
from adadiff.policy.network import encoder_layer, normalise_tokens


def test_default_policy_is_small_and_reads_paper_options():
    policy = init_policy(PolicyConfig())
    assert policy.config.options == PAPER_OPTIONS
    parameters = sum(p.numel() for p in policy.parameters())
    assert parameters * 4 <= 8 * 2**20  # fp32 file stays within 8 MB


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = init_policy(PolicyConfig(), seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    second = init_policy(PolicyConfig(), seed=7)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    third = init_policy(PolicyConfig(), seed=8)
    assert not torch.equal(first.head[-1].weight, third.head[-1].weight)


def test_padding_tokens_do_not_change_the_output():
    policy = init_policy(PolicyConfig(width=64, heads=4, dropout=0.0))
    tokens = torch.randn(1, 77, 768)
    mask = torch.ones(1, 77, dtype=torch.bool)
    padded = torch.cat([tokens, torch.randn(1, 77, 768) * 100], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 77, dtype=torch.bool)], 1)
    with torch.no_grad():
        assert torch.allclose(policy(tokens, mask), policy(padded, padded_mask), atol=1e-5)


def test_pooled_vector_is_used_when_configured():
    policy = init_policy(PolicyConfig(token_dim=2048, pooled_dim=1280, dropout=0.0))
    tokens, mask = torch.randn(1, 77, 2048), torch.ones(1, 77, dtype=torch.bool)
    with torch.no_grad():
        a = policy(tokens, mask, torch.randn(1, 1280))
        b = policy(tokens, mask, torch.randn(1, 1280))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "settings",
    [
        {"options": (5,)},
        {"options": (10, 5)},
        {"options": (5, 5, 10)},
        {"options": (0, 5)},
        {"options": (5.5, 10)},
        {"width": 130, "heads": 4},
        {"token_dim": 0},
        {"token_dim": True},
        {"depth": 100},
        {"dropout": 1.5},
    ],
)
def test_invalid_configs_are_refused_with_the_setting_named(settings):
    with pytest.raises(ValueError) as error:
        PolicyConfig(**settings)
    assert any(word in str(error.value) for word in ("option", *settings))


def test_config_round_trips_through_dict_and_refuses_unknown_keys():
    config = PolicyConfig(options=(4, 8, 16), token_dim=1024, width=64)
    assert PolicyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown policy settings"):
        PolicyConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_policy_name_comes_from_its_file():
    assert StepPolicy(PolicyConfig(), source="/some/where/sdxl_fast.safetensors").name == "sdxl_fast.safetensors"
    assert "sd15" in StepPolicy(PolicyConfig(), info={"model_family": "sd15"}).name


@pytest.mark.parametrize("objective", ["reinforce", "quality"])
def test_the_trainers_pre_normalised_path_is_the_hosts_forward(objective):
    policy = init_policy(PolicyConfig(token_dim=96, width=32, heads=4, depth=1, dropout=0.0, objective=objective))
    with torch.no_grad():
        policy.token_norm.weight.normal_()
        policy.token_norm.bias.normal_()
        tokens, mask = 5 * torch.randn(3, 20, 96), torch.ones(3, 20, dtype=torch.bool)
        mask[1, 15:] = False
        torch.testing.assert_close(policy.forward_normalised(normalise_tokens(tokens), mask), policy(tokens, mask),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_the_written_out_encoder_layer_is_torchs(grad):
    """Old policy files hold torch's TransformerEncoderLayer weights: the written-out layer must compute what it does,
    padded rows included (compared on their real tokens; torch's fused path zeroes padded ones)."""
    layer = init_policy(PolicyConfig(token_dim=32, width=32, heads=4, depth=1, dropout=0.0)).encoder.layers[0]
    with torch.no_grad():
        for parameter in layer.parameters():  # a fitted layer's weights: biases (zero at init) included
            parameter.normal_(0, 0.3)
    x, mask = torch.randn(3, 12, 32), torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.set_grad_enabled(grad):
        ours = encoder_layer(layer, x, mask[:, None, None, :])
        torchs = layer(x, src_key_padding_mask=~mask)
    torch.testing.assert_close(ours[mask], torchs[mask], atol=1e-5, rtol=1e-5)
