"""ComfyUI's decision path (``nodes/step_inputs.py``, ``nodes/policy_folder.py``) in this process, on the real
ComfyUI 0.3.75's own ``folder_paths`` and ``comfy_api`` (imported from the unpacked copy the server tests run).

The server tests (test_comfy_nodes.py) show the nodes working inside a running ComfyUI, but a server loads the pack
as a custom node under another module name, where mutation testing cannot switch a mutant on; here the same code
runs as ``adadiff.nodes``, so ``make mutation`` measures it. ComfyUI's ``--cpu`` is set before its model management
is imported, as ``main.py --cpu`` would.
"""
from __future__ import annotations

import logging
import os
import sys

import pytest

from adadiff.policy import PolicyConfig, PolicyFileError, save_policy
from comfy_harness import comfyui_dir, install_requirements
from policy_helpers import policy_preferring, random_conditioning

CONFIG = PolicyConfig(options=(10, 20, 30, 40), width=16, heads=2, depth=1, token_dim=64)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI's modules importable here, its models folder a fresh one, and AdaDiff's nodes imported inside it."""
    comfy_dir = comfyui_dir()
    install_requirements(comfy_dir)
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import folder_paths

    folder_paths.models_dir = str(tmp_path_factory.mktemp("models"))
    from adadiff.nodes import policy_folder, step_inputs

    yield folder_paths, policy_folder, step_inputs
    sys.path.remove(str(comfy_dir))


@pytest.fixture
def folder(comfy):
    """models/adadiff, emptied for each test."""
    folder_paths, policy_folder, _ = comfy
    path = os.path.join(folder_paths.models_dir, "adadiff")
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))
    folder_paths.filename_list_cache.clear()
    return path


def conditioning(batch: int, seed: int = 0):
    """A ComfyUI CONDITIONING list: one [tokens, extras] entry per prompt."""
    return [[random_conditioning(1, 77, 64, seed=seed + i), {}] for i in range(batch)]


def test_importing_the_nodes_registers_and_creates_the_policy_folder(comfy, folder):
    folder_paths, policy_folder, _ = comfy
    assert os.path.isdir(folder)
    assert policy_folder.policy_folders() == [folder]
    assert folder_paths.folder_names_and_paths["adadiff"][1] == {".safetensors"}


def test_the_folder_keeps_paths_an_extra_model_paths_file_gave(comfy, folder):
    folder_paths, policy_folder, _ = comfy
    folder_paths.folder_names_and_paths["adadiff"] = (["/elsewhere/adadiff", folder], {".pt"})
    try:
        policy_folder.register_policy_folder()
        assert folder_paths.folder_names_and_paths["adadiff"] == (["/elsewhere/adadiff", folder],
                                                                  {".pt", ".safetensors"})
    finally:
        folder_paths.folder_names_and_paths["adadiff"] = ([folder], {".safetensors"})


@pytest.mark.parametrize("option, min_steps, max_steps, steps", [(1, 1, 1000, 20), (3, 1, 25, 25), (0, 15, 1000, 15)])
def test_the_policys_choice_within_the_limits(comfy, folder, option, min_steps, max_steps, steps, caplog):
    _, _, step_inputs = comfy
    save_policy(policy_preferring(option, CONFIG), os.path.join(folder, "p.safetensors"))
    with caplog.at_level(logging.INFO, logger=step_inputs.__name__):
        choice = step_inputs.decide_steps(conditioning(1), "p.safetensors", min_steps, max_steps, 0.0)
    assert choice.steps == steps and choice.per_prompt == (steps,)
    assert caplog.messages == [f"AdaDiff: p.safetensors chose {steps} steps (per prompt: [{steps}])"]


def test_a_batch_takes_its_most_demanding_prompts_count(comfy, folder):
    """Conditioning Combine hands several prompts: the batch's one count is the largest any of them needs."""
    _, _, step_inputs = comfy
    save_policy(policy_preferring(2, CONFIG), os.path.join(folder, "p.safetensors"))
    choice = step_inputs.decide_steps(conditioning(3), "p.safetensors", 1, 1000, 1.0)
    assert choice.steps == max(choice.per_prompt) and len(choice.per_prompt) == 3


def test_the_knob_reaches_the_decision(comfy, folder):
    _, _, step_inputs = comfy
    save_policy(policy_preferring(1, CONFIG, margin=1.0), os.path.join(folder, "p.safetensors"))
    decide = step_inputs.decide_steps
    assert [decide(conditioning(1), "p.safetensors", 1, 1000, bias).steps for bias in (-1.0, 0.0, 1.0)] == [10, 20, 40]


@pytest.mark.parametrize("name, value", [("min_steps", 0), ("min_steps", 10001), ("max_steps", 0),
                                         ("max_steps", 10001)])
def test_linked_limits_outside_ksamplers_range_are_refused(comfy, folder, name, value):
    """A linked input skips the widget's range check: the node says which limit and the range."""
    _, _, step_inputs = comfy
    save_policy(policy_preferring(1, CONFIG), os.path.join(folder, "p.safetensors"))
    limits = {"min_steps": 1, "max_steps": 10000, name: value}
    with pytest.raises(ValueError) as refused:
        step_inputs.decide_steps(conditioning(1), "p.safetensors", quality_bias=0.0, **limits)
    assert str(refused.value) == f"{name} must be between 1 and 10000, got {value}"


