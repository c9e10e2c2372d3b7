"""The prompt syntaxes rule by rule (parsing, chunking, weighting), and the same encoding path on SD2.x and SDXL.

The comparisons with the real hosts are in tests/test_prompt_syntax_hosts.py; here each documented rule is pinned
down on its own, with CLIP's real vocabulary, so a regression names the rule it broke.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTokenizer

from adadiff.trainer.config import GenerateSettings, TrainerInputError
from adadiff.trainer.model_configs.clip_vocab import write_clip_vocab
from adadiff.trainer.models import encode_prompts, host_conditioning, load_pipeline
from adadiff.trainer.prompt_syntax import (a1111_chunks, a1111_weighted_pieces, comfyui_chunks,
                                           comfyui_weighted_pieces, prompt_chunks, strip_extra_network_tags)
from adadiff.trainer.prompt_syntax_encoding import encode_with_syntax

from test_models_single_file import RELEASE_EXTRAS, TINY, single_file_state


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("clip-vocab")
    write_clip_vocab(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def assert_pieces(pieces, expected):
    assert [text for text, _ in pieces] == [text for text, _ in expected]
    assert [weight for _, weight in pieces] == pytest.approx([weight for _, weight in expected])


# --- parsing -----------------------------------------------------------------------------------------------------


def test_a1111_attention_follows_the_webuis_documented_examples():
    assert_pieces(a1111_weighted_pieces("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."), [
        ("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)])
    assert a1111_weighted_pieces("(unbalanced") == [("unbalanced", pytest.approx(1.1))]
    assert a1111_weighted_pieces("\\(literal\\]") == [("(literal]", 1.0)]
    assert a1111_weighted_pieces("(unnecessary)(parens)") == [("unnecessaryparens", pytest.approx(1.1))]
    assert a1111_weighted_pieces("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1), ("a dog", 1.0)]
    assert a1111_weighted_pieces("[a:b:0.5] [x|y]") == [("a:b:0.5", pytest.approx(1 / 1.1)), (" ", 1.0),
                                                         ("x|y", pytest.approx(1 / 1.1))]


def test_comfyui_weights_replace_explicitly_multiply_plainly_and_keep_everything_else_literal():
    assert_pieces(comfyui_weighted_pieces("a ((house:1.3)) (on) [under] \\(x\\) (deep (deeper))"), [
        ("a ", 1.0), ("house", 1.3), (" ", 1.0), ("on", 1.1), (" [under] (x) ", 1.0), ("deep ", 1.1),
        ("deeper", 1.21)])
    assert comfyui_weighted_pieces("(unbalanced") == [("(unbalanced", 1.0)]
    assert comfyui_weighted_pieces("(a:b:0.5) <lora:x:1> BREAK") == [("a:b", 0.5), (" <lora:x:1> BREAK", 1.0)]
    assert comfyui_weighted_pieces("(not a weight:high)") == [("not a weight:high", pytest.approx(1.1))]


def test_a1111_removes_extra_network_tags_and_comfyui_reads_them_as_text(tokenizer):
    assert strip_extra_network_tags("a castle <lora:detail:0.8>, <hypernet:x:1> sky") == "a castle ,  sky"
    assert a1111_chunks(tokenizer, "a castle <lora:detail:0.8>") == a1111_chunks(tokenizer, "a castle")
    assert comfyui_chunks(tokenizer, "a castle <lora:detail:0.8>") != comfyui_chunks(tokenizer, "a castle")


def test_comfyui_drops_embedding_names_it_cannot_load(tokenizer):
    assert comfyui_chunks(tokenizer, "a cat embedding:style, sky") == comfyui_chunks(tokenizer, "a cat , sky")


# --- chunking ----------------------------------------------------------------------------------------------------


def test_plain_long_prompts_are_cut_at_75_tokens_by_comfyui(tokenizer):
    text = " ".join(["cat"] * 120)
    chunks = comfyui_chunks(tokenizer, text)
    assert [len(c.ids) for c in chunks] == [75, 45]
    assert list(chunks[0].ids + chunks[1].ids) == ids(tokenizer, text)


def test_comfyui_moves_a_short_weighted_piece_whole_to_the_next_chunk(tokenizer):
    head = " ".join(["cat"] * 73)
    chunks = comfyui_chunks(tokenizer, head + " (red fox:1.2)")  # 73 + 2 + 1 + ... tokens: the piece fits
    assert [len(c.ids) for c in chunks] == [75]
    chunks = comfyui_chunks(tokenizer, head + " (big red fox:1.2)")  # 3 tokens, 2 left: moves whole
    assert [len(c.ids) for c in chunks] == [73, 3] and chunks[1].weights == (1.2,) * 3


def test_a1111_moves_the_cut_back_to_a_comma_within_20_tokens(tokenizer):
    text = " ".join(["cat"] * 65) + ", " + " ".join(["dog"] * 15)  # comma is token 66; 81 tokens in all
    chunks = a1111_chunks(tokenizer, text)
    assert [len(c.ids) for c in chunks] == [66, 15]
    far = " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 30)  # comma 25 tokens before the limit: no backtrack
    assert [len(c.ids) for c in a1111_chunks(tokenizer, far)] == [75, 6]
    assert [len(c.ids) for c in comfyui_chunks(tokenizer, text)] == [75, 6]


def test_a1111_break_starts_a_new_chunk(tokenizer):
    chunks = a1111_chunks(tokenizer, "a cat BREAK a dog")
    assert [c.ids for c in chunks] == [tuple(ids(tokenizer, "a cat")), tuple(ids(tokenizer, "a dog"))]
    assert len(comfyui_chunks(tokenizer, "a cat BREAK a dog")) == 1


def test_plain_is_one_window_and_unknown_syntaxes_are_refused(tokenizer):
    assert [len(c.ids) for c in prompt_chunks(tokenizer, "cat " * 100, "plain")] == [75]
    with pytest.raises(ValueError, match="comfyui, a1111, plain"):
        prompt_chunks(tokenizer, "a cat", "comfy")
    with pytest.raises(TrainerInputError, match="--prompt-syntax must be one of comfyui, a1111, plain"):
        GenerateSettings(prompt_syntax="webui")
    assert GenerateSettings().prompt_syntax == "comfyui"


# --- weighting and encoders --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-checkpoints")
    loaded = {}
    for family in ("sd15", "sd2", "sdxl"):
        layout = TINY[family]
        state = {**single_file_state(layout), **RELEASE_EXTRAS}
        state.update({text[0] + "embeddings.position_ids": torch.arange(77)[None] for text in layout.texts
                      if text[1] == "hf"})
        save_file(state, folder / f"tiny-{family}.safetensors")
        loaded[family] = load_pipeline(str(folder / f"tiny-{family}.safetensors"))
    return loaded


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
@pytest.mark.parametrize("syntax", ["comfyui", "a1111"])
def test_plain_short_prompts_encode_as_diffusers_does(pipelines, family, syntax):
    """Both hosts' readers give a plain prompt the states (and SDXL's pooled vector) diffusers' encode_prompt gives:
    the same pad token, the same layer (SD2: final-normed; SDXL: penultimate of both encoders, not normed)."""
    pipe = pipelines[family]
    prompts = ["a red circle", "two blue squares on a green background"]
    embeds, pooled = encode_prompts(pipe, prompts)
    for index, (states, our_pooled) in enumerate(host_conditioning(pipe, prompts, syntax)):
        torch.testing.assert_close(states, embeds[index:index + 1], atol=1e-5, rtol=0)
        if family == "sdxl":
            torch.testing.assert_close(our_pooled, pooled[index:index + 1], atol=1e-5, rtol=0)
        else:
            assert our_pooled is None


def test_sdxl_long_weighted_prompts_span_chunks_and_pool_the_first(pipelines):
    pipe = pipelines["sdxl"]
    first = " ".join(["cat"] * 75)
    (states, pooled), = encode_with_syntax(pipe, [first + " (dog:1.4)"], "comfyui")
    (alone, alone_pooled), = encode_with_syntax(pipe, [first], "comfyui")
    assert states.shape == (1, 154, 96)
    torch.testing.assert_close(states[:, :77], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, alone_pooled, atol=1e-5, rtol=0)


def test_comfyui_weights_pull_tokens_from_the_empty_prompt_and_leave_the_rest(pipelines):
    pipe = pipelines["sd15"]
    (weighted, _), (plain, _), (empty, _) = encode_with_syntax(pipe, ["a (red:1.5) circle", "a red circle", ""],
                                                               "comfyui")
    red = 2  # start, a, red
    torch.testing.assert_close(weighted[0, red], empty[0, red] + (plain[0, red] - empty[0, red]) * 1.5,
                               atol=1e-5, rtol=0)
    untouched = [i for i in range(77) if i != red]
    torch.testing.assert_close(weighted[0, untouched], plain[0, untouched], atol=1e-6, rtol=0)


def test_a1111_weights_scale_tokens_and_keep_each_chunks_mean(pipelines):
    pipe = pipelines["sd15"]
    first = " ".join(["cat"] * 75)
    (weighted, _), (plain, _) = encode_with_syntax(pipe, [f"{first} a (red:1.5) circle", f"{first} a red circle"],
                                                   "a1111")
    chunk = slice(77, 154)
    torch.testing.assert_close(weighted[0, chunk].mean(), plain[0, chunk].mean(), atol=1e-6, rtol=1e-5)
    scale = plain[0, chunk].mean() / (plain[0, chunk] * torch.tensor([1.5 if i == 2 else 1.0 for i in range(77)])[:, None]).mean()
    torch.testing.assert_close(weighted[0, 77 + 2], plain[0, 77 + 2] * 1.5 * scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weighted[0, :77], plain[0, :77], atol=1e-6, rtol=0)  # an unweighted chunk is as it was


def test_sdxl_a1111_weights_keep_each_text_encoders_own_mean(pipelines):
    """Under ``a1111`` SDXL's CLIP-L and CLIP-G states are each rescaled to their own chunk mean, as the webui weighs
    inside each embedder before joining them, not the joined [77, 768 + 1280] chunk to one mean."""
    pipe = pipelines["sdxl"]
    (weighted, _), (plain, _) = encode_with_syntax(pipe, ["a (red:1.5) circle on a [blue] square",
                                                          "a red circle on a blue square"], "a1111")
    width = pipe.text_encoder.config.hidden_size
    for half in (slice(0, width), slice(width, None)):
        torch.testing.assert_close(weighted[0, :, half].mean(), plain[0, :, half].mean(), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(weighted, plain, atol=1e-3)  # the weights did change the states
