"""The trainer's ``comfyui`` and ``a1111`` prompt syntaxes against the hosts themselves, on the text encoder of the
tiny SD1.5 checkpoint the ComfyUI tests build (full-size CLIP-L, random weights, non-zero layer-norm biases).

* ComfyUI: the real ComfyUI 0.3.75 of the ComfyUI tests (tests/comfy_harness.py) loads the checkpoint with its own
  ``load_checkpoint_guess_config`` and encodes each prompt with its ``CLIPTextEncode`` node (tests/comfy_encode.py,
  in a subprocess); the trainer's states must match per element within 1e-5, and the policy features the trainer's
  reward table is made of must equal those the Step Selector reads from that CONDITIONING.
* AUTOMATIC1111: no webui runs in CI, so tests/fixtures/a1111_v1.10.1_sd15_prompts.safetensors holds numbers made
  locally with AUTOMATIC1111 v1.10.1's own code (commit 82a973c0): its ``modules/sd_hijack_clip.py``
  (``FrozenCLIPEmbedderWithCustomWords``), ``prompt_parser.py``, ``sd_emphasis.py`` and
  ``extra_networks.parse_prompt``, imported from a snapshot of the webui, not the whole webui: ``modules.shared.opts``
  stood in with the v1.10.1 defaults (emphasis "Original", comma padding backtrack 20, clip skip 1), no textual
  inversion embeddings, the wrapped ``tokenizer``/``transformer`` being ``host_prompts.small_text_encoder()``'s
  (a seeded 64-wide CLIP: A1111's emphasis divides by the chunk's mean, which for the checkpoint's random CLIP-L is
  ~1e-7 on some prompts, so there even the webui's own numbers move by percents with the thread count). Each prompt
  went through ``extra_networks.parse_prompt`` (the LoRA-tag removal the webui does before ``process_batch``) and
  then the embedder's ``forward([prompt])``, which is what ``sd_model.get_learned_conditioning`` runs for SD1.x;
  :func:`fixture_summary` of each result was saved with :func:`clip_fingerprint` of the weights. The trainer must
  match within 1e-4. (On the checkpoint's CLIP-L and on the small CLIP alike, the webui's states equalled the
  trainer's ``a1111`` syntax exactly, 0.0 difference, on the machine that made them.)
* AUTOMATIC1111, a running webui: tests/fixtures/a1111_v1.10.1_webui_sd15_prompts.safetensors holds the same
  summaries for the same prompts, made in a real AUTOMATIC1111 v1.10.1 webui (commit 82a973c0, run locally on CPU with
  ``--use-cpu all --no-half --precision full``, ``OMP_NUM_THREADS=1``, default settings) that had loaded
  ``host_prompts.a1111_checkpoint`` of the checkpoint (its CLIP-L with the final layer-norm bias raised on 8 channels,
  so that the chunk means A1111 divides by are ~0.08 and the webui's numbers do not depend on the summation order) with
  the ``.yaml`` of ``test_a1111_real_prompts.tiny_sd15_config``. A throwaway API route inside the webui process (not
  kept) ran each prompt through ``extra_networks.parse_prompt`` and then ``shared.sd_model.get_learned_conditioning(
  [prompt])`` under ``torch.no_grad()``, what the extension runs in ``process_batch``; :func:`fixture_summary` of each
  result was saved with :func:`clip_fingerprint` of that checkpoint's CLIP. The webui's full states were within 4e-6
  of the trainer's ``a1111`` syntax on every prompt (on the unshifted checkpoint: 2e-3 on prompt 1, whose chunk mean
  is -6e-8). The trainer must match within 1e-4.
* End to end: one policy fitted on a reward table the trainer made, then the step count per prompt from the
  trainer's evaluation path (table features -> ``policy_choices``), from the ComfyUI Step Selector in a real ComfyUI
  server and from the A1111 extension on the webui stand-ins, whose ``get_learned_conditioning`` is the trainer's
  ``a1111`` encoding (checked against real A1111 above).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adadiff.policy import PolicyConfig, choose_steps, init_policy, policy_features, save_policy
from adadiff.trainer.config import FitSettings, GenerateSettings
from adadiff.trainer.evaluate import policy_choices
from adadiff.trainer.fit import fit_policy, policy_info
from adadiff.trainer.generate import PipelineSource, generate_table
from adadiff.trainer.models import host_conditioning
from adadiff.trainer.prompt_syntax import comfyui_chunks
from adadiff.trainer.table import RewardTable, load_table

from comfy_checkpoint import cached_tiny_sd15
from comfy_harness import CACHE_DIR, REPO_ROOT, ComfyServer, comfyui_dir, install_requirements
from host_prompts import AGREEMENT_PROMPTS, PROMPTS, a1111_checkpoint, checkpoint_text_pipeline, small_text_encoder
from trainer_fixtures import Brightness

A1111_FIXTURE = Path(__file__).parent / "fixtures" / "a1111_v1.10.1_sd15_prompts.safetensors"
A1111_WEBUI_FIXTURE = Path(__file__).parent / "fixtures" / "a1111_v1.10.1_webui_sd15_prompts.safetensors"
SUMMARY_ROWS = (1, -76)  # first prompt token of the first and of the last chunk
PROJECTION_WIDTH = 8
OPTIONS = (1, 2, 3)
# ComfyUI's reading is also checked on a rule of its own, kept out of PROMPTS (which the A1111 fixture was made
# for): a weighted piece under 8 tokens that would straddle the 75-token cut (73 + 3 tokens here) moves whole into
# the next chunk.
COMFYUI_PROMPTS = (*PROMPTS, " ".join(["cat"] * 73) + " (big red fox:1.2)")
COMFYUI_CHUNKS = (1, 1, 1, 1, 1, 2, 2, 3, 2)


def fixture_summary(states: torch.Tensor) -> dict[str, torch.Tensor]:
    """A small, complete-enough record of one prompt's states [1, T, D]: every token through a fixed random
    projection, every token's norm and mean, and two full rows."""
    z = states[0].float()
    projection = torch.randn(z.shape[-1], PROJECTION_WIDTH, generator=torch.Generator().manual_seed(0))
    return {"projected": z @ projection / z.shape[-1] ** 0.5, "norms": z.norm(dim=-1), "means": z.mean(dim=-1),
            "rows": z[list(SUMMARY_ROWS)].contiguous()}


