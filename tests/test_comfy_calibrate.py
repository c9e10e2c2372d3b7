"""AdaDiff Calibrate inside a real ComfyUI server (see comfy_harness): it writes a policy the Step Selector then
loads and uses, and a calibration killed with the server continues after a restart without redoing finished pieces.
"""
from __future__ import annotations

import json
import time

import pytest

from adadiff.policy import load_policy

from comfy_checkpoint import cached_tiny_sd15
from comfy_harness import (CACHE_DIR, REPO_ROOT, ComfyServer, api_graph_from_workflow, assert_checkpoint_reacts_to_steps,
                           comfyui_dir, install_requirements)

CHECKPOINT = "tiny-sd15.safetensors"
PROMPTS = "a red cube\ntwo blue balls on a table\na small green cone\nthree tiny striped shapes"
N_PROMPTS = 4
OPTIONS = (1, 2, 3, 4)
WORKFLOW = REPO_ROOT / "example_workflows" / "AdaDiff Calibrate for your checkpoint.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    comfy_dir = comfyui_dir()
    install_requirements(comfy_dir)
    base = tmp_path_factory.mktemp("comfyui")
    for folder in ("models/checkpoints", "models/adadiff", "custom_nodes"):
        (base / folder).mkdir(parents=True)
    (base / "models" / "checkpoints" / CHECKPOINT).symlink_to(cached_tiny_sd15(CACHE_DIR))
    (base / "custom_nodes" / "adadiff").symlink_to(REPO_ROOT, target_is_directory=True)
    return comfy_dir, base


@pytest.fixture(scope="module")
def comfy(base):
    server = ComfyServer(*base)
    server.start()
    assert_checkpoint_reacts_to_steps(server, CHECKPOINT)
    yield server
    server.stop()


def _calibration_graph(name: str, search: str = "bisect") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "AdaDiffCalibrate", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompts": PROMPTS,
            "step_options": ",".join(map(str, OPTIONS)), "sampler_name": "euler", "scheduler": "normal", "cfg": 1.0,
            "size": 64, "seeds": "0", "reward": "convergence", "search": search, "policy_name": name,
            "negative": ""}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def _selector_graph(policy: str, text: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "AdaDiffStepSelector", "inputs": {
            "positive": ["2", 0], "policy": policy, "min_steps": 1, "max_steps": 1000, "quality_bias": 0.0,
            "scheduler": "normal"}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": ["5", 0], "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def _failure(run) -> str:
    error = run.error or {}
    return "".join(error.get("traceback", [])) + str(error.get("exception_message"))


def _units(base_dir, name: str) -> dict[str, tuple[int, int]]:
    """Finished option pieces of a calibration's table: file name -> (inode, mtime in ns)."""
    folder = base_dir / "output" / "adadiff_calibration" / name / "table" / "units"
    pieces = [p for p in folder.glob("c*-s*-o*.safetensors") if not p.name.endswith("-probe.safetensors")]
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pieces}


def test_calibration_writes_a_policy_that_the_step_selector_loads_and_uses(comfy, base):
    run = comfy.run(_calibration_graph("tiny_calibrated"), timeout=300)
    assert run.status == "success", _failure(run)
    summary = run.outputs("3")["text"][0]
    assert "held-out prompts" in summary and "vs fixed matched" in summary and "saving" in summary
    assert run.progress("2"), "the calibration reported no progress"
    policy = load_policy(base[1] / "models" / "adadiff" / "tiny_calibrated.safetensors")
    assert tuple(policy.config.options) == OPTIONS and policy.config.token_dim == 768
    assert policy.info["reward"]["backend"] == "convergence"
    assert policy.info["sampling"]["sampler"] == "euler" and policy.info["sampling"]["host"] == "ComfyUI"
    assert policy.info["model_family"] == "sd15"
    table = json.loads((base[1] / "output" / "adadiff_calibration" / "tiny_calibrated" / "table" / "table.json")
                       .read_text())
    assert table["search"] == "bisect" and table["reward"]["reference_steps"] == OPTIONS[-1]

    used = comfy.run(_selector_graph("tiny_calibrated.safetensors", "a red cube"))
    assert used.status == "success", _failure(used)
    chosen = int(used.outputs("7")["text"][0])
    assert chosen in OPTIONS and used.sampled_steps("6") == chosen


def test_the_example_workflow_is_a_calibration_graph_the_server_accepts(comfy):
    graph = api_graph_from_workflow(json.loads(WORKFLOW.read_text()), comfy)
    calibrate = next(node for node in graph.values() if node["class_type"] == "AdaDiffCalibrate")
    assert calibrate["inputs"]["reward"] == "convergence" and calibrate["inputs"]["search"] == "bisect"
    assert {"model", "clip", "vae"} <= set(calibrate["inputs"])


def test_bad_calibration_input_is_a_node_error_that_says_what_to_do(comfy):
    graph = _calibration_graph("too_few")
    graph["2"]["inputs"]["prompts"] = "a red cube\n\na red cube\nblue"
    run = comfy.run(graph)
    assert run.status == "error" and "at least 3, one per line" in run.error["exception_message"]
    graph = _calibration_graph("bad_options")
    graph["2"]["inputs"]["step_options"] = "4,2"
    run = comfy.run(graph)
    assert run.status == "error" and "options must be at least two distinct" in run.error["exception_message"]


def test_a_killed_calibration_resumes_without_redoing_finished_pieces(comfy, base):
    """Runs last: it kills the module's server."""
    comfy_dir, base_dir = base
    name, total = "tiny_resumed", N_PROMPTS * len(OPTIONS)
    status, body = comfy.submit(_calibration_graph(name, search="full"))
    assert status == 200, body
    deadline = time.monotonic() + 240
    while len(_units(base_dir, name)) < 3:  # some prompts finished, others not
        assert time.monotonic() < deadline, comfy.log_tail()
        time.sleep(0.02)
    comfy.process.kill()  # as a crash or a closed terminal would
    comfy.process.wait()
    before = _units(base_dir, name)
    assert 3 <= len(before) < total
    restarted = ComfyServer(comfy_dir, base_dir)
    restarted.start()
    try:
        run = restarted.run(_calibration_graph(name, search="full"), timeout=300)
    finally:
        restarted.stop()
    assert run.status == "success", _failure(run)
    after = _units(base_dir, name)
    assert len(after) == total
    assert {piece: after[piece] for piece in before} == before  # the same files, never written again
    summary = run.outputs("3")["text"][0]
    assert f"{len(before)} option pieces were already done" in summary
