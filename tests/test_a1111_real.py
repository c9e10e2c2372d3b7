"""The extension inside a real AUTOMATIC1111 (or Forge) webui, driven over its HTTP API.

Runs only when ``ADADIFF_WEBUI_URL`` points to a running webui started with ``--api`` that has this extension installed
and at least one policy in ``models/adadiff/`` (``ADADIFF_WEBUI_POLICY`` names it; default: the first one listed when
the webui built its UI; a policy copied in later works too). Use a small checkpoint: every test generates a few 64x64
images with few steps.

The webui swallows errors in always-on hooks and answers HTTP 200, so these tests check effects: the ``Steps:`` and
``AdaDiff`` infotext of every image, and that each image is pixel-identical to one generated without AdaDiff at the
step count its infotext reports (so the sampler really ran that many steps). That comparison means something only
if the checkpoint's images change with the step count (a random checkpoint with zeroed output layers gives the same
image at every count), so before anything else the tests check that images at 2 and 6 steps differ.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
from typing import Callable

import pytest

URL = os.environ.get("ADADIFF_WEBUI_URL", "").rstrip("/")

SAMPLERS = ("Euler", "Euler a", "LMS", "DPM++ 2M", "DDIM", "UniPC")
PROMPTS = ("a red cube", "a cat", "a busy market at dusk, many people",
           "an intricate cathedral interior, volumetric light, crowds, reflections")
BASE = {"width": 64, "height": 64, "cfg_scale": 7, "seed": 11, "sampler_name": "Euler"}
USER_STEPS = 5
# Forge's API fails a hires-fix request that leaves this out; A1111 ignores the unknown field.
HIRES_EXTRA = {"hr_additional_modules": ["Use same choices"]}


def call(path: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"{URL}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def generate(path: str = "/sdapi/v1/txt2img", **payload) -> tuple[list[bytes], list[dict], list[str]]:
    """Images (decoded pixels), parsed infotexts and raw infotexts of one job."""
    result = call(path, {**BASE, **payload})
    infotexts = json.loads(result["info"])["infotexts"]
    params = [parse_infotext(text) for text in infotexts]
    return [pixels(image) for image in result["images"]], params, infotexts


def pixels(image_b64: str) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(image_b64))).convert("RGB").tobytes()


def parse_infotext(text: str) -> dict:
    """The webui's reading of an infotext, with ``Steps`` the count the image was made with.

    ``/sdapi/v1/png-info`` answers with what a paste would restore (it runs the extensions' paste callbacks): for an
    AdaDiff image its ``Steps`` is the user's requested count. That value is kept as ``Pasted steps``.
    """
    params = call("/sdapi/v1/png-info", {"image": _png_with_infotext(text)})["parameters"]
    used = re.search(r"(?:^|, )Steps: (\d+)(?:,|$)", text.strip().splitlines()[-1])
    return {**params, "Steps": used[1], "Pasted steps": str(params["Steps"])}


def _png_with_infotext(text: str) -> str:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def assert_steps_change_the_image(generate_at: Callable[[int], bytes], few: int = 2, more: int = 6) -> None:
    """Fail unless the checkpoint's image at ``few`` steps differs from the one at ``more`` steps (same seed)."""
    if generate_at(few) == generate_at(more):
        pytest.fail(f"the checkpoint gives the same image at {few} and {more} steps, so these tests cannot tell which "
                    "step count ran; load a checkpoint whose images change with the step count")


def checked_url() -> str:
    """The webui to test, once its checkpoint is known to give a different image at 2 and 6 steps."""
    if not URL:
        pytest.skip("set ADADIFF_WEBUI_URL to a running webui with the extension to run")
    assert_steps_change_the_image(lambda steps: generate(prompt=PROMPTS[3], steps=steps)[0][0])
    return URL


webui_url = pytest.fixture(checked_url, scope="module", name="webui_url")  # the fixture is the function tested below


@pytest.fixture(scope="module")
def policy(webui_url) -> str:
    infos = [s for s in call("/sdapi/v1/script-info") if s["name"] == "adadiff" and not s["is_img2img"]]
    assert infos, "the AdaDiff extension is not loaded in this webui"
    choices = infos[0]["args"][1]["choices"]  # as of when the webui built its UI; requests may name newer files
    name = os.environ.get("ADADIFF_WEBUI_POLICY") or (choices[0] if choices else None)
    assert name, "no policy: put one in the webui's models/adadiff/ or name it in ADADIFF_WEBUI_POLICY"
    return name


def test_the_guard_refuses_a_checkpoint_that_ignores_the_step_count():
    """Runs without a webui: the check every other test here depends on must be able to fail."""
    with pytest.raises(pytest.fail.Exception, match="same image at 2 and 6 steps"):
        assert_steps_change_the_image(lambda steps: b"identical pixels")
    assert_steps_change_the_image(lambda steps: bytes([steps]))


def _answers_like_a_webui(shade_at: Callable[[int], int]) -> Callable:
    """``call`` answered as a webui would: txt2img's one image is grey ``shade_at(steps)``, png-info reads Steps."""
    from PIL import Image

    def answer(path: str, payload: dict | None = None) -> dict:
        if path == "/sdapi/v1/png-info":
            return {"parameters": {"Steps": "5"}}
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (shade_at(payload["steps"]),) * 3).save(buffer, format="PNG")
        infotext = f"{payload['prompt']}\nSteps: {payload['steps']}, Seed: {payload['seed']}"
        return {"images": [base64.b64encode(buffer.getvalue()).decode()], "info": json.dumps({"infotexts": [infotext]})}

    return answer


