"""The reward table: same initial noise for every option, chunked pieces on disk, resumable, refuses mix-ups."""
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adadiff.trainer import generate
from adadiff.trainer import table as table_module
from adadiff.trainer.config import GenerateSettings, TrainerInputError
from adadiff.trainer.generate import generate_table, noise_seed, sample
from adadiff.trainer.models import load_pipeline, model_info
from adadiff.trainer.table import TableFolder, load_table
from trainer_fixtures import (PROMPTS, TOKEN_DIM, Brightness, ClosenessToReference, load_tiny_model,
                              save_tiny_pipeline)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def settings(**changes):
    values = dict(options=(2, 4, 6), seeds=(0, 1), batch_size=3, guidance=2.0, device="cpu")
    return GenerateSettings(**{**values, **changes})


class Interrupting(ClosenessToReference):
    """Ctrl-C after a number of scored units, as a user would press it mid-run."""

    def __init__(self, after: int):
        super().__init__(reference_steps=6)
        self.after = after

    def score(self, images, prompts, references=None):
        if self.calls == self.after:
            raise KeyboardInterrupt
        return super().score(images, prompts, references)


def counting_renders(monkeypatch) -> list:
    """Record every rendering the generator asks the pipeline for: (prompts, seed, steps)."""
    renders = []

    def counted(pipe, prompts, seed, steps, settings):
        renders.append((tuple(prompts), seed, steps))
        return sample(pipe, prompts, seed, steps, settings)

    monkeypatch.setattr(generate, "sample", counted)
    return renders


