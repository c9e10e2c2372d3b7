"""The AdaDiff nodes inside a real ComfyUI server, driven over its HTTP and WebSocket API.

One server for the module (see comfy_harness): ComfyUI 0.3.75 from PyPI, or the checkout in ADADIFF_COMFYUI_DIR.
Step counts are read from the server's own progress events, never from the nodes' outputs alone.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
import urllib.parse

import pytest
import torch
from safetensors.torch import load_file

from adadiff.policy import PolicyConfig, choose_steps, init_policy, load_policy, save_policy

from comfy_checkpoint import cached_tiny_sd15
from comfy_harness import (CACHE_DIR, REPO_ROOT, ComfyServer, api_graph_from_workflow, assert_checkpoint_reacts_to_steps,
                           comfyui_dir, install_requirements)
from policy_helpers import quality_policy_with_losses, write_crafted_policy

CHECKPOINT = "tiny-sd15.safetensors"
OPTIONS = (1, 2, 3)
PACK_FOLDER = "ComfyUI-AdaDiff"  # what users usually clone the pack as; nothing may depend on it being 'adadiff'
TEMPLATES = {"AdaDiff Step Selector into KSampler": "3", "AdaDiff KSampler (all in one)": "10"}  # -> sampler node
CALIBRATION_TEMPLATE = "AdaDiff Calibrate for your checkpoint"  # run by tests/test_comfy_calibrate.py


def _write_policy(path, favourite: int | None = None, *, margin=6.0, token_dim=768, pooled_dim=0, seed=0) -> None:
    """A policy over OPTIONS; with ``favourite`` its head ignores the prompt and prefers that option by ``margin``."""
    config = PolicyConfig(options=OPTIONS, token_dim=token_dim, pooled_dim=pooled_dim)
    policy = init_policy(config, seed, info={"model_family": "sdxl" if token_dim == 2048 else "sd15"})
    if favourite is not None:
        logits = torch.zeros(len(OPTIONS))
        logits[OPTIONS.index(favourite)] = margin
        with torch.no_grad():
            policy.head[-1].weight.zero_()
            policy.head[-1].bias.copy_(logits)
    save_policy(policy, path)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    comfy_dir = comfyui_dir()
    install_requirements(comfy_dir)
    base = tmp_path_factory.mktemp("comfyui")
    checkpoints, policies, custom_nodes = base / "models" / "checkpoints", base / "models" / "adadiff", base / "custom_nodes"
    for folder in (checkpoints, custom_nodes):
        folder.mkdir(parents=True)
    (checkpoints / CHECKPOINT).symlink_to(cached_tiny_sd15(CACHE_DIR))
    (custom_nodes / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    (custom_nodes / "adadiff_test_pack").symlink_to(REPO_ROOT / "tests" / "comfy_test_pack", target_is_directory=True)
    extra_paths = base / "extra_model_paths.yaml"
    extra_paths.write_text(f"adadiff_tests:\n    base_path: {base / 'shared_models'}\n    adadiff: policies\n")
    server = ComfyServer(comfy_dir, base)
    server.start("--extra-model-paths-config", str(extra_paths))
    assert_checkpoint_reacts_to_steps(server, CHECKPOINT)
    # What a first start shows: the pack made models/adadiff/, and the empty list says where policies go.
    server.first_start = {"policy_folder_made": policies.is_dir(),
                          "policy_input": server.object_info("AdaDiffStepSelector")["input"]["required"]["policy"],
                          "prompt_answer": server.submit(_selector_graph("any.safetensors"))}
    _write_policy(policies / "two.safetensors", favourite=2)
    _write_policy(policies / "three.safetensors", favourite=3)
    # Prefers 1 step by a margin the quality knob can overcome: at +1 it adds 2.5 to option 2 and 5 to option 3.
    _write_policy(policies / "one.safetensors", favourite=1, margin=2.0)
    _write_policy(policies / "random.safetensors", seed=7)
    _write_policy(policies / "sdxl.safetensors", token_dim=2048, pooled_dim=1280)
    # A quality-objective policy: it predicts 30% less IQS at 1 step and 0.5% at 2, so its 1% tolerance takes 2
    # steps; quality_bias +1 (0.1%) takes 3.
    quality = quality_policy_with_losses([30.0, 0.5, 0.0], PolicyConfig(options=OPTIONS, objective="quality"))
    save_policy(quality, policies / "quality.safetensors")
    (policies / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    (policies / "gone.safetensors").symlink_to(base / "deleted-policy.safetensors")
    write_crafted_policy(policies / "crafted.safetensors", OPTIONS)
    os.mkfifo(policies / "fifo.safetensors")  # reading it would block the server forever
    (policies / "zero.safetensors").symlink_to("/dev/zero")  # reading it would fill the server's memory
    # A second policy folder given the way users share models between installs; it must be merged, not replaced.
    _write_policy(base / "shared_models" / "policies" / "shared.safetensors", favourite=3)
    yield server
    server.stop()


def _prompt_nodes(text: str = "a lighthouse at dusk", batch: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
    }


def _selector(policy: str, positive=("2", 0), model=None, **knobs) -> dict:
    inputs = {"positive": list(positive), "policy": policy, "min_steps": 1, "max_steps": 1000,
              "quality_bias": 0.0, "scheduler": "normal", **knobs}  # the KSampler's (_ksampler)
    if model is not None:
        inputs["model"] = list(model)
    return {"class_type": "AdaDiffStepSelector", "inputs": inputs}


def _ksampler(steps) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 0, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}


def _decode_and_preview(latent) -> dict:
    return {"20": {"class_type": "VAEDecode", "inputs": {"samples": list(latent), "vae": ["1", 2]}},
            "21": {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}}


def _preview_text(source) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": list(source)}}


def _selector_graph(policy: str, text: str = "a lighthouse at dusk", batch: int = 1, **knobs) -> dict:
    """Selector -> KSampler.steps -> VAE decode -> preview, and the selector's summary shown as text."""
    graph = _prompt_nodes(text, batch)
    graph["5"] = _selector(policy, **knobs)
    graph["6"] = _ksampler(["5", 0])
    graph["9"] = _preview_text(("5", 2))
    graph.update(_decode_and_preview(("6", 0)))
    return graph


