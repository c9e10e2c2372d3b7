"""Single-file checkpoints (.safetensors and .ckpt; SD1.x, SD2.x, SDXL) converted offline through diffusers.

The checkpoints are written here in the standard single-file key layout (the one A1111, ComfyUI and civitai files
use) with random weights and reduced depth and width. The same writer, run on the meta device at full size, checks
that the shipped configs describe the released architectures.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, infer_diffusers_model_type
from safetensors.torch import save_file

from adadiff.trainer.model_configs import FAMILIES, Checkpoint, detect_family, prediction_type, shapes
from adadiff.trainer.models import encode_prompts, load_pipeline, model_info

UNET, VAE = "model.diffusion_model.", "first_stage_model."


@dataclass(frozen=True)
class Layout:
    """The architecture of a checkpoint to write."""

    family: str
    unet_channels: tuple[int, ...]
    attention_depth: tuple[int, ...]  # transformer blocks per UNet level, 0 = no attention
    res_blocks: int
    linear_projection: bool
    mid_depth: int
    vae_channels: tuple[int, ...]
    vae_res_blocks: int
    texts: tuple[tuple[str, str, int, int, int, int], ...]  # (prefix, layout, width, layers, mlp, projection)


CLIP_L = "cond_stage_model.transformer.text_model."
OPEN_CLIP_H = "cond_stage_model.model."
XL_L, XL_G = "conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."

TINY = {
    "sd15": Layout("sd15", (32, 64), (1, 0), 1, False, 1, (32, 64), 1, ((CLIP_L, "hf", 32, 2, 64, 0),)),
    "sd2": Layout("sd2", (32, 64), (1, 0), 1, True, 1, (32, 64), 1, ((OPEN_CLIP_H, "open_clip", 32, 24, 64, 32),)),
    "sdxl": Layout("sdxl", (32, 64), (0, 2), 1, True, 2, (32, 64), 1,
                   ((XL_L, "hf", 32, 2, 64, 0), (XL_G, "open_clip", 64, 2, 128, 48))),
}
FULL = {
    "sd15": Layout("sd15", (320, 640, 1280, 1280), (1, 1, 1, 0), 2, False, 1, (128, 256, 512, 512), 2,
                   ((CLIP_L, "hf", 768, 12, 3072, 0),)),
    "sd2": Layout("sd2", (320, 640, 1280, 1280), (1, 1, 1, 0), 2, True, 1, (128, 256, 512, 512), 2,
                  ((OPEN_CLIP_H, "open_clip", 1024, 24, 4096, 1024),)),
    "sdxl": Layout("sdxl", (320, 640, 1280), (0, 2, 10), 2, True, 10, (128, 256, 512, 512), 2,
                   ((XL_L, "hf", 768, 12, 3072, 0), (XL_G, "open_clip", 1280, 32, 5120, 1280))),
}


# What released files carry besides the three models: DDPM schedule buffers and EMA bookkeeping.
RELEASE_EXTRAS = {
    "betas": torch.linspace(1e-4, 2e-2, 1000), "alphas_cumprod": torch.linspace(0.999, 0.005, 1000),
    "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(470000, dtype=torch.int32),
    "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(32, 4, 3, 3),
}


class _Writer:
    """Collects tensors under their single-file names: random (seeded) or shape-only on the meta device."""

    def __init__(self, meta: bool, seed: int = 0):
        self.meta, self.tensors = meta, {}
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, name: str, *shape: int, scale: float = 0.05, offset: float = 0.0):
        if self.meta:
            self.tensors[name] = torch.empty(shape, device="meta")
        else:
            self.tensors[name] = offset + scale * torch.randn(shape, generator=self.generator)

    def norm(self, name: str, width: int):  # non-zero biases: hosts' emphasis maths divides by means
        self.add(name + ".weight", width, offset=1.0)
        self.add(name + ".bias", width)

    def linear(self, name: str, out: int, inp: int, *kernel: int, bias: bool = True):
        self.add(name + ".weight", out, inp, *kernel)
        if bias:
            self.add(name + ".bias", out)


def _unet_resblock(w: _Writer, name: str, inp: int, out: int, time: int):
    w.norm(name + "in_layers.0", inp)
    w.linear(name + "in_layers.2", out, inp, 3, 3)
    w.linear(name + "emb_layers.1", out, time)
    w.norm(name + "out_layers.0", out)
    w.linear(name + "out_layers.3", out, out, 3, 3)
    if inp != out:
        w.linear(name + "skip_connection", out, inp, 1, 1)


def _unet_attention(w: _Writer, name: str, width: int, depth: int, context: int, linear: bool):
    kernel = () if linear else (1, 1)
    w.norm(name + "norm", width)
    w.linear(name + "proj_in", width, width, *kernel)
    for block in range(depth):
        b = f"{name}transformer_blocks.{block}."
        for attention, source in (("attn1", width), ("attn2", context)):
            w.linear(f"{b}{attention}.to_q", width, width, bias=False)
            w.linear(f"{b}{attention}.to_k", width, source, bias=False)
            w.linear(f"{b}{attention}.to_v", width, source, bias=False)
            w.linear(f"{b}{attention}.to_out.0", width, width)
        w.linear(b + "ff.net.0.proj", 8 * width, width)
        w.linear(b + "ff.net.2", width, 4 * width)
        for norm in ("norm1", "norm2", "norm3"):
            w.norm(b + norm, width)
    w.linear(name + "proj_out", width, width, *kernel)


def _unet(w: _Writer, layout: Layout, context: int, pooled: int):
    base, time = layout.unet_channels[0], 4 * layout.unet_channels[0]
    w.linear(UNET + "time_embed.0", time, base)
    w.linear(UNET + "time_embed.2", time, time)
    if layout.family == "sdxl":
        w.linear(UNET + "label_emb.0.0", time, pooled + 6 * 256)
        w.linear(UNET + "label_emb.0.2", time, time)
    w.linear(UNET + "input_blocks.0.0", base, 4, 3, 3)
    skips, current, index = [base], base, 1
    for level, (width, depth) in enumerate(zip(layout.unet_channels, layout.attention_depth)):
        for _ in range(layout.res_blocks):
            _unet_resblock(w, f"{UNET}input_blocks.{index}.0.", current, width, time)
            if depth:
                _unet_attention(w, f"{UNET}input_blocks.{index}.1.", width, depth, context, layout.linear_projection)
            skips.append(width)
            current, index = width, index + 1
        if level < len(layout.unet_channels) - 1:
            w.linear(f"{UNET}input_blocks.{index}.0.op", width, width, 3, 3)
            skips.append(width)
            index += 1
    _unet_resblock(w, UNET + "middle_block.0.", current, current, time)
    _unet_attention(w, UNET + "middle_block.1.", current, layout.mid_depth, context, layout.linear_projection)
    _unet_resblock(w, UNET + "middle_block.2.", current, current, time)
    index = 0
    for level in reversed(range(len(layout.unet_channels))):
        width, depth = layout.unet_channels[level], layout.attention_depth[level]
        for block in range(layout.res_blocks + 1):
            _unet_resblock(w, f"{UNET}output_blocks.{index}.0.", current + skips.pop(), width, time)
            if depth:
                _unet_attention(w, f"{UNET}output_blocks.{index}.1.", width, depth, context, layout.linear_projection)
            if level and block == layout.res_blocks:
                w.linear(f"{UNET}output_blocks.{index}.{2 if depth else 1}.conv", width, width, 3, 3)
            current, index = width, index + 1
    w.norm(UNET + "out.0", base)
    w.linear(UNET + "out.2", 4, base, 3, 3)


def _vae_resblock(w: _Writer, name: str, inp: int, out: int):
    w.norm(name + "norm1", inp)
    w.linear(name + "conv1", out, inp, 3, 3)
    w.norm(name + "norm2", out)
    w.linear(name + "conv2", out, out, 3, 3)
    if inp != out:
        w.linear(name + "nin_shortcut", out, inp, 1, 1)


def _vae_middle(w: _Writer, name: str, width: int):
    _vae_resblock(w, name + "mid.block_1.", width, width)
    w.norm(name + "mid.attn_1.norm", width)
    for part in ("q", "k", "v", "proj_out"):
        w.linear(f"{name}mid.attn_1.{part}", width, width, 1, 1)
    _vae_resblock(w, name + "mid.block_2.", width, width)


def _vae(w: _Writer, layout: Layout):
    channels, blocks = layout.vae_channels, layout.vae_res_blocks
    w.linear(VAE + "encoder.conv_in", channels[0], 3, 3, 3)
    current = channels[0]
    for level, width in enumerate(channels):
        for block in range(blocks):
            _vae_resblock(w, f"{VAE}encoder.down.{level}.block.{block}.", current, width)
            current = width
        if level < len(channels) - 1:
            w.linear(f"{VAE}encoder.down.{level}.downsample.conv", width, width, 3, 3)
    _vae_middle(w, VAE + "encoder.", current)
    w.norm(VAE + "encoder.norm_out", current)
    w.linear(VAE + "encoder.conv_out", 8, current, 3, 3)
    w.linear(VAE + "quant_conv", 8, 8, 1, 1)
    w.linear(VAE + "post_quant_conv", 4, 4, 1, 1)
    w.linear(VAE + "decoder.conv_in", current, 4, 3, 3)
    _vae_middle(w, VAE + "decoder.", current)
    for level in reversed(range(len(channels))):
        for block in range(blocks + 1):
            _vae_resblock(w, f"{VAE}decoder.up.{level}.block.{block}.", current, channels[level])
            current = channels[level]
        if level:
            w.linear(f"{VAE}decoder.up.{level}.upsample.conv", current, current, 3, 3)
    w.norm(VAE + "decoder.norm_out", current)
    w.linear(VAE + "decoder.conv_out", 3, current, 3, 3)


def _text(w: _Writer, prefix: str, style: str, width: int, layers: int, mlp: int, projection: int):
    if style == "hf":
        w.add(prefix + "embeddings.token_embedding.weight", 49408, width)
        w.add(prefix + "embeddings.position_embedding.weight", 77, width)
        for layer in range(layers):
            p = f"{prefix}encoder.layers.{layer}."
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                w.linear(f"{p}self_attn.{proj}", width, width)
            w.norm(p + "layer_norm1", width)
            w.norm(p + "layer_norm2", width)
            w.linear(p + "mlp.fc1", mlp, width)
            w.linear(p + "mlp.fc2", width, mlp)
        w.norm(prefix + "final_layer_norm", width)
        return
    w.add(prefix + "token_embedding.weight", 49408, width)
    w.add(prefix + "positional_embedding", 77, width)
    for layer in range(layers):
        p = f"{prefix}transformer.resblocks.{layer}."
        w.add(p + "attn.in_proj_weight", 3 * width, width)
        w.add(p + "attn.in_proj_bias", 3 * width)
        w.linear(p + "attn.out_proj", width, width)
        w.norm(p + "ln_1", width)
        w.norm(p + "ln_2", width)
        w.linear(p + "mlp.c_fc", mlp, width)
        w.linear(p + "mlp.c_proj", width, mlp)
    w.norm(prefix + "ln_final", width)
    w.add(prefix + "text_projection", width, projection)


def single_file_state(layout: Layout, meta: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    w = _Writer(meta, seed)
    for text in layout.texts:
        _text(w, *text)
    context = sum(text[2] for text in layout.texts)
    _unet(w, layout, context, pooled=layout.texts[-1][5])
    _vae(w, layout)
    return w.tensors


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single-file")
    written = {}
    for family, layout in TINY.items():
        state = {**single_file_state(layout), **RELEASE_EXTRAS}
        state.update({text[0] + "embeddings.position_ids": torch.arange(77)[None] for text in layout.texts
                      if text[1] == "hf"})
        save_file(state, folder / f"tiny-{family}.safetensors")
        written[family] = (folder / f"tiny-{family}.safetensors", state)
    torch.save({"state_dict": written["sd15"][1], "global_step": 1}, folder / "tiny-sd15.ckpt")
    return folder, written


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_full_size_layouts_are_the_released_architectures(family):
    """Fitting the shipped configs to a full-size file changes nothing, diffusers agrees on the family, and
    diffusers' own conversion maps the file onto exactly the UNet the config builds."""
    state = single_file_state(FULL[family], meta=True)
    assert infer_diffusers_model_type(state) == {"sd15": "v1", "sd2": "v2", "sdxl": "xl_base"}[family]
    found = {k: tuple(v.shape) for k, v in state.items()}
    folder = FAMILIES[family].folder
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert shapes.unet_config(found, UNET, unet) == unet
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert shapes.vae_config(found, VAE, vae) == vae
    with torch.device("meta"):
        expected = UNet2DConditionModel(**{k: v for k, v in unet.items() if not k.startswith("_")}).state_dict()
    converted = convert_ldm_unet_checkpoint(state, unet)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_full_size_text_encoder_configs():
    sd2 = single_file_state(FULL["sd2"], meta=True)
    found = {k: tuple(v.shape) for k, v in sd2.items()}
    config = json.loads((FAMILIES["sd2"].folder / "text_encoder" / "config.json").read_text())
    fitted = shapes.open_clip_text_config(found, OPEN_CLIP_H, config, drop_last_layer=True)
    assert fitted == {**config, "projection_dim": 1024}  # SD2's unused projection: only the size differs
    xl = {k: tuple(v.shape) for k, v in single_file_state(FULL["sdxl"], meta=True).items()}
    for component, prefix, rule in (("text_encoder", XL_L[:-len("text_model.")], shapes.clip_text_config),
                                    ("text_encoder_2", XL_G, shapes.open_clip_text_config)):
        config = json.loads((FAMILIES["sdxl"].folder / component / "config.json").read_text())
        assert rule(xl, prefix, config) == config


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_single_file_loads_offline_with_the_files_weights(files, family):
    path, state = files[1][family]
    pipe = load_pipeline(str(path))
    assert type(pipe) is (StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline)
    assert torch.equal(pipe.unet.conv_in.weight, state[UNET + "input_blocks.0.0.weight"])
    assert torch.equal(pipe.vae.encoder.conv_in.weight, state[VAE + "encoder.conv_in.weight"])
    first_text = TINY[family].texts[0]
    embedding = state[first_text[0] + ("embeddings.token_embedding.weight" if first_text[1] == "hf"
                                       else "token_embedding.weight")]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, embedding)
    if family == "sdxl":
        assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight, state[XL_G + "token_embedding.weight"])
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):  # nothing left unloaded
        if pipe.components.get(component) is not None:
            assert not any(p.is_meta for p in pipe.components[component].parameters()), component
    info = model_info(str(path), pipe)
    assert info["model_family"] == family and info["name"] == f"tiny-{family}"
    embeds, pooled = encode_prompts(pipe, ["a red circle", "a cat"])
    if family == "sdxl":
        assert embeds.shape == (2, 77, 32 + 64) and pooled.shape == (2, 48)
        assert (info["token_dim"], info["pooled_dim"]) == (96, 48)
    else:
        assert embeds.shape == (2, 77, 32) and pooled is None
    pad = pipe.tokenizer("a", padding="max_length", max_length=77).input_ids[-1]
    assert pad == (0 if family == "sd2" else 49407)  # SD2's tokenizer pads with "!", SD1's with the end token
    images = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_ckpt_loads_with_weights_only_to_the_same_model(files):
    folder, written = files
    from_ckpt = load_pipeline(str(folder / "tiny-sd15.ckpt"))
    from_safetensors = load_pipeline(str(written["sd15"][0]))
    for component in ("unet", "vae", "text_encoder"):
        ours, theirs = from_ckpt.components[component].state_dict(), from_safetensors.components[component].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model_info(str(folder / "tiny-sd15.ckpt"), from_ckpt)["model_family"] == "sd15"