def cut_mid_write(monkeypatch, piece: str) -> None:
    """Ctrl-C (or kill -9) in the middle of writing ``piece``: half its bytes are on disk when the run stops. The run
    has another process id than the rerun, as a killed process has."""
    real = table_module.save_file
    monkeypatch.setattr(os, "getpid", lambda: 2**23 + 1)  # beyond Linux's largest pid: no live process has it

    def half_then_interrupt(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        if Path(filename).name.startswith(piece):
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[:len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(table_module, "save_file", half_then_interrupt)


def test_every_option_starts_from_the_same_noise(model, tmp_path):
    pipe, info = model
    generate_table(pipe, PROMPTS, ClosenessToReference(reference_steps=6), settings(), tmp_path / "t", model=info,
                   show_progress=False)
    table = load_table(tmp_path / "t")
    assert table.iqs.shape == (len(PROMPTS), 2, 3) and table.prompts == PROMPTS
    # The 6-step option is the reference itself (rendered once); the 2-step option starts from the same noise:
    two, _ = sample(pipe, PROMPTS[:3], 1, 2, settings())
    six, _ = sample(pipe, PROMPTS[:3], 1, 6, settings())
    torch.testing.assert_close(table.components["difference"][:3, 1, 0], (two - six).abs().mean((1, 2, 3)))
    assert torch.equal(table.components["difference"][:, :, 2], torch.zeros(len(PROMPTS), 2))
    assert (table.components["difference"][:, :, 0] > 0).all()  # fewer steps really differ
    assert not torch.equal(table.iqs[:, 0, 0], table.iqs[:, 1, 0])  # seeds really differ
    assert (table.time_s > 0).all()
    assert table.features.tokens.shape == (len(PROMPTS), 16, TOKEN_DIM) and table.features.mask.all()
    assert table.description["model"]["fingerprint"] == info["fingerprint"]


def test_noise_depends_on_seed_and_prompt_only(model, tmp_path):
    pipe, info = model
    assert noise_seed(0, "a") == noise_seed(0, "a") != noise_seed(1, "a") != noise_seed(0, "b")
    for batch_size in (2, 4):
        generate_table(pipe, PROMPTS, Brightness(), settings(batch_size=batch_size, seeds=(0,)),
                       tmp_path / f"b{batch_size}", model=info, show_progress=False)
    two, four = load_table(tmp_path / "b2"), load_table(tmp_path / "b4")
    torch.testing.assert_close(two.iqs, four.iqs, atol=1e-5, rtol=0)  # batch composition does not matter


def test_interrupted_run_resumes_without_recomputing_and_matches_an_uninterrupted_one(model, tmp_path, monkeypatch):
    pipe, info = model
    whole = ClosenessToReference(reference_steps=6)
    generate_table(pipe, PROMPTS, whole, settings(), tmp_path / "whole", model=info, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        generate_table(pipe, PROMPTS, Interrupting(after=5), settings(), tmp_path / "cut", model=info,
                       show_progress=False)
    folder = TableFolder(tmp_path / "cut")
    assert len(folder.missing_units(folder.read_description())) == 3 * 2 * 3 - 5
    assert any(folder.units.glob("*-ref.safetensors"))  # the interrupted chunk's reference waits for the rerun
    with pytest.raises(TrainerInputError, match="unfinished"):
        load_table(tmp_path / "cut")
    rest = ClosenessToReference(reference_steps=6)
    renders = counting_renders(monkeypatch)
    generate_table(pipe, PROMPTS, rest, settings(), tmp_path / "cut", model=info, show_progress=False)
    assert rest.calls == whole.calls - 5  # nothing finished was scored again
    # chunk 0, seed 1 was cut after its reference was stored: the rerun reads it instead of rendering it again, and
    # renders each of the 4 untouched chunk/seed pairs' references once
    references = [(prompts, seed) for prompts, seed, steps in renders if steps == 6]
    assert (PROMPTS[:3], 1) not in references and len(references) == len(set(references)) == 4
    resumed, uninterrupted = load_table(tmp_path / "cut"), load_table(tmp_path / "whole")
    assert torch.equal(resumed.iqs, uninterrupted.iqs)
    assert torch.equal(resumed.components["difference"], uninterrupted.components["difference"])
    assert torch.equal(resumed.features.tokens, uninterrupted.features.tokens)
    assert not any(folder.units.glob("*-ref.safetensors")) and not any(folder.units.glob("*.partial-*"))


def test_a_folder_holding_something_else_is_never_overwritten(model, tmp_path):
    pipe, info = model
    generate_table(pipe, PROMPTS[:2], Brightness(), settings(seeds=(0,), options=(2, 3)), tmp_path / "t", model=info,
                   show_progress=False)
    with pytest.raises(TrainerInputError, match=r"other settings \(options, prompts differ\); it would be overwritten"):
        generate_table(pipe, PROMPTS[:3], Brightness(), settings(seeds=(0,)), tmp_path / "t", model=info,
                       show_progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrainerInputError, match="is not a reward table; it would be overwritten"):
        generate_table(pipe, PROMPTS[:2], Brightness(), settings(), tmp_path / "other", model=info, show_progress=False)
    with pytest.raises(TrainerInputError, match="no reward table here"):
        load_table(tmp_path / "other")


@pytest.mark.parametrize("scheduler", ["euler_a", "dpm++2m"])
def test_other_samplers_including_ancestral_ones_repeat_exactly(tmp_path, scheduler):
    folder = save_tiny_pipeline(tmp_path / "tiny")
    pipe = load_pipeline(str(folder), scheduler=scheduler)
    info = model_info(str(folder), pipe)
    generate_table(pipe, PROMPTS[:4], ClosenessToReference(reference_steps=4), settings(options=(2, 4), seeds=(0,),
                   scheduler=scheduler), tmp_path / "t", model=info, show_progress=False)
    table = load_table(tmp_path / "t")
    # a 4-step rendering repeats exactly (euler_a's fresh noise comes from per-prompt generators), so the 4-step
    # option may be the 4-step reference itself, and the 2-step option starts from the reference's noise
    first, _ = sample(pipe, PROMPTS[:4], 0, 4, settings(scheduler=scheduler))
    again, _ = sample(pipe, PROMPTS[3:4] + PROMPTS[:3], 0, 4, settings(scheduler=scheduler))
    torch.testing.assert_close(first, torch.cat([again[1:], again[:1]]), atol=1e-6, rtol=0)
    two, _ = sample(pipe, PROMPTS[:4], 0, 2, settings(scheduler=scheduler))
    torch.testing.assert_close(table.components["difference"][:, 0, 0], (two - first).abs().mean((1, 2, 3)))
    assert table.description["sampling"]["scheduler_class"] == {"euler_a": "EulerAncestralDiscreteScheduler",
                                                                "dpm++2m": "DPMSolverMultistepScheduler"}[scheduler]


@pytest.fixture(scope="module")
def whole_table(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole") / "t"
    generate_table(model[0], PROMPTS, ClosenessToReference(reference_steps=6), settings(), folder, model=model[1],
                   show_progress=False)
    return load_table(folder)


@pytest.mark.parametrize("piece", ["c00001-features.safetensors", "c00000-s1-ref.safetensors",
                                   "c00001-s0-o4.safetensors"])
def test_a_piece_cut_mid_write_is_never_visible_and_the_rerun_cleans_up_and_matches(model, whole_table, tmp_path,
                                                                                   monkeypatch, piece):
    """Pieces are written under a temporary name and renamed in: a write interrupted halfway leaves no half file
    under the piece's name (so the rerun cannot take it for finished); the rerun removes the leftover and ends with
    the uninterrupted table."""
    pipe, info = model
    cut_mid_write(monkeypatch, piece)
    with pytest.raises(KeyboardInterrupt):
        generate_table(pipe, PROMPTS, ClosenessToReference(reference_steps=6), settings(), tmp_path / "t", model=info,
                       show_progress=False)
    units = tmp_path / "t" / "units"
    assert not (units / piece).exists()
    assert [p.name for p in units.glob("*.partial-*")] == [f"{piece}.partial-{2**23 + 1}"]  # the write was really cut
    for finished in units.glob("*.safetensors"):  # everything under a piece's name is complete
        with safe_open(str(finished), "pt") as handle:
            assert list(handle.keys())
    monkeypatch.undo()
    generate_table(pipe, PROMPTS, ClosenessToReference(reference_steps=6), settings(), tmp_path / "t", model=info,
                   show_progress=False)
    assert not any(units.glob("*.partial-*"))
    resumed = load_table(tmp_path / "t")
    assert torch.equal(resumed.iqs, whole_table.iqs)
    assert torch.equal(resumed.features.tokens, whole_table.features.tokens)