def _listed_policies(comfy) -> set[str]:
    kind, *rest = comfy.object_info("AdaDiffStepSelector")["input"]["required"]["policy"]
    return set(rest[0]["options"] if kind == "COMBO" else kind)  # V3 combos: ("COMBO", {"options": [...]})


def _text(run, node_id: str) -> str:
    return run.outputs(node_id)["text"][0]


# --- registration and schema -------------------------------------------------------------------------------------

def test_object_info_lists_both_nodes_with_documented_inputs_and_outputs(comfy):
    selector = comfy.object_info("AdaDiffStepSelector")
    assert selector["display_name"] == "AdaDiff Step Selector"
    assert selector["category"] == "model/sampling/adadiff"
    assert selector["description"]
    assert list(selector["input"]["required"]) == ["positive", "policy", "min_steps", "max_steps", "quality_bias",
                                                   "scheduler"]
    assert list(selector["input"]["optional"]) == ["model"]
    assert selector["input"]["required"]["positive"][0] == "CONDITIONING"
    assert selector["input"]["optional"]["model"][0] == "MODEL"
    assert selector["output"] == ["INT", "SIGMAS", "STRING"]
    assert selector["output_name"] == ["steps", "sigmas", "summary"]
    assert {"two.safetensors", "sdxl.safetensors", "corrupt.safetensors"} <= _listed_policies(comfy)

    sampler = comfy.object_info("AdaDiffKSampler")
    assert sampler["display_name"] == "AdaDiff KSampler"
    assert sampler["category"] == "model/sampling/adadiff"
    assert "steps" not in sampler["input"]["required"]
    builtin = comfy.object_info("KSampler")["input"]["required"]
    assert set(sampler["input"]["required"]) == (set(builtin) - {"steps"}) | {"policy", "min_steps", "max_steps",
                                                                              "quality_bias"}
    assert sampler["output"] == ["LATENT", "INT"]
    assert sampler["output_name"] == ["LATENT", "steps"]

    for node in (selector, sampler):
        for group in ("required", "optional"):
            for name, (_, options) in node["input"].get(group, {}).items():
                assert options.get("tooltip"), f"{node['name']}.{name} has no tooltip"
        assert all(node["output_tooltips"]), f"{node['name']} has an output without tooltip"


