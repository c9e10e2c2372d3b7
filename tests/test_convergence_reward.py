"""The convergence reward: SSIM / PSNR to the same seed's long run, weightless and offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from adadiff.trainer.rewards import build_reward
from adadiff.trainer.rewards.convergence import PSNR_CAP_DB, psnr, ssim

PROMPTS = ["a red circle", "two blue squares"]


def _images(seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _scipy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM as scikit-image computes it (Gaussian sigma 1.5, truncate 3.5, borders of 5 cropped), per channel."""
    values = []
    for a, b in zip(x, y):
        blur = lambda t: gaussian_filter(t, sigma=1.5, truncate=3.5)  # noqa: E731
        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        index = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        values.append(index[5:-5, 5:-5].mean())
    return float(np.mean(values))


def test_ssim_matches_an_independent_scipy_computation():
    x = _images(0)
    y = (x + 0.2 * _images(1)).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        assert ours[i].item() == pytest.approx(_scipy_ssim(x[i].double().numpy(), y[i].double().numpy()), abs=1e-6)


def test_ssim_of_flat_images_is_the_luminance_term():
    a, b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01 ** 2
    assert ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1), rel=1e-5)
    assert ssim(a, a).item() == pytest.approx(1.0)


def test_psnr_is_ten_log_of_inverse_mse_and_finite_for_identical_images():
    a = torch.zeros(1, 3, 8, 8)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, rel=1e-5)  # mse 0.01
    assert psnr(a, a).item() == pytest.approx(PSNR_CAP_DB)


def test_iqs_is_ssim_capped_at_converged_at_with_raw_components_recorded():
    reference = _images(0)
    near, far = (reference + 0.02 * _images(1)).clamp(0, 1), _images(2)
    reward = build_reward("convergence", options=(1, 2, 4), converged_at=0.9)
    assert reward.name == "convergence" and reward.reference_steps == 4
    result = reward.score(torch.cat([near[:1], far[:1]]), PROMPTS, torch.cat([reference[:1], reference[:1]]))
    assert set(result) == {"iqs", "ssim", "psnr"}
    assert result["ssim"][0] > 0.9 > result["ssim"][1]
    assert result["iqs"][0].item() == pytest.approx(0.9)  # converged: capped, so converged options tie
    assert result["iqs"][1] == result["ssim"][1]
    raw = build_reward("convergence", options=(1, 2, 4), converged_at=1.0).score(near, PROMPTS, reference)
    assert torch.equal(raw["iqs"], raw["ssim"])


def test_reference_defaults_to_the_largest_option_and_may_be_higher_but_not_lower():
    assert build_reward("convergence", options=(5, 10, 50)).reference_steps == 50
    assert build_reward("convergence", options=(5, 10, 50), reference_steps=100).reference_steps == 100
    with pytest.raises(ValueError, match="at least the largest step option"):
        build_reward("convergence", options=(5, 10, 50), reference_steps=20)
    with pytest.raises(ValueError, match="needs reference_steps"):
        build_reward("convergence")


def test_missing_references_and_bad_settings_are_refused_clearly():
    reward = build_reward("convergence", options=(1, 2))
    with pytest.raises(ValueError, match="compares every image with its reference"):
        reward.score(_images(0), PROMPTS)
    with pytest.raises(ValueError, match="unknown convergence metric"):
        build_reward("convergence", options=(1, 2), metric="ms-ssim")
    with pytest.raises(ValueError, match="converged_at"):
        build_reward("convergence", options=(1, 2), converged_at=1.5)
    with pytest.raises(ValueError, match="takes no setting options"):  # given by the trainer, not by the user
        build_reward("composite:convergence=1", convergence={"options": (1, 2)})


def test_lpips_without_its_package_or_weights_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def pretend(found):
        return lambda name, *rest: found if name == "lpips" else real_find_spec(name, *rest)

    monkeypatch.setattr(importlib.util, "find_spec", pretend(None))
    with pytest.raises(ValueError, match="pip install lpips.*metric=ssim"):
        build_reward("convergence", options=(1, 2), metric="lpips")
    monkeypatch.setattr(importlib.util, "find_spec", pretend(object()))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="alexnet-owt-7be5be79.pth.*missing"):
        build_reward("convergence", options=(1, 2), metric="lpips")


def test_convergence_in_a_composite_gets_the_options_too():
    reward = build_reward("composite:convergence=1", options=(3, 6))
    assert reward.reference_steps == 6