def clip_fingerprint(text_encoder) -> torch.Tensor:
    """A few of the CLIP weights the fixture was made with, so a changed test checkpoint fails with a clear reason."""
    state = text_encoder.state_dict()
    return torch.cat([state["embeddings.token_embedding.weight"][:4, :4].flatten(),
                      state["final_layer_norm.bias"][:8]]).float()


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return cached_tiny_sd15(CACHE_DIR)


@pytest.fixture(scope="module")
def pipe(checkpoint, tmp_path_factory):
    return checkpoint_text_pipeline(checkpoint, tmp_path_factory.mktemp("clip-vocab"))


@pytest.fixture(scope="module")
def comfy_dir() -> Path:
    folder = comfyui_dir()
    install_requirements(folder)
    return folder


def comfyui_encodings(comfy_dir: Path, checkpoint: Path, prompts, folder: Path) -> dict[str, torch.Tensor]:
    (folder / "prompts.json").write_text(json.dumps(list(prompts)), encoding="utf-8")
    out = folder / "comfyui.safetensors"
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "comfy_encode.py"), str(comfy_dir),
                           str(checkpoint), str(folder / "prompts.json"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return load_file(str(out))


@pytest.fixture(scope="module")
def comfyui_reference(comfy_dir, checkpoint, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Real ComfyUI's CLIPTextEncode of every prompt in COMFYUI_PROMPTS, on the checkpoint."""
    return comfyui_encodings(comfy_dir, checkpoint, COMFYUI_PROMPTS, tmp_path_factory.mktemp("comfyui-encode"))


def test_comfyui_syntax_equals_real_comfyui_clip_text_encode(pipe, comfyui_reference):
    reference = comfyui_reference
    ours = host_conditioning(pipe, COMFYUI_PROMPTS, "comfyui")
    chunks = []
    for index, (prompt, (states, pooled)) in enumerate(zip(COMFYUI_PROMPTS, ours)):
        expected = reference[f"cond.{index}"]
        assert states.shape == expected.shape, prompt
        torch.testing.assert_close(states, expected, atol=1e-5, rtol=0, msg=lambda m: f"{prompt!r}: {m}")
        assert pooled is None  # SD1.x: the policy reads no pooled vector (A1111 has none)
        chunks.append(states.shape[1] // 77)
    assert chunks == list(COMFYUI_CHUNKS)  # the long prompts really span several chunks
    assert [len(c.ids) for c in comfyui_chunks(pipe.tokenizer, COMFYUI_PROMPTS[-1])] == [73, 3]  # it straddles
    plain = host_conditioning(pipe, PROMPTS, "plain")  # what the trainer read before: far from the host
    assert (plain[1][0] - reference["cond.1"]).abs().max() > 0.1


def test_the_trainers_table_features_equal_what_the_comfyui_selector_reads(pipe, comfyui_reference):
    """The same input through both: the features the trainer's reward table is made of (``generate``'s feature
    source, ``--prompt-syntax comfyui``) equal the policy features of real ComfyUI's CONDITIONING for the same prompts
    on the same checkpoint (all prompts as one conditioning list, as Conditioning Combine hands them to the Step
    Selector): tokens within 1e-5, masks equal, and a policy reads the same probabilities from both."""
    comfyui = policy_features([[comfyui_reference[f"cond.{i}"], {"pooled_output": comfyui_reference[f"pooled.{i}"]}]
                               for i in range(len(COMFYUI_PROMPTS))])
    trainer = PipelineSource(pipe, GenerateSettings(prompt_syntax="comfyui")).features(COMFYUI_PROMPTS)
    assert trainer.mask.sum(1).tolist() == [77 * chunks for chunks in COMFYUI_CHUNKS]
    assert torch.equal(trainer.mask, comfyui.mask)
    torch.testing.assert_close(trainer.tokens, comfyui.tokens, atol=1e-5, rtol=0)
    assert trainer.pooled is None  # SD1.x: no pooled vector in the table; the policy reads none from ComfyUI either
    policy = init_policy(PolicyConfig(options=OPTIONS, token_dim=trainer.token_dim), seed=0)
    torch.testing.assert_close(choose_steps(policy, trainer).probs, choose_steps(policy, comfyui).probs, atol=1e-5,
                               rtol=0)


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory):
    return small_text_encoder(tmp_path_factory.mktemp("small-clip-vocab"))


@pytest.fixture(scope="module")
def a1111_pipe(checkpoint, tmp_path_factory):
    """The trainer's pipeline on the A1111 variant of the checkpoint (the file a real webui loaded)."""
    folder = tmp_path_factory.mktemp("a1111-checkpoint")
    return checkpoint_text_pipeline(a1111_checkpoint(checkpoint, folder), folder / "clip-vocab")


@pytest.mark.parametrize(("fixture_file", "encoder"), [(A1111_FIXTURE, "small_encoder"),
                                                       (A1111_WEBUI_FIXTURE, "a1111_pipe")],
                         ids=["v1.10.1-modules", "v1.10.1-webui"])
def test_a1111_syntax_equals_fixtures_from_real_a1111(fixture_file, encoder, request):
    pipe = request.getfixturevalue(encoder)
    with safe_open(str(fixture_file), "pt") as handle:
        assert json.loads(handle.metadata()["prompts"]) == list(PROMPTS), "fixture made for other prompts"
        fixture = {key: handle.get_tensor(key) for key in handle.keys()}
    torch.testing.assert_close(clip_fingerprint(pipe.text_encoder), fixture["clip_fingerprint"], atol=0, rtol=0,
                               msg="the tests build other CLIP weights than the fixture was made with; remake the "
                                   "fixture as this file's docstring says")
    comfyui = host_conditioning(pipe, PROMPTS, "comfyui")
    for index, (prompt, (states, _)) in enumerate(zip(PROMPTS, host_conditioning(pipe, PROMPTS, "a1111"))):
        summary = fixture_summary(states)
        for name, value in summary.items():
            expected = fixture[f"{name}.{index}"]
            assert value.shape == expected.shape, (prompt, name)
            torch.testing.assert_close(value, expected, atol=1e-4, rtol=0, msg=lambda m: f"{prompt!r} {name}: {m}")
        if index and comfyui[index][0].shape == states.shape:  # weighted prompts: the hosts really differ
            assert (comfyui[index][0] - states).abs().max() > 1e-2, prompt


# --- end to end --------------------------------------------------------------------------------------------------


def prompt_difficulty(prompt: str) -> int:
    """The option index the synthetic rewards favour: weights, BREAK and long prompts want more steps."""
    return min(2, int("(" in prompt) + int("BREAK" in prompt or len(prompt) > 200))


def trainer_table(pipe, syntax: str, folder: Path) -> RewardTable:
    """The reward table the trainer makes for the agreement prompts (tiny images, one seed)."""
    settings = GenerateSettings(options=OPTIONS, seeds=(0,), batch_size=16, guidance=1.0, prompt_syntax=syntax)
    model = {"model_family": "sd15", "name": "tiny-sd15", "fingerprint": "test"}
    generate_table(pipe, AGREEMENT_PROMPTS, Brightness(), settings, folder, model=model, show_progress=False)
    return load_table(folder)


def trained_policy(table: RewardTable):
    """A policy fitted by the trainer on ``table`` with rewards that favour more steps for harder prompts."""
    wanted = torch.tensor([prompt_difficulty(p) for p in table.prompts])
    iqs = torch.where(torch.arange(len(OPTIONS))[None, :] == wanted[:, None], 1.0, 0.5)[:, None, :]
    table = dataclasses.replace(table, iqs=iqs.expand_as(table.iqs).contiguous())
    fit = FitSettings(objective="reinforce", top_k=1, policy_width=32, policy_depth=1, fit_batch_size=8,
                      max_updates=300, patience=100)  # agreement needs a policy that uses several options
    return fit_policy(table, fit, info=policy_info(table.description, fit), show_progress=False).policy


def trainer_steps(policy, table: RewardTable) -> list[int]:
    """The trainer's evaluation path: the table's stored features, the policy's argmax choice."""
    return [table.options[i] for i in policy_choices(policy, table).tolist()]


def comfyui_selector_steps(comfy_dir: Path, checkpoint: Path, policy_file: Path, base: Path) -> list[int]:
    """Every prompt through CLIPTextEncode -> AdaDiff Step Selector in one graph; the steps output shown as text."""
    for folder in ("models/checkpoints", "models/adadiff", "custom_nodes"):
        (base / folder).mkdir(parents=True)
    (base / "models/checkpoints/tiny-sd15.safetensors").symlink_to(checkpoint)
    (base / "models/adadiff" / policy_file.name).symlink_to(policy_file)
    (base / "custom_nodes/adadiff").symlink_to(REPO_ROOT, target_is_directory=True)
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}}}
    for index, prompt in enumerate(AGREEMENT_PROMPTS):
        graph[f"text{index}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ckpt", 1]}}
        graph[f"select{index}"] = {"class_type": "AdaDiffStepSelector", "inputs": {
            "positive": [f"text{index}", 0], "policy": policy_file.name, "min_steps": 1, "max_steps": 1000,
            "quality_bias": 0.0, "scheduler": "normal"}}
        graph[f"show{index}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"select{index}", 0]}}
    server = ComfyServer(comfy_dir, base)
    server.start()
    try:
        run = server.run(graph, timeout=600)
    finally:
        server.stop()
    assert run.status == "success", run.error
    return [int(run.outputs(f"show{index}")["text"][0]) for index in range(len(AGREEMENT_PROMPTS))]


class TrainerA1111Model:
    """A stand-in ``sd_model`` whose ``get_learned_conditioning`` is the trainer's ``a1111`` encoding."""

    def __init__(self, pipe):
        self.pipe = pipe

    def get_learned_conditioning(self, prompts):
        return torch.cat([states for states, _ in host_conditioning(self.pipe, prompts, "a1111")])


def a1111_extension_steps(pipe, policy_file: Path, models: Path, monkeypatch) -> list[int]:
    """Every prompt as its own job (batch size 1) through the extension's accordion on the webui stand-ins."""
    import a1111_standins as webui
    from test_a1111_extension import PACKAGE_NAME, Webui, enabled, steps_of

    for name, module in webui.standin_modules(str(models)).items():
        monkeypatch.setitem(sys.modules, name, module)
    (models / "adadiff").mkdir(parents=True)
    (models / "adadiff" / policy_file.name).symlink_to(policy_file)
    try:
        host = Webui(models)
        model = TrainerA1111Model(pipe)
        steps = []
        for prompt in AGREEMENT_PROMPTS:
            job = host.job(prompt, accordion=enabled(policy_file.name, max_steps=150), model=model)
            processed = host.generate(job)
            assert all("AdaDiff error" not in text for text in processed.infotexts), processed.infotexts
            steps += steps_of(processed)
        return steps
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE_NAME]:
            del sys.modules[name]