def test_selector_scheduler_defaults_to_what_a_new_ksampler_shows(comfy):
    """A new KSampler shows its scheduler list's first entry ("simple"); the selector's sigmas should match it."""
    (schedulers, *_), (selector_schedulers, options) = (
        comfy.object_info("KSampler")["input"]["required"]["scheduler"],
        comfy.object_info("AdaDiffStepSelector")["input"]["required"]["scheduler"])
    assert schedulers[0] == "simple"
    assert options["default"] == schedulers[0]
    assert list(selector_schedulers if isinstance(selector_schedulers, list) else options["options"]) == schedulers


def test_first_start_makes_the_policy_folder_and_the_empty_list_says_where_policies_go(comfy):
    assert comfy.first_start["policy_folder_made"], "models/adadiff/ should exist once ComfyUI has loaded the pack"
    kind, *rest = comfy.first_start["policy_input"]
    options = rest[0] if rest else {}
    assert (options.get("options", []) if kind == "COMBO" else kind) == []
    hint = options["tooltip"]
    assert hint.startswith("No step policy found") and str(comfy.base_dir / "models" / "adadiff") in hint
    _, listed = comfy.object_info("AdaDiffStepSelector")["input"]["required"]["policy"]
    assert "No step policy" not in listed["tooltip"], "with policies present the tooltip describes the list"
    status, body = comfy.first_start["prompt_answer"]
    (error,) = body["node_errors"]["5"]["errors"]
    assert status == 400 and error["details"].startswith("policy - no step policy found in ")
    assert str(comfy.base_dir / "models" / "adadiff") in error["details"]


def test_pack_loads_without_warnings(comfy):
    """ComfyUI imports the pack and parses its pyproject.toml ([tool.comfy]) without complaint."""
    log = comfy.log_path.read_text(errors="replace")
    pack_lines = [line for line in log.splitlines() if f"custom_nodes/{PACK_FOLDER}" in line]
    assert pack_lines and not any("IMPORT FAILED" in line for line in pack_lines), pack_lines
    assert "Unable to parse pyproject.toml" not in log


# --- decisions reach the sampler -----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy, expected", [("two.safetensors", 2), ("three.safetensors", 3)])
def test_selector_steps_drive_ksampler(comfy, policy, expected):
    run = comfy.run(_selector_graph(policy))
    assert run.status == "success", run.error
    assert run.sampled_steps("6") == expected
    assert _text(run, "9").startswith(f"AdaDiff: {expected} steps")
    assert run.outputs("21")["images"], "the decoded image was not produced"


def test_all_in_one_node_samples_the_policy_choice(comfy):
    graph = _prompt_nodes()
    graph["6"] = {"class_type": "AdaDiffKSampler", "inputs": {
        "model": ["1", 0], "seed": 3, "policy": "three.safetensors", "min_steps": 1, "max_steps": 1000,
        "quality_bias": 0.0, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
        "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    graph["9"] = _preview_text(("6", 1))
    graph.update(_decode_and_preview(("6", 0)))
    run = comfy.run(graph)
    assert run.status == "success", run.error
    assert run.sampled_steps("6") == 3
    assert _text(run, "9") == "3"


def test_all_in_one_node_gives_ksamplers_result_for_the_same_steps(comfy):
    graph = _prompt_nodes("same result")
    graph["6"] = _ksampler(2)
    graph["7"] = {"class_type": "AdaDiffKSampler", "inputs": {
        **{k: v for k, v in graph["6"]["inputs"].items() if k != "steps"},
        "policy": "two.safetensors", "min_steps": 1, "max_steps": 1000, "quality_bias": 0.0}}
    for node, source in (("40", "6"), ("41", "7")):
        graph[node] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0],
                                                              "filename_prefix": f"latents/same_{source}"}}
    run = comfy.run(graph)
    assert run.status == "success", run.error
    assert run.sampled_steps("6") == run.sampled_steps("7") == 2
    latents = []
    for node in ("40", "41"):
        (saved,) = run.outputs(node)["latents"]
        latents.append(load_file(comfy.base_dir / "output" / saved["subfolder"] / saved["filename"])["latent_tensor"])
    assert torch.equal(latents[0], latents[1])


