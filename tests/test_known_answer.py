"""The default fit on tables whose answer is known: it learns a noise-free table, and where the prompts carry no
signal the evaluation claims nothing and names a fixed count instead."""
import pytest
import torch

from adadiff.trainer.config import FitSettings
from adadiff.trainer.evaluate import evaluate_choices, policy_choices
from adadiff.trainer.fit import fit_policy
from adadiff.trainer.known_answer import known_answer_table

OPTIONS = (5, 10, 15, 20)
SIZE = dict(width=32, options=OPTIONS, long_share=0.0)  # small and one chunk, so a fit takes seconds
FIT = FitSettings(max_updates=600, patience=600, policy_width=32, policy_depth=1)


def fitted_choices(signal: bool, sigma: float):
    train = known_answer_table(640, sigma=sigma, signal=signal, seed=1, **SIZE)  # 64 validation prompts calibrate
    test = known_answer_table(200, sigma=sigma, signal=signal, seed=2, **SIZE)
    policy = fit_policy(train.table, FIT, show_progress=False).policy
    return test, policy_choices(policy, test.table)


def test_the_world_is_laid_out_like_host_conditioning():
    known = known_answer_table(300, sigma=0.0, **{**SIZE, "long_share": 0.1})
    lengths = known.table.features.mask.sum(1)
    assert set(lengths.unique().tolist()) == {77, 154}  # one- and two-chunk prompts, masked padding after one chunk
    assert len(known.answer.unique()) == len(OPTIONS)  # every option is some prompt's answer
    steps = torch.tensor(OPTIONS)
    curves = known.true_iqs
    saturated = steps[None, :] >= steps[known.answer][:, None]
    assert torch.equal(curves[saturated], curves[:, -1:].expand_as(curves)[saturated])  # flat from the answer on
    below = curves[:, :-1][~saturated[:, :-1]] / curves[:, -1:].expand_as(curves)[:, :-1][~saturated[:, :-1]]
    assert float(below.max()) < 0.98  # every option below the answer loses more than the 1% tolerance


def test_a_noise_free_table_is_learned():
    test, choices = fitted_choices(signal=True, sigma=0.0)
    truth = evaluate_choices(test.truth_table(), choices)
    true_saving = 1 - torch.tensor(OPTIONS, dtype=torch.float64)[test.answer].mean() / OPTIONS[-1]
    assert truth["saving_vs_max"]["steps_pct"] / 100 > 0.5 * true_saving.item()  # a small fit is cautious
    assert truth["verdict"]["per_prompt_pays_off"]  # beats fixed-matched and random-same-distribution by 2 SE


def test_without_signal_the_evaluation_claims_nothing():
    test, choices = fitted_choices(signal=False, sigma=0.01)
    report = evaluate_choices(test.table, choices)
    assert not report["verdict"]["per_prompt_pays_off"]
    assert report["verdict"]["recommended_fixed_steps"] in OPTIONS
    truth = evaluate_choices(test.truth_table(), choices)
    assert truth["fixed_matched"]["policy_minus"] <= 2 * truth["fixed_matched"]["policy_minus_se"]


@pytest.mark.parametrize("signal", [True, False])
def test_the_table_is_reproducible(signal):
    first = known_answer_table(20, sigma=0.01, signal=signal, **SIZE)
    again = known_answer_table(20, sigma=0.01, signal=signal, **SIZE)
    assert torch.equal(first.table.iqs, again.table.iqs) and torch.equal(first.answer, again.answer)
    assert not torch.equal(known_answer_table(20, sigma=0.01, signal=signal, seed=5, **SIZE).table.iqs, first.table.iqs)


def test_the_convergence_view_is_each_image_over_its_seeds_largest_option_capped():
    """What a convergence reward would score: converged from the true answer on (noise-free), below it under the cap."""
    known = known_answer_table(50, sigma=0.0, width=16)
    view = known.convergence_table(0.98)
    options = torch.arange(len(view.options))
    converged = options[None, :] >= known.answer[:, None]
    assert torch.allclose(view.iqs, (known.table.iqs / known.table.iqs[..., -1:]).clamp(max=0.98))
    assert (view.iqs[converged[:, None, :].expand_as(view.iqs)] == 0.98).all()
    assert (view.iqs[~converged[:, None, :].expand_as(view.iqs)] < 0.97).all()
    assert view.description["reward"]["converged_at"] == 0.98 and view.prompts == known.table.prompts