def test_one_policy_gives_the_same_steps_in_the_trainer_comfyui_and_a1111(pipe, checkpoint, comfy_dir, tmp_path,
                                                                        monkeypatch, record_property):
    comfyui_table = trainer_table(pipe, "comfyui", tmp_path / "table-comfyui")
    policy = trained_policy(comfyui_table)
    policy_file = save_policy(policy, tmp_path / "e2e.safetensors")
    assert policy.info["sampling"]["prompt_syntax"] == "comfyui"  # the policy records how it read prompts

    trainer_comfyui = trainer_steps(policy, comfyui_table)
    trainer_a1111 = trainer_steps(policy, trainer_table(pipe, "a1111", tmp_path / "table-a1111"))
    comfyui = comfyui_selector_steps(comfy_dir, checkpoint, policy_file, tmp_path / "comfyui")
    a1111 = a1111_extension_steps(pipe, policy_file, tmp_path / "webui", monkeypatch)

    n = len(AGREEMENT_PROMPTS)
    agree_comfyui = sum(a == b for a, b in zip(trainer_comfyui, comfyui)) / n
    agree_a1111 = sum(a == b for a, b in zip(trainer_a1111, a1111)) / n
    hosts_alike = sum(a == b for a, b in zip(comfyui, a1111)) / n
    record_property("agreement", {"trainer_vs_comfyui": agree_comfyui, "trainer_vs_a1111": agree_a1111,
                                  "comfyui_vs_a1111": hosts_alike, "prompts": n,
                                  "steps_comfyui": comfyui, "steps_a1111": a1111})
    assert len(set(comfyui)) >= 2, f"the policy picks one count for every prompt, so agreement means little: {comfyui}"
    assert agree_comfyui >= 0.99, list(zip(AGREEMENT_PROMPTS, trainer_comfyui, comfyui))
    assert agree_a1111 >= 0.99, list(zip(AGREEMENT_PROMPTS, trainer_a1111, a1111))
