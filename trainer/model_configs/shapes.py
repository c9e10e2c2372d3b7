"""Read a single-file checkpoint's architecture from its tensor shapes.

The shipped configs describe the released models; fine-tunes share their shapes, but pruned, extended or test
checkpoints may not. Every field that shows in a shape (widths, depths, which levels attend, text-encoder size) is
taken from the checkpoint, so the converted model always matches the file. Attention head counts do not show in
shapes: they come from the family's rule (SD1.x: 8 heads; SD2.x/SDXL UNets and every CLIP text encoder: 64-wide
heads).
"""
from __future__ import annotations

import re
from collections import defaultdict

_HEAD_WIDTH = 64


def _block_parts(keys, prefix: str) -> dict[int, set[str]]:
    """{block index: key suffixes} for keys `<prefix><index>.<suffix>`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    parts = defaultdict(set)
    for key in keys:
        match = pattern.match(key)
        if match:
            parts[int(match.group(1))].add(match.group(2))
    return parts


def _count(keys, prefix: str) -> int:
    parts = _block_parts(keys, prefix)
    return max(parts) + 1 if parts else 0


def unet_config(shapes: dict, prefix: str, base: dict) -> dict:
    """The family's UNet config with the structure of the checkpoint's `<prefix>input_blocks...` tensors."""
    levels = [{"channels": 0, "res": 0, "depth": 0}]
    blocks = _block_parts(shapes, prefix + "input_blocks.")
    for index in sorted(blocks)[1:]:
        if "0.op.weight" in blocks[index]:  # a downsampler closes the level
            levels.append({"channels": 0, "res": 0, "depth": 0})
            continue
        level = levels[-1]
        level["channels"] = shapes[f"{prefix}input_blocks.{index}.0.out_layers.3.weight"][0]
        level["res"] += 1
        level["depth"] = max(level["depth"], _count(blocks[index], "1.transformer_blocks."))
    if len({level["res"] for level in levels}) != 1:
        raise ValueError(f"unsupported UNet layout: levels have {[lv['res'] for lv in levels]} res blocks")
    attends = [level["depth"] > 0 for level in levels]
    channels = [level["channels"] for level in levels]
    config = dict(base)
    config.update(
        in_channels=shapes[prefix + "input_blocks.0.0.weight"][1],
        out_channels=shapes[prefix + "out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=levels[0]["res"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
    )
    to_k = next(k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight"))
    config["cross_attention_dim"] = shapes[to_k][1]
    if isinstance(base["attention_head_dim"], list):  # SD2.x / SDXL: heads of width 64 (5, 10, 20 at 320...1280)
        config["attention_head_dim"] = [max(1, c // _HEAD_WIDTH) for c in channels]
    if isinstance(base.get("transformer_layers_per_block"), list):
        config["transformer_layers_per_block"] = [max(1, level["depth"]) for level in levels]
    if prefix + "label_emb.0.0.weight" in shapes:  # SDXL: pooled text + 6 size/crop embeddings
        config["projection_class_embeddings_input_dim"] = shapes[prefix + "label_emb.0.0.weight"][1]
    return config


def vae_config(shapes: dict, prefix: str, base: dict) -> dict:
    levels = _count(shapes, prefix + "encoder.down.")
    config = dict(base)
    config.update(
        in_channels=shapes[prefix + "encoder.conv_in.weight"][1],
        out_channels=shapes[prefix + "decoder.conv_out.weight"][0],
        latent_channels=shapes[prefix + "quant_conv.weight"][0] // 2,
        block_out_channels=[shapes[f"{prefix}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)],
        layers_per_block=_count(shapes, prefix + "encoder.down.0.block."),
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )
    return config


def clip_text_config(shapes: dict, prefix: str, base: dict) -> dict:
    """A Hugging Face-layout CLIP text encoder (`<prefix>text_model.` or, saved by transformers 5, `<prefix>`)."""
    if prefix + "text_model.embeddings.token_embedding.weight" in shapes:
        prefix += "text_model."
    vocab, width = shapes[prefix + "embeddings.token_embedding.weight"]
    return _text_config(base, vocab, width, shapes[prefix + "embeddings.position_embedding.weight"][0],
                        _count(shapes, prefix + "encoder.layers."),
                        shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0])


def open_clip_text_config(shapes: dict, prefix: str, base: dict, *, drop_last_layer: bool = False) -> dict:
    """An OpenCLIP text tower (`<prefix>transformer.resblocks...`). SD2.x reads the penultimate layer's states,
    so its converted encoder stops one layer early (diffusers skips the last layer's weights)."""
    vocab, width = shapes[prefix + "token_embedding.weight"]
    layers = _count(shapes, prefix + "transformer.resblocks.") - int(drop_last_layer)
    config = _text_config(base, vocab, width, shapes[prefix + "positional_embedding"][0], layers,
                          shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0])
    if prefix + "text_projection" in shapes:
        config["projection_dim"] = shapes[prefix + "text_projection"][1]
    return config


def _text_config(base: dict, vocab: int, width: int, positions: int, layers: int, intermediate: int) -> dict:
    config = dict(base)
    config.update(vocab_size=vocab, hidden_size=width, max_position_embeddings=positions, num_hidden_layers=layers,
                  intermediate_size=intermediate, num_attention_heads=max(1, width // _HEAD_WIDTH))
    return config