def test_the_webui_fixture_runs_the_guard_before_any_test(monkeypatch):
    """Runs without a webui: a checkpoint whose image ignores the step count fails every real-webui test."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "URL", "http://webui")
    monkeypatch.setattr(module, "call", _answers_like_a_webui(lambda steps: 128))
    with pytest.raises(pytest.fail.Exception, match="same image at 2 and 6 steps"):
        checked_url()
    monkeypatch.setattr(module, "call", _answers_like_a_webui(lambda steps: 20 * steps))
    assert checked_url() == "http://webui"


def settings_text(policy: str, knob="0", min_steps=1, max_steps=150, requested=USER_STEPS) -> str:
    return f"{policy}, knob {knob}, min {min_steps}, max {max_steps}, requested {requested}"


def adadiff(policy: str, knob=0, min_steps=1, max_steps=150) -> dict:
    return {"alwayson_scripts": {"AdaDiff": {"args": [True, policy, knob, min_steps, max_steps]}}}


def assert_really_sampled(images, params, prompt, **payload):
    """The job's images equal a plain (AdaDiff off) job of the same shape at the steps the infotext reports.

    Same batch size, because some webuis (Forge) give slightly different pixels for a different batch size.
    """
    plain, plain_params, _ = generate(prompt=prompt, steps=int(params[0]["Steps"]), seed=int(params[0]["Seed"]),
                                      batch_size=len(images), **payload)
    assert "AdaDiff" not in plain_params[0]
    assert plain == images, f"{prompt!r}: the images were not sampled with {params[0]['Steps']} steps"


def test_both_scripts_are_listed_for_txt2img_and_img2img(policy):
    scripts = call("/sdapi/v1/scripts")
    for tab in ("txt2img", "img2img"):
        assert {"adadiff", "adadiff per-prompt steps"} <= set(scripts[tab])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_prompt_runs_at_the_policys_steps_with_every_sampler(policy, sampler):
    for prompt in PROMPTS:
        images, params, _ = generate(prompt=prompt, steps=USER_STEPS, sampler_name=sampler, batch_size=2,
                                     **adadiff(policy))
        steps = {info["Steps"] for info in params}
        assert len(steps) == 1, "a batch shares one step count"
        for info in params:
            assert info["AdaDiff"] == settings_text(policy)
            assert "AdaDiff error" not in info
            assert info["Pasted steps"] == str(USER_STEPS), "a paste must restore the user's own steps"
        assert_really_sampled(images, params, prompt, sampler_name=sampler)


def test_limits_pin_the_steps(policy):
    images, params, _ = generate(prompt=PROMPTS[0], steps=USER_STEPS, **adadiff(policy, min_steps=7, max_steps=7))
    assert [info["Steps"] for info in params] == ["7"]
    assert_really_sampled(images, params, PROMPTS[0])


def test_disabled_leaves_the_job_alone(policy):
    _, params, _ = generate(prompt=PROMPTS[3], steps=USER_STEPS)
    assert params[0]["Steps"] == str(USER_STEPS) and "AdaDiff" not in params[0]


def test_hires_fix_and_img2img_follow_the_choice(policy):
    images, params, _ = generate(prompt=PROMPTS[1], steps=USER_STEPS, enable_hr=True, hr_scale=2,
                                 denoising_strength=0.5, hr_upscaler="Latent", **HIRES_EXTRA,
                                 **adadiff(policy, min_steps=4, max_steps=4))
    assert params[0]["Steps"] == "4" and "AdaDiff" in params[0]
    init = "data:image/png;base64," + call("/sdapi/v1/txt2img", {**BASE, "prompt": "x", "steps": 2})["images"][0]
    _, params, _ = generate("/sdapi/v1/img2img", prompt=PROMPTS[2], steps=USER_STEPS, init_images=[init],
                            denoising_strength=0.75, **adadiff(policy, min_steps=6, max_steps=6))
    assert params[0]["Steps"] == "6" and "AdaDiff" in params[0]


def test_per_prompt_script_gives_each_prompt_its_own_steps(policy):
    images, params, _ = generate(prompt="unused", steps=USER_STEPS, script_name="AdaDiff per-prompt steps",
                                 script_args=[policy, 0, 1, 150, "\n".join(PROMPTS)])
    assert [info["Prompt"] for info in params] == list(PROMPTS)
    assert all(info["AdaDiff"] == settings_text(policy) for info in params)
    print("per-prompt steps:", {info["Prompt"]: int(info["Steps"]) for info in params})
    for image, info, prompt in zip(images, params, PROMPTS):
        assert_really_sampled([image], [info], prompt)


def test_an_infotext_pasted_into_the_api_restores_the_settings(policy):
    _, _, plain = generate(prompt=PROMPTS[2], steps=USER_STEPS)
    try:
        generate(prompt=PROMPTS[2], infotext=plain[0])
    except urllib.error.HTTPError as error:
        pytest.skip(f"this webui's API fails any request with an infotext, with or without AdaDiff ({error})")
    _, params, infotexts = generate(prompt=PROMPTS[2], steps=USER_STEPS, **adadiff(policy, knob=0.5, max_steps=30))
    # The API applies an infotext's Steps (the chosen count) unless the request gives its own steps.
    _, again, _ = generate(prompt=PROMPTS[2], steps=USER_STEPS, infotext=infotexts[0])
    assert again[0]["AdaDiff"] == params[0]["AdaDiff"] == settings_text(policy, knob="0.5", max_steps=30)
    assert again[0]["Steps"] == params[0]["Steps"]


def test_a_missing_policy_keeps_the_users_steps_and_says_so(policy):
    _, params, _ = generate(prompt=PROMPTS[0], steps=USER_STEPS, **adadiff("no-such-policy.safetensors"))
    assert params[0]["Steps"] == str(USER_STEPS)
    error = params[0]["AdaDiff error"]
    assert "'no-such-policy.safetensors' was not found in models/adadiff" in error
    assert not re.search(r"(^|[\s'\"(])(/|[A-Za-z]:\\)", error), f"an absolute path in the saved infotext: {error}"
