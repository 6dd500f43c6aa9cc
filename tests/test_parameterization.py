"""Tests for ldm.diffusion.parameterization and ldm.diffusion.weighting."""

from __future__ import annotations

import pytest
import torch

from ldm.diffusion.parameterization import EpsilonPrediction, Parameterization, VPrediction, X0Prediction
from ldm.diffusion.schedules import cosine, interpolation
from ldm.diffusion.weighting import MinSNRWeight, UniformWeight

PARAMETERIZATIONS = [EpsilonPrediction(), X0Prediction(), VPrediction()]
SCHEDULES = {"cosine (VP)": cosine, "interpolation (non-VP)": interpolation}
T_INDICES = torch.tensor([0, 1, 50, 500, 998, 999])


def _batch(schedule_fn, seed: int = 0):
    """float64 x0, eps, x_t and (B, 1, 1, 1) alpha, sigma at T_INDICES."""
    alpha, sigma = schedule_fn(1000)
    alpha, sigma = alpha[T_INDICES].view(-1, 1, 1, 1), sigma[T_INDICES].view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(T_INDICES), 2, 3, 3)
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x0, eps, alpha * x0 + sigma * eps, alpha, sigma


@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=repr)
@pytest.mark.parametrize("schedule_fn", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_round_trip(param: Parameterization, schedule_fn) -> None:
    x0, eps, x_t, alpha, sigma = _batch(schedule_fn)
    x0_hat, eps_hat = param.to_x0_eps(param.target(x0, eps, alpha, sigma), x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=repr)
@pytest.mark.parametrize("schedule_fn", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_any_output_gives_a_consistent_pair(param: Parameterization, schedule_fn) -> None:
    """Whatever the network says, x_t = alpha x0_hat + sigma eps_hat holds exactly."""
    _, _, x_t, alpha, sigma = _batch(schedule_fn)
    output = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0_hat, eps_hat = param.to_x0_eps(output, x_t, alpha, sigma)
    torch.testing.assert_close(alpha * x0_hat + sigma * eps_hat, x_t, rtol=0, atol=1e-9)


def test_targets_closed_form() -> None:
    x0, eps, _, alpha, sigma = _batch(cosine)
    torch.testing.assert_close(EpsilonPrediction().target(x0, eps, alpha, sigma), eps)
    torch.testing.assert_close(X0Prediction().target(x0, eps, alpha, sigma), x0)
    torch.testing.assert_close(VPrediction().target(x0, eps, alpha, sigma), alpha * eps - sigma * x0)


@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=repr)
@pytest.mark.parametrize("schedule_fn", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_x0_loss_factor_numerically(param: Parameterization, schedule_fn) -> None:
    """Perturb x0 at fixed x_t: the squared output error is F times the squared x0 error."""
    x0, eps, x_t, alpha, sigma = _batch(schedule_fn)
    delta = 1e-3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x0_other = x0 + delta
    eps_other = (x_t - alpha * x0_other) / sigma  # same x_t
    out_err = param.target(x0_other, eps_other, alpha, sigma) - param.target(x0, eps, alpha, sigma)
    ratio = out_err.pow(2).sum(dim=(1, 2, 3)) / delta.pow(2).sum(dim=(1, 2, 3))
    factor = param.x0_loss_factor(alpha, sigma)
    assert factor.shape == alpha.shape
    torch.testing.assert_close(ratio, factor.flatten(), rtol=1e-6, atol=0)


def test_x0_loss_factor_closed_forms_vp() -> None:
    _, _, _, alpha, sigma = _batch(cosine)
    snr = (alpha / sigma) ** 2
    torch.testing.assert_close(EpsilonPrediction().x0_loss_factor(alpha, sigma), snr)
    torch.testing.assert_close(X0Prediction().x0_loss_factor(alpha, sigma), torch.ones_like(snr))
    torch.testing.assert_close(VPrediction().x0_loss_factor(alpha, sigma), snr + 1)


@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_closed_forms(gamma: float) -> None:
    """Hang et al. 2023: min(SNR, g)/SNR for eps, min(SNR, g)/(SNR + 1) for v, min(SNR, g) for x0."""
    _, _, _, alpha, sigma = _batch(cosine)
    snr = (alpha / sigma) ** 2
    weight = MinSNRWeight(gamma)
    clamped = torch.minimum(snr, torch.full_like(snr, gamma))
    torch.testing.assert_close(weight(snr, EpsilonPrediction().x0_loss_factor(alpha, sigma)), clamped / snr)
    torch.testing.assert_close(weight(snr, VPrediction().x0_loss_factor(alpha, sigma)), clamped / (snr + 1))
    torch.testing.assert_close(weight(snr, X0Prediction().x0_loss_factor(alpha, sigma)), clamped)
    # Low-noise steps (large SNR) are down-weighted, high-noise steps keep weight ~1 for eps.
    eps_weight = weight(snr, snr).flatten()
    assert eps_weight[0] < eps_weight[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=repr)
@pytest.mark.parametrize("schedule_fn", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_min_snr_is_one_x0_space_loss_for_every_parameterization(param: Parameterization, schedule_fn) -> None:
    x0, eps, x_t, alpha, sigma = _batch(schedule_fn)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps_hat = (x_t - alpha * x0_hat) / sigma
    snr = (alpha / sigma) ** 2
    out_sq = (param.target(x0_hat, eps_hat, alpha, sigma) - param.target(x0, eps, alpha, sigma)).pow(2)
    weighted = MinSNRWeight(5.0)(snr, param.x0_loss_factor(alpha, sigma)) * out_sq
    expected = snr.clamp(max=5.0) * (x0_hat - x0).pow(2)
    torch.testing.assert_close(weighted, expected, rtol=1e-6, atol=1e-12)


def test_uniform_weight_is_one() -> None:
    snr, factor = torch.rand(4, 1, 1, 1), torch.rand(4, 1, 1, 1)
    torch.testing.assert_close(UniformWeight()(snr, factor), torch.ones(4, 1, 1, 1))


@pytest.mark.parametrize("gamma", [0.0, -1.0])
def test_min_snr_rejects_bad_gamma(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        MinSNRWeight(gamma)