def test_limits_at_ksamplers_range_are_accepted(comfy, folder):
    _, _, step_inputs = comfy
    save_policy(policy_preferring(0, CONFIG), os.path.join(folder, "p.safetensors"))
    assert step_inputs.decide_steps(conditioning(1), "p.safetensors", 10000, 10000, 0.0).steps == 10000
    assert step_inputs.decide_steps(conditioning(1), "p.safetensors", 1, 1, 0.0).steps == 1


def test_a_policy_not_in_the_folder_is_named_with_the_folder(comfy, folder):
    _, _, step_inputs = comfy
    with pytest.raises(PolicyFileError) as refused:
        step_inputs.decide_steps(conditioning(1), "gone.safetensors", 1, 1000, 0.0)
    assert str(refused.value) == (f"policy file 'gone.safetensors' was not found in {folder}; put the .safetensors "
                                  "policy there (a link must point to an existing file) and pick it again")


def test_the_widget_check_says_where_policies_go(comfy, folder):
    _, _, step_inputs = comfy
    assert step_inputs.check_policy_name(None) is True  # a linked value is checked when the node runs
    assert step_inputs.check_policy_name("p.safetensors") == (
        f"no step policy found in {folder}; put a .safetensors policy file there, press R (refresh node definitions) "
        "and pick it")
    save_policy(policy_preferring(0, CONFIG), os.path.join(folder, "p.safetensors"))
    assert step_inputs.check_policy_name("p.safetensors") is True
    assert step_inputs.check_policy_name("q.safetensors") == (
        f"policy file 'q.safetensors' is not in {folder}; put it there and press R, or pick one of the listed policies")


def test_the_widgets_list_the_folders_policies_with_their_ranges_and_tooltips(comfy, folder):
    _, _, step_inputs = comfy
    empty = step_inputs.step_policy_inputs()[0].as_dict()
    assert empty["options"] == [] and empty["tooltip"] == (
        f"No step policy found. Put a .safetensors policy file in {folder}, then press R (refresh node definitions) "
        "or reload the page.")
    for name in ("b.safetensors", "a.safetensors"):
        save_policy(policy_preferring(0, CONFIG), os.path.join(folder, name))
    folder_paths = comfy[0]
    folder_paths.filename_list_cache.clear()
    widgets = {widget.id: widget.as_dict() for widget in step_inputs.step_policy_inputs()}
    expected = {
        "policy": {"options": ["a.safetensors", "b.safetensors"], "tooltip": (
            "Step policy file from models/adadiff/. It must be made for this model family (e.g. an SD1.5 policy for "
            "SD1.5 checkpoints).")},
        "min_steps": {"default": 1, "min": 1, "max": 10000,
                      "tooltip": "Never sample fewer steps than this, whatever the policy picks."},
        "max_steps": {"default": 1000, "min": 1, "max": 10000,
                      "tooltip": "Never sample more steps than this, whatever the policy picks."},
        "quality_bias": {"default": 0.0, "min": -1.0, "max": 1.0, "step": 0.05, "tooltip": (
            "0 uses the policy as trained. Positive values favour more steps (quality), negative values fewer steps "
            "(speed). A quality policy accepts its average IQS loss divided by 10 per unit: 1 a tenth of it, -1 ten "
            "times.")},
    }
    assert list(widgets) == list(expected)  # the order the node shows them
    assert {name: {key: widgets[name].get(key) for key in said} for name, said in expected.items()} == expected


def test_a_node_reruns_when_its_policy_file_changes(comfy, folder):
    """ComfyUI compares fingerprints to decide whether a cached result still holds: a rewrite changes it."""
    _, _, step_inputs = comfy
    path = os.path.join(folder, "p.safetensors")
    save_policy(policy_preferring(0, CONFIG), path)
    before = step_inputs.fingerprint_policy_inputs("p.safetensors", min_steps=1)
    assert before[:2] == ("p.safetensors", path)
    assert step_inputs.fingerprint_policy_inputs("p.safetensors", min_steps=7) == before
    save_policy(policy_preferring(1, CONFIG), path)
    assert step_inputs.fingerprint_policy_inputs("p.safetensors") != before
    assert step_inputs.fingerprint_policy_inputs(None) == (None, None, None)
    assert step_inputs.fingerprint_policy_inputs("gone.safetensors") == ("gone.safetensors", None, None)


def test_a_rewritten_policy_is_read_again(comfy, folder):
    _, _, step_inputs = comfy
    path = os.path.join(folder, "p.safetensors")
    save_policy(policy_preferring(0, CONFIG), path)
    assert step_inputs.decide_steps(conditioning(1), "p.safetensors", 1, 1000, 0.0).steps == 10
    save_policy(policy_preferring(3, CONFIG), path)
    assert step_inputs.decide_steps(conditioning(1), "p.safetensors", 1, 1000, 0.0).steps == 40
