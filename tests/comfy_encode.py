"""Run a real ComfyUI's own checkpoint loader and CLIPTextEncode on a list of prompts and save what they return.

Started as a subprocess by the tests (``python comfy_encode.py COMFY_DIR CHECKPOINT PROMPTS.json OUT.safetensors``)
so that ComfyUI's top-level modules (``nodes``, ``comfy``, ``utils``) never enter the test process. Writes
``cond.<i>`` ([1, 77 * chunks, D], the CONDITIONING tensor) and ``pooled.<i>`` (its ``pooled_output``) per prompt.
"""
from __future__ import annotations

import json
import sys


def main(comfy_dir: str, checkpoint: str, prompts_file: str, out_file: str) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()  # as main.py does, so that --cpu is read
    import comfy.sd
    import nodes
    from safetensors.torch import save_file

    with open(prompts_file, encoding="utf-8") as handle:
        prompts = json.load(handle)
    _, clip, *_ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clipvision=False)
    tensors = {}
    for index, prompt in enumerate(prompts):
        (conditioning,) = nodes.CLIPTextEncode().encode(clip, prompt)
        (cond, extras), = conditioning
        tensors[f"cond.{index}"] = cond.float().contiguous()
        tensors[f"pooled.{index}"] = extras["pooled_output"].float().contiguous()
    save_file(tensors, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:5])