def test_a_quality_policy_samples_the_fewest_steps_within_its_tolerance(comfy):
    run = comfy.run(_selector_graph("quality.safetensors", text="quality objective"))
    assert run.status == "success", run.error
    assert run.sampled_steps("6") == 2
    assert "within 1% of 3 steps" in _text(run, "9") and "1:30.00%" in _text(run, "9")
    assert comfy.run(_selector_graph("quality.safetensors", text="quality b", quality_bias=1.0)).sampled_steps("6") == 3


def test_limits_and_quality_knob_change_the_sampled_count(comfy):
    assert comfy.run(_selector_graph("one.safetensors", text="knob a")).sampled_steps("6") == 1
    assert comfy.run(_selector_graph("one.safetensors", text="knob b", quality_bias=1.0)).sampled_steps("6") == 3
    assert comfy.run(_selector_graph("three.safetensors", text="knob c", max_steps=2)).sampled_steps("6") == 2
    assert comfy.run(_selector_graph("one.safetensors", text="knob d", min_steps=2)).sampled_steps("6") == 2


def test_a_batch_of_prompts_gets_its_most_demanding_count(comfy):
    graph = _selector_graph("random.safetensors", text="a red bicycle", batch=2)
    graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "an intricate baroque cathedral interior, "
                                                                        "volumetric light, ornate detail",
                                                              "clip": ["1", 1]}}
    graph["11"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0],
                                                                   "conditioning_2": ["10", 0]}}
    graph["5"]["inputs"]["positive"] = ["11", 0]
    run = comfy.run(graph)
    assert run.status == "success", run.error
    summary = _text(run, "9").splitlines()
    per_prompt = [int(line.split(": ")[1].split()[0]) for line in summary[1:]]
    assert len(per_prompt) == 2
    assert run.sampled_steps("6") == max(per_prompt)


def test_selector_sigmas_drive_sampler_custom_advanced(comfy):
    graph = _prompt_nodes()
    graph["5"] = _selector("three.safetensors", model=("1", 0), scheduler="karras")
    graph["6"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["12", 0], "guider": ["13", 0], "sampler": ["14", 0], "sigmas": ["5", 1], "latent_image": ["4", 0]}}
    graph["12"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}}
    graph["13"] = {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["2", 0]}}
    graph["14"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["15"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 3,
                                                              "denoise": 1.0}}
    graph["16"] = _preview_text(("5", 1))
    graph["17"] = _preview_text(("15", 0))
    graph.update(_decode_and_preview(("6", 0)))
    run = comfy.run(graph)
    assert run.status == "success", run.error
    assert run.sampled_steps("6") == 3
    assert _text(run, "16") == _text(run, "17"), "selector sigmas differ from ComfyUI's own karras schedule"


@pytest.mark.parametrize("patch, scheduler", [
    ({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "eps", "zsnr": True}}, "karras"),
    ({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "lcm", "zsnr": False}}, "normal"),
    ({"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}}, "simple"),
], ids=["zsnr", "lcm", "flow-shift"])
def test_selector_sigmas_follow_a_patched_model_schedule(comfy, patch, scheduler):
    """The sigmas are the connected model's: a model-sampling patch before the selector changes them exactly as it
    changes ComfyUI's own BasicScheduler (the tiny checkpoint's default schedule alone would not tell)."""
    graph = _prompt_nodes("patched schedule")
    graph["50"] = {"class_type": patch["class_type"], "inputs": {"model": ["1", 0], **patch["inputs"]}}
    graph["5"] = _selector("three.safetensors", model=("50", 0), scheduler=scheduler)
    for node, model in (("15", "50"), ("18", "1")):
        graph[node] = {"class_type": "BasicScheduler", "inputs": {"model": [model, 0], "scheduler": scheduler,
                                                                  "steps": 3, "denoise": 1.0}}
    graph["16"] = _preview_text(("5", 1))
    graph["17"] = _preview_text(("15", 0))
    graph["19"] = _preview_text(("18", 0))
    run = comfy.run(graph)
    assert run.status == "success", run.error
    assert _text(run, "17") != _text(run, "19"), "the patch does not change the schedule, so it proves nothing"
    assert _text(run, "16") == _text(run, "17"), "selector sigmas are not the patched model's schedule"


