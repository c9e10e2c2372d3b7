"""The prompt-syntax end-to-end check of tests/test_prompt_syntax_hosts.py in a real AUTOMATIC1111 webui.

Runs only when ``ADADIFF_WEBUI_URL`` points to a running webui started with ``--api`` that has this extension installed
(as for tests/test_a1111_real.py) and ``ADADIFF_WEBUI_DIR`` names that webui's folder on this machine: the test writes
the A1111 variant of the tiny SD1.5 checkpoint (``host_prompts.a1111_checkpoint``) into its
``models/Stable-diffusion`` with a ``.yaml`` for its shape, switches the webui to it over the API (and back
afterwards), and puts the policy into ``models/adadiff``.

The policy is fitted by the trainer exactly as in the CI end-to-end test, on the trainer's ``a1111`` table of that
checkpoint (``--prompt-syntax a1111``, as the README tells A1111 users). Each of AGREEMENT_PROMPTS then runs as its own
txt2img job with the AdaDiff accordion on, and the step count in each image's infotext must be the trainer's
``policy_choices`` on that table for at least 99% of the prompts. The webui reads each prompt with its own
``sd_model.get_learned_conditioning`` (emphasis, BREAK, comma backtrack, LoRA tags removed before the extension sees
the prompt), so this checks the trainer's reading and the extension's decision path together. Step choices tolerate
small differences in the reading (measured: the agreement stayed 31 of 31 with the trainer weighing A1111 prompts
without the mean rescale, or the ComfyUI way, and fell to 30 with BREAK read as text); the per-element check of the
reading is the webui fixture in tests/test_prompt_syntax_hosts.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from adadiff.policy import save_policy

from comfy_checkpoint import cached_tiny_sd15
from comfy_harness import CACHE_DIR
from host_prompts import AGREEMENT_PROMPTS, a1111_checkpoint, checkpoint_text_pipeline
from test_a1111_real import URL, USER_STEPS, adadiff, call, generate, settings_text
from test_prompt_syntax_hosts import trained_policy, trainer_steps, trainer_table

WEBUI_DIR = os.environ.get("ADADIFF_WEBUI_DIR", "")
POLICY_NAME = "adadiff-prompt-syntax-e2e.safetensors"


@pytest.fixture(scope="module")
def webui() -> Path:
    if not (URL and WEBUI_DIR):
        pytest.skip("set ADADIFF_WEBUI_URL and ADADIFF_WEBUI_DIR to a running webui with the extension to run")
    return Path(WEBUI_DIR)


def tiny_sd15_config(webui: Path) -> str:
    """The webui's own SD1.x config with the UNet shrunk as tests/comfy_checkpoint.py builds it: one resolution level
    with one res block and attention. (The webui always builds a middle block; the checkpoint has none, and the webui
    loads missing weights as zeros, which makes that block the identity.)"""
    config = yaml.safe_load((webui / "configs" / "v1-inference.yaml").read_text(encoding="utf-8"))
    config["model"]["params"]["unet_config"]["params"].update(channel_mult=[1], num_res_blocks=1,
                                                             attention_resolutions=[1])
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def webui_checkpoint(webui) -> Path:
    """The A1111 variant of the checkpoint, written into the webui and loaded there for the module's tests."""
    path = a1111_checkpoint(cached_tiny_sd15(CACHE_DIR), webui / "models" / "Stable-diffusion")
    path.with_suffix(".yaml").write_text(tiny_sd15_config(webui), encoding="utf-8")
    previous = call("/sdapi/v1/options")["sd_model_checkpoint"]
    call("/sdapi/v1/refresh-checkpoints", {})
    titles = [m["title"] for m in call("/sdapi/v1/sd-models") if Path(m["filename"]).resolve() == path.resolve()]
    assert titles, f"the webui does not list {path.name} after a refresh"
    call("/sdapi/v1/options", {"sd_model_checkpoint": titles[0]})
    yield path
    call("/sdapi/v1/options", {"sd_model_checkpoint": previous})


def test_the_webui_picks_the_trainers_steps_for_every_prompt(webui, webui_checkpoint, tmp_path, record_property):
    pipe = checkpoint_text_pipeline(webui_checkpoint, tmp_path / "clip-vocab")
    table = trainer_table(pipe, "a1111", tmp_path / "table-a1111")
    policy = trained_policy(table)
    save_policy(policy, webui / "models" / "adadiff" / POLICY_NAME)
    trainer = trainer_steps(policy, table)

    webui_steps = []
    for prompt in AGREEMENT_PROMPTS:
        _, params, _ = generate(prompt=prompt, steps=USER_STEPS, **adadiff(POLICY_NAME))
        assert params[0].get("AdaDiff") == settings_text(POLICY_NAME) and "AdaDiff error" not in params[0], params[0]
        webui_steps.append(int(params[0]["Steps"]))

    agreement = sum(a == b for a, b in zip(trainer, webui_steps)) / len(AGREEMENT_PROMPTS)
    record_property("agreement", {"trainer_vs_webui": agreement, "prompts": len(AGREEMENT_PROMPTS),
                                  "steps_trainer": trainer, "steps_webui": webui_steps})
    print(f"trainer (a1111) vs real webui: {agreement:.1%} of {len(AGREEMENT_PROMPTS)} prompts; steps {webui_steps}")
    assert len(set(trainer)) >= 2, f"the policy picks one count for every prompt, so agreement means little: {trainer}"
    assert agreement >= 0.99, [(p, a, b) for p, a, b in zip(AGREEMENT_PROMPTS, trainer, webui_steps) if a != b]