class NotATensor:
    pass


def test_ckpt_with_python_objects_or_garbage_is_refused(files, tmp_path):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": files[1]["sd15"][1], "callback": NotATensor()}, unsafe)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"these are not the weights you are looking for")
    for path in (unsafe, garbage):
        with pytest.raises(ValueError, match="weights_only=True.*Python objects"):
            load_pipeline(str(path))


def test_legacy_ckpt_format_is_read_without_memory_mapping(files, tmp_path):
    state = files[1]["sd15"][1]
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    checkpoint = Checkpoint(legacy)
    assert checkpoint.shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert detect_family(checkpoint).name == "sd15"


def test_files_that_are_not_text_to_image_checkpoints_are_refused(files, tmp_path):
    state = files[1]["sd15"][1]
    cases = {
        "inpaint": {**state, UNET + "input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)},
        "refiner": {k.replace("cond_stage_model.transformer.", "conditioner.embedders.0.model."): v
                    for k, v in state.items()},
        "vae-only": {k: v for k, v in state.items() if k.startswith(VAE)},
    }
    messages = {"inpaint": "9-channel UNet input", "refiner": "SDXL refiner", "vae-only": "single-file layout"}
    for name, tensors in cases.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")
        with pytest.raises(ValueError, match=messages[name]):
            load_pipeline(str(tmp_path / f"{name}.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        load_pipeline(str(tmp_path / "broken.safetensors"))


def test_prediction_type(files, tmp_path, caplog):
    path, state = files[1]["sd2"]
    with caplog.at_level(logging.WARNING):
        assert prediction_type(FAMILIES["sd2"], Checkpoint(path), "v_prediction") == "epsilon"
    assert "cannot tell" in caplog.text
    probe = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    for spread, expected in ((0.2, "v_prediction"), (0.01, "epsilon")):
        save_file({**state, probe: spread * torch.randn(64)}, tmp_path / "probe.safetensors")
        assert prediction_type(FAMILIES["sd2"], Checkpoint(tmp_path / "probe.safetensors"), "x") == expected
    save_file({**files[1]["sd15"][1], "v_pred": torch.zeros(1)}, tmp_path / "vpred.safetensors")
    checkpoint = Checkpoint(tmp_path / "vpred.safetensors")
    assert detect_family(checkpoint).name == "sd15"
    assert prediction_type(FAMILIES["sd15"], checkpoint, "epsilon") == "v_prediction"
    assert load_pipeline(str(tmp_path / "vpred.safetensors")).scheduler.config.prediction_type == "v_prediction"