def test_example_workflows_run_as_shipped(comfy):
    """ComfyUI offers the UI-format examples as the pack's templates; they convert to valid API graphs and sample
    the policy's choice (model names swapped for the test's)."""
    templates = comfy.get("/workflow_templates")
    shipped = sorted([*TEMPLATES, CALIBRATION_TEMPLATE])
    assert sorted(templates[PACK_FOLDER]) == shipped
    assert shipped == sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))
    for name, sampler in TEMPLATES.items():
        workflow = comfy.get(f"/api/workflow_templates/{PACK_FOLDER}/{urllib.parse.quote(name)}.json")
        graph = api_graph_from_workflow(workflow, comfy)
        for node in graph.values():
            inputs = node["inputs"]
            if "ckpt_name" in inputs:
                inputs["ckpt_name"] = CHECKPOINT
            if "policy" in inputs:
                assert inputs["policy"] == "my_checkpoint.safetensors"
                inputs["policy"] = "two.safetensors"
            if node["class_type"] == "EmptyLatentImage":
                inputs.update(width=64, height=64)
        run = comfy.run(graph)
        assert run.status == "success", (name, run.error)
        assert run.sampled_steps(sampler) == 2, name


def test_every_template_has_a_thumbnail_drawn_from_its_graph(tmp_path):
    """The template browser shows <name>.jpg from the same folder (frontend 1.49); the committed pictures are what
    example_workflows/render_thumbnails.py draws."""
    from PIL import Image

    folder, templates = REPO_ROOT / "example_workflows", sorted([*TEMPLATES, CALIBRATION_TEMPLATE])
    for name in templates:
        with Image.open(folder / f"{name}.jpg") as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.size == (512, 512)
        shutil.copy(folder / f"{name}.json", tmp_path)
    spec = importlib.util.spec_from_file_location("render_thumbnails", folder / "render_thumbnails.py")
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)
    assert sorted(path.stem for path in renderer.main(tmp_path)) == templates
    for name in templates:
        with Image.open(tmp_path / f"{name}.jpg") as drawn, Image.open(folder / f"{name}.jpg") as committed:
            assert drawn.size == committed.size


# --- policy files on disk ------------------------------------------------------------------------------------------

def _cached_nodes(run) -> set[str]:
    return {node for name, data in run.history["status"]["messages"] if name == "execution_cached"
            for node in data["nodes"]}


def test_policy_folder_merges_extra_model_paths(comfy):
    assert {"shared.safetensors", "two.safetensors"} <= _listed_policies(comfy)
    run = comfy.run(_selector_graph("shared.safetensors", text="shared"))
    assert run.sampled_steps("6") == 3


def test_results_are_cached_until_the_policy_file_changes(comfy):
    path = comfy.base_dir / "models" / "adadiff" / "switch.safetensors"
    _write_policy(path, favourite=2)
    graph = _selector_graph("switch.safetensors", text="a switch")
    assert comfy.run(graph).sampled_steps("6") == 2
    again = comfy.run(graph)
    assert {"5", "6"} <= _cached_nodes(again), "an unchanged graph and policy file should come from the cache"
    _write_policy(path, favourite=3)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = comfy.run(graph)
    assert "5" not in _cached_nodes(changed)
    assert changed.sampled_steps("6") == 3


# --- bad input is a node error, and the server keeps serving -------------------------------------------------------

def _empty_conditioning_graph() -> dict:
    graph = _selector_graph("two.safetensors", text="empty")
    graph["30"] = {"class_type": "AdaDiffTestEmptyConditioning", "inputs": {}}
    graph["5"]["inputs"]["positive"] = ["30", 0]
    return graph


def _sigmas_without_model_graph() -> dict:
    graph = _selector_graph("two.safetensors", text="no model")
    graph["31"] = _preview_text(("5", 1))
    return graph


