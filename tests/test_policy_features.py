"""The same prompt through each host's wrapping gives the same policy input and the same decision."""
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from adadiff.policy import PolicyConfig, choose_steps, init_policy, option_logits, policy_features
from adadiff.policy.features import SDXL_POOLED_WIDTH


def _encoder_output(width: int, model_class=CLIPTextModel, projection: int | None = None, batch: int = 2):
    """Real CLIP text-encoder output for a batch of end-token-padded prompts, as hosts compute it."""
    settings = dict(vocab_size=1000, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, eos_token_id=999)
    if projection:
        settings["projection_dim"] = projection
    torch.manual_seed(0)
    encoder = model_class(CLIPTextConfig(**settings)).eval()
    ids = torch.full((batch, 77), 999)
    ids[:, 0] = 998
    ids[:, 1:6] = torch.randint(1, 990, (batch, 5))
    with torch.no_grad():
        output = encoder(ids)
    pooled = output.text_embeds if projection else output.pooler_output
    return output.last_hidden_state, pooled


def test_sd15_comfy_a1111_and_diffusers_agree():
    states, pooled = _encoder_output(768)
    comfy = policy_features([[states, {"pooled_output": pooled}]])
    a1111 = policy_features(states)  # get_learned_conditioning: a plain tensor, no pooled vector for SD1
    diffusers = policy_features(states)
    for features in (comfy, a1111, diffusers):
        assert torch.equal(features.tokens, states)
        assert features.mask.all()
    policy = init_policy(PolicyConfig())
    reference = option_logits(policy, a1111)
    assert torch.allclose(option_logits(policy, comfy), reference)  # ComfyUI's extra pooled vector is ignored
    assert choose_steps(policy, comfy).per_prompt == choose_steps(policy, a1111).per_prompt


def test_sdxl_comfy_a1111_and_diffusers_agree():
    states_l, _ = _encoder_output(768)
    states_g, pooled_g = _encoder_output(1280, CLIPTextModelWithProjection, projection=SDXL_POOLED_WIDTH)
    crossattn = torch.cat([states_l, states_g], -1)
    size_embeddings = torch.randn(2, 1536)
    a1111 = policy_features({"crossattn": crossattn, "vector": torch.cat([pooled_g, size_embeddings], -1)})
    comfy = policy_features([[crossattn, {"pooled_output": pooled_g}]])
    diffusers = policy_features(crossattn, pooled=pooled_g)
    for features in (a1111, comfy, diffusers):
        assert torch.equal(features.tokens, crossattn)
        assert torch.equal(features.pooled, pooled_g)
    policy = init_policy(PolicyConfig(token_dim=2048, pooled_dim=1280))
    assert choose_steps(policy, a1111).per_prompt == choose_steps(policy, comfy).per_prompt


def test_long_prompts_and_several_entries_become_masked_rows():
    short = torch.randn(1, 77, 768)
    long = torch.randn(2, 154, 768)  # two 77-token chunks, batch of two
    features = policy_features([[short, {}], [long, {}]])
    assert features.tokens.shape == (3, 154, 768)
    assert features.mask[0].sum() == 77 and features.mask[1:].all()
    assert torch.equal(features.tokens[0, :77], short[0])
    assert features.pooled is None  # not every entry had one


def test_two_dimensional_states_are_one_prompt():
    assert policy_features(torch.randn(77, 768)).batch_size == 1


def test_dtype_and_device_are_kept_for_the_policy_to_convert():
    features = policy_features(torch.randn(1, 77, 768, dtype=torch.float16))
    assert features.tokens.dtype == torch.float16


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        ([["not a tensor", {}]], "not a \\[tensor, dict\\] pair"),
        ([[torch.randn(1, 77, 768), {}], [torch.randn(1, 77, 1024), {}]], "different widths"),
        (torch.randn(1, 0, 768), "empty"),
        (torch.randn(5), "\\[batch, tokens, width\\]"),
        ({"vector": torch.randn(1, 2816)}, "crossattn"),
    ],
)
def test_unusable_conditioning_is_refused_with_a_reason(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        policy_features(bad)


def test_unknown_types_are_refused():
    with pytest.raises(TypeError, match="cannot read prompt conditioning"):
        policy_features("a cat")
