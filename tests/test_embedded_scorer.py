"""ToyIQS: ground truth aligns, wrong content and noise score low, fidelity saturates."""

import pytest
import torch

from adadiff.trainer.embedded import split, world
from adadiff.trainer.embedded.scorer import ToyIQS, ssim

PROMPTS = list(split.held_out_prompts()[:24])


def renders(captions, seed):
    return torch.from_numpy(world.render_batch(captions, seed)).permute(0, 3, 1, 2)


def test_ground_truth_scores_about_one():
    truth = renders(PROMPTS, 0)
    out = ToyIQS().score(truth, PROMPTS, references=truth)
    assert out["alignment"].mean() >= 0.98
    assert torch.allclose(out["fidelity"], torch.ones(len(PROMPTS)))
    assert out["iqs"].mean() >= 0.99
    assert set(out) >= {"iqs", "alignment", "fidelity"} and all(v.shape == (len(PROMPTS),) for v in out.values())


def test_wrong_content_scores_low_on_alignment():
    truth = renders(PROMPTS, 0)
    shifted = PROMPTS[1:] + PROMPTS[:1]  # every image judged against another prompt's caption
    out = ToyIQS().score(truth, shifted, references=truth)
    assert out["alignment"].mean() <= 0.6


def test_noise_scores_low():
    truth = renders(PROMPTS, 0)
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    out = ToyIQS().score(noise, PROMPTS, references=truth)
    assert out["iqs"].max() <= 0.5
    noisy = (truth + 0.25 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ToyIQS().score(noisy, PROMPTS, references=truth)["fidelity"].mean() <= 0.6


def test_fidelity_saturates_for_invisible_differences_but_not_for_visible_ones():
    truth = renders(PROMPTS, 0)
    jitter = 0.3 / 255 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(2))
    reference = (truth + jitter).clamp(0, 1)  # off by a third of one 8-bit level
    scorer = ToyIQS()
    assert scorer.score(truth, PROMPTS, references=reference)["fidelity"].min() == 1.0
    other_layout = renders(PROMPTS, 1)  # same captions, objects elsewhere
    assert scorer.score(other_layout, PROMPTS, references=reference)["fidelity"].mean() < 0.9


def test_scores_are_deterministic_and_in_range():
    truth, other = renders(PROMPTS, 0), renders(PROMPTS, 1)
    a = ToyIQS().score(other, PROMPTS, references=truth)
    b = ToyIQS().score(other, PROMPTS, references=truth)
    for key in a:
        assert torch.equal(a[key], b[key])
        assert 0 <= a[key].min() and a[key].max() <= 1


def test_ssim_of_an_image_with_itself_is_one():
    truth = renders(PROMPTS[:3], 0)
    assert torch.allclose(ssim(truth, truth), torch.ones(3))


def test_missing_references_and_bad_settings_are_refused():
    truth = renders(PROMPTS[:2], 0)
    with pytest.raises(ValueError, match="reference"):
        ToyIQS().score(truth, PROMPTS[:2])
    with pytest.raises(ValueError):
        ToyIQS(ssim_saturation=0.0)
    assert ToyIQS.name == "toy" and ToyIQS().reference_steps > 50