@pytest.mark.parametrize("graph, problem", [
    (lambda: _selector_graph("gone.safetensors", text="missing"), "gone.safetensors' was not found"),
    (lambda: _selector_graph("corrupt.safetensors", text="corrupt"), "not a safetensors file"),
    (lambda: _selector_graph("sdxl.safetensors", text="mismatch"), "expects 2048-wide conditioning, got 768"),
    (lambda: _selector_graph("crafted.safetensors", text="crafted"), "has shape"),
    (lambda: _selector_graph("fifo.safetensors", text="fifo"), "fifo.safetensors' was not found"),
    (lambda: _selector_graph("zero.safetensors", text="zero"), "zero.safetensors' was not found"),
    (lambda: _selector_graph("two.safetensors", text="limits", min_steps=3, max_steps=2),
     "min_steps (3) is larger than max_steps (2)"),
    (_empty_conditioning_graph, "conditioning is empty"),
    (_sigmas_without_model_graph, "'sigmas' output needs the 'model' input"),
], ids=["missing", "corrupt", "mismatched", "crafted", "fifo", "link-to-dev-zero", "min-above-max",
        "empty-conditioning", "sigmas-without-model"])
def test_bad_input_is_a_node_error_and_the_server_keeps_serving(comfy, graph, problem):
    run = comfy.run(graph())
    assert run.status == "error"
    assert run.error["node_type"] == "AdaDiffStepSelector"
    assert problem in run.error["exception_message"]
    assert "6" not in run.history["outputs"] and not run.progress("6"), "the sampler ran despite the error"
    follow_up = comfy.run(_selector_graph("two.safetensors", text=f"after {problem}"))
    assert follow_up.status == "success", follow_up.error
    assert follow_up.sampled_steps("6") == 2


def _all_in_one_graph(policy: str) -> dict:
    graph = _prompt_nodes("all in one")
    graph["6"] = {"class_type": "AdaDiffKSampler", "inputs": {
        "model": ["1", 0], "seed": 3, "policy": policy, "min_steps": 1, "max_steps": 1000, "quality_bias": 0.0,
        "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["4", 0], "denoise": 1.0}}
    graph.update(_decode_and_preview(("6", 0)))
    return graph


@pytest.mark.parametrize("graph, node", [(lambda: _selector_graph("absent.safetensors"), "5"),
                                         (lambda: _all_in_one_graph("absent.safetensors"), "6")],
                         ids=["selector", "all-in-one"])
def test_a_policy_not_in_the_folders_is_refused_naming_them(comfy, graph, node):
    """Instead of ComfyUI's bare "Value not in list" (e.g. a template or shared workflow naming a policy you lack)."""
    status, body = comfy.submit(graph())
    assert status == 400
    (error,) = body["node_errors"][node]["errors"]
    assert "policy file 'absent.safetensors' is not in " in error["details"]
    assert str(comfy.base_dir / "models" / "adadiff") in error["details"] and "press R" in error["details"]


# --- cost -----------------------------------------------------------------------------------------------------------

def test_selector_overhead_is_small_next_to_one_sampling_step(comfy, record_property):
    """Both figures measured from the server's WebSocket events; the in-process policy time is a cross-check."""
    selector_seconds, step_seconds = [], []
    for index in range(3):
        run = comfy.run(_selector_graph("three.safetensors", text=f"timing {index}"))
        executing = [(e["received"], e["data"]["node"]) for e in run.events if e["type"] == "executing"]
        start = next(i for i, (_, node) in enumerate(executing) if node == "5")
        selector_seconds.append(executing[start + 1][0] - executing[start][0])
        progress = [(e["received"], e["data"]["value"]) for e in run.events
                    if e["type"] == "progress" and e["data"]["node"] == "6"]
        (first_time, first_step), (last_time, last_step) = progress[0], progress[-1]
        step_seconds.append((last_time - first_time) / (last_step - first_step))
    policy = load_policy(comfy.base_dir / "models" / "adadiff" / "three.safetensors")
    conditioning = [[torch.randn(1, 77, 768), {"pooled_output": torch.randn(1, 768)}]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs (OMP_NUM_THREADS=1); two threads thrash on this shared machine
    try:
        choose_steps(policy, conditioning)
        started = time.perf_counter()
        for _ in range(20):
            choose_steps(policy, conditioning)
        in_process = (time.perf_counter() - started) / 20
    finally:
        torch.set_num_threads(threads)
    selector, step = min(selector_seconds), min(step_seconds)
    record_property("selector_seconds_in_server", selector)
    record_property("selector_seconds_in_process", in_process)
    record_property("sampling_step_seconds", step)
    print(f"\nselector per prompt: {selector * 1000:.1f} ms in the server, {in_process * 1000:.1f} ms in process; "
          f"one sampling step of the test model: {step * 1000:.1f} ms")
    assert selector < step
