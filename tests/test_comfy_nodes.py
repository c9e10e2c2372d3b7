"""The AdaDiff nodes inside a real ComfyUI server, driven over its HTTP and WebSocket API.

One server for the module (see comfy_harness): ComfyUI 0.3.75 from PyPI, or the checkout in ADADIFF_COMFYUI_DIR.
Step counts are read from the server's own progress events, never from the nodes' outputs alone.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import load_file

from adadiff.policy import PolicyConfig, choose_steps, init_policy, load_policy, save_policy

from comfy_checkpoint import cached_tiny_sd15
from comfy_harness import CACHE_DIR, REPO_ROOT, ComfyServer, api_graph_from_workflow, comfyui_dir, install_requirements

CHECKPOINT = "tiny-sd15.safetensors"
OPTIONS = (1, 2, 3)


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
    for folder in (checkpoints, policies, custom_nodes):
        folder.mkdir(parents=True)
    (checkpoints / CHECKPOINT).symlink_to(cached_tiny_sd15(CACHE_DIR))
    (custom_nodes / "adadiff").symlink_to(REPO_ROOT, target_is_directory=True)
    (custom_nodes / "adadiff_test_pack").symlink_to(REPO_ROOT / "tests" / "comfy_test_pack", target_is_directory=True)
    _write_policy(policies / "two.safetensors", favourite=2)
    _write_policy(policies / "three.safetensors", favourite=3)
    # Prefers 1 step by a margin the quality knob can overcome: at +1 it adds 2.5 to option 2 and 5 to option 3.
    _write_policy(policies / "one.safetensors", favourite=1, margin=2.0)
    _write_policy(policies / "random.safetensors", seed=7)
    _write_policy(policies / "sdxl.safetensors", token_dim=2048, pooled_dim=1280)
    (policies / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    (policies / "gone.safetensors").symlink_to(base / "deleted-policy.safetensors")
    # A second policy folder given the way users share models between installs; it must be merged, not replaced.
    _write_policy(base / "shared_models" / "policies" / "shared.safetensors", favourite=3)
    extra_paths = base / "extra_model_paths.yaml"
    extra_paths.write_text(f"adadiff_tests:\n    base_path: {base / 'shared_models'}\n    adadiff: policies\n")
    server = ComfyServer(comfy_dir, base)
    server.start("--extra-model-paths-config", str(extra_paths))
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
              "quality_bias": 0.0, "scheduler": "normal", **knobs}
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
    assert selector["category"] == "sampling/adadiff"
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
    assert sampler["category"] == "sampling/adadiff"
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


def test_pack_loads_without_warnings(comfy):
    """ComfyUI imports the pack and parses its pyproject.toml ([tool.comfy]) without complaint."""
    log = comfy.log_path.read_text(errors="replace")
    pack_lines = [line for line in log.splitlines() if "custom_nodes/adadiff" in line and "adadiff_test" not in line]
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


def test_example_workflows_run_as_shipped(comfy):
    """ComfyUI offers the UI-format examples as the pack's templates; they convert to valid API graphs and sample
    the policy's choice (model names swapped for the test's)."""
    templates = comfy.get("/workflow_templates")
    assert sorted(templates["adadiff"]) == sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))
    for name, sampler in (("adadiff_selector_ksampler", "3"), ("adadiff_ksampler", "10")):
        workflow = comfy.get(f"/api/workflow_templates/adadiff/{name}.json")
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
    (lambda: _selector_graph("two.safetensors", text="limits", min_steps=3, max_steps=2),
     "min_steps (3) is larger than max_steps (2)"),
    (_empty_conditioning_graph, "conditioning is empty"),
    (_sigmas_without_model_graph, "'sigmas' output needs the 'model' input"),
], ids=["missing", "corrupt", "mismatched", "min-above-max", "empty-conditioning", "sigmas-without-model"])
def test_bad_input_is_a_node_error_and_the_server_keeps_serving(comfy, graph, problem):
    run = comfy.run(graph())
    assert run.status == "error"
    assert run.error["node_type"] == "AdaDiffStepSelector"
    assert problem in run.error["exception_message"]
    assert "6" not in run.history["outputs"] and not run.progress("6"), "the sampler ran despite the error"
    follow_up = comfy.run(_selector_graph("two.safetensors", text=f"after {problem}"))
    assert follow_up.status == "success", follow_up.error
    assert follow_up.sampled_steps("6") == 2


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
