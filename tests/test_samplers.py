"""Tests for ldm.diffusion.samplers with oracle denoisers (exact for known data distributions)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import Tensor

from ldm.diffusion.loop import denoiser_from, sample
from ldm.diffusion.parameterization import EpsilonPrediction, VPrediction
from ldm.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2M,
    Sampler,
    posterior,
    timesteps,
)
from ldm.diffusion.schedules import CLEAN, NoiseSchedule, cosine, interpolation, linear

SPACINGS = ["linspace", "leading", "trailing"]


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _id(value: object) -> str:
    """Readable, address-free test ids for functions and sampler objects."""
    return getattr(value, "__name__", repr(value))


SCHEDULES = {"linear": linear, "cosine": cosine, "interpolation": interpolation}
DATA_STD = 0.5


def point_oracle(schedule: NoiseSchedule, x0_star: Tensor):
    """Exact denoiser when the data distribution is the single point x0_star."""

    def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        x0_hat = x0_star.expand_as(x_t)
        return x0_hat, (x_t - alpha * x0_hat) / sigma

    return denoise


def gaussian_oracle(schedule: NoiseSchedule, std: float = DATA_STD):
    """Exact denoiser for data ~ N(0, std^2 I): E[x0 | x_t] = alpha std^2 / (alpha^2 std^2 + sigma^2) x_t."""

    def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        x0_hat = alpha * std**2 / (alpha**2 * std**2 + sigma**2) * x_t
        return x0_hat, (x_t - alpha * x0_hat) / sigma

    return denoise


def _vp_linear_alpha_bar(T: int) -> list[float]:
    """DDPM alpha_bar_t for the default linear betas, in plain Python floats."""
    out, prod = [], 1.0
    for i in range(T):
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * i / (T - 1))
        out.append(prod)
    return out


def all_samplers() -> list[Sampler]:
    return [
        DDPMSampler(),
        *(DDIMSampler(num_steps=10, eta=0.0, spacing=sp) for sp in SPACINGS),
        *(DPMSolverPP2M(num_steps=10, spacing=sp) for sp in SPACINGS),
    ]


# ----------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize(("T", "N"), [(1000, 1), (1000, 10), (1000, 50), (1000, 999), (1000, 1000), (7, 3), (10, 7)])
def test_timesteps_properties(spacing: str, T: int, N: int) -> None:
    steps = timesteps(T, N, spacing)
    assert steps.dtype == torch.int64 and steps.shape == (N,)
    assert (steps[1:] < steps[:-1]).all()  # strictly descending, hence unique
    assert 0 <= steps.min() and steps.max() < T


def test_timesteps_golden_lin_et_al_table_2() -> None:
    assert timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


def test_invalid_steps_and_options_raise() -> None:
    schedule = NoiseSchedule(linear(100))
    with pytest.raises(ValueError, match="num_steps=101"):
        DDIMSampler(num_steps=101).timesteps(schedule)
    with pytest.raises(ValueError, match="num_steps=101"):
        DPMSolverPP2M(num_steps=101).timesteps(schedule)
    with pytest.raises(ValueError, match="num_steps"):
        timesteps(100, 0, "linspace")
    with pytest.raises(ValueError, match=r"spacing='uniform'.*'linspace', 'leading', 'trailing'"):
        DDIMSampler(spacing="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing='uniform'"):
        DPMSolverPP2M(spacing="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(eta=-0.1)
    with pytest.raises(ValueError, match="shape"):
        sample(gaussian_oracle(schedule), schedule, DDPMSampler(), (2, 3), x_T=torch.zeros(2, 4))


# ----------------------------------------------------------------------------- posterior
def test_posterior_matches_ddpm_eq_7() -> None:
    T = 1000
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    alpha_bar = _vp_linear_alpha_bar(T)
    alpha, sigma = linear(T)
    gen = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    for t in (1, 2, 100, 999):  # 0-based index t is DDPM's t+1; s = t-1
        ab_t, ab_s, beta = alpha_bar[t], alpha_bar[t - 1], betas[t]
        mean_eq7 = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * x_t
        var_eq7 = (1 - ab_s) / (1 - ab_t) * beta
        mean, var = posterior(x_t, x0, alpha[t], sigma[t], alpha[t - 1], sigma[t - 1])
        torch.testing.assert_close(mean, mean_eq7, rtol=1e-9, atol=1e-12)
        assert var.item() == pytest.approx(var_eq7, rel=1e-8)
    # t = 0 -> clean: DDPM's beta_tilde_1 = 0 and the mean is x0.
    mean, var = posterior(x_t, x0, alpha[0], sigma[0], torch.tensor(1.0), torch.tensor(0.0))
    torch.testing.assert_close(mean, x0)
    assert var.item() == 0.0


def test_posterior_general_form_by_gaussian_conditioning() -> None:
    """Non-VP check: condition the joint Gaussian (x_s, x_t) | x0 directly."""
    alpha, sigma = interpolation(50)
    x_t, x0 = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t, s in ((10, 9), (40, 5), (49, 0)):
        ratio = alpha[t] / alpha[s]
        cov = ratio * sigma[s] ** 2  # Cov(x_s, x_t) given x0; Var(x_t) = sigma_t^2
        mean_expected = alpha[s] * x0 + cov / sigma[t] ** 2 * (x_t - alpha[t] * x0)
        var_expected = sigma[s] ** 2 - cov**2 / sigma[t] ** 2
        mean, var = posterior(x_t, x0, alpha[t], sigma[t], alpha[s], sigma[s])
        torch.testing.assert_close(mean, mean_expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var, var_expected, rtol=1e-10, atol=1e-12)


def test_ddim_eta_one_equals_ddpm_step() -> None:
    schedule = NoiseSchedule(cosine(100))
    gen = torch.Generator().manual_seed(0)
    x_t, x0_hat = torch.randn(2, 4, 3, generator=gen)
    eps_hat = (x_t - schedule.at(60)[0] * x0_hat) / schedule.at(60)[1]
    ddpm, _ = DDPMSampler().step(schedule, x_t, x0_hat, eps_hat, 60, 59, generator=_seeded(7))
    ddim, _ = DDIMSampler(eta=1.0).step(schedule, x_t, x0_hat, eps_hat, 60, 59, generator=_seeded(7))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-5, atol=1e-5)


def test_ddim_eta_matches_eq_16() -> None:
    """DDIM eq. 12 with sigma_t(eta) of eq. 16, in VP alpha_bar form, for a skip t=600 -> s=400."""
    schedule = NoiseSchedule(linear(1000))
    alpha_bar = _vp_linear_alpha_bar(1000)
    t, s, eta = 600, 400, 0.5
    gen = torch.Generator().manual_seed(0)
    x_t, x0_hat = torch.randn(2, 4, 3, generator=gen)
    eps_hat = (x_t - math.sqrt(alpha_bar[t]) * x0_hat) / math.sqrt(1 - alpha_bar[t])
    sig = eta * math.sqrt((1 - alpha_bar[s]) / (1 - alpha_bar[t]) * (1 - alpha_bar[t] / alpha_bar[s]))
    z = torch.randn(x_t.shape, generator=_seeded(7))
    expected = math.sqrt(alpha_bar[s]) * x0_hat + math.sqrt(1 - alpha_bar[s] - sig**2) * eps_hat + sig * z
    x_s, _ = DDIMSampler(eta=eta).step(schedule, x_t, x0_hat, eps_hat, t, s, generator=_seeded(7))
    torch.testing.assert_close(x_s, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("sampler", all_samplers(), ids=repr)
@pytest.mark.parametrize("schedule_fn", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_point_oracle_recovers_the_point(sampler: Sampler, schedule_fn) -> None:
    schedule = NoiseSchedule(schedule_fn(1000))
    x0_star = torch.tensor([1.5, -0.7, 0.2]).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    x, trajectory = sample(
        point_oracle(schedule, x0_star), schedule, sampler, (4, 3, 2, 2), generator=gen, return_trajectory=True
    )
    torch.testing.assert_close(x, x0_star.expand(4, 3, 2, 2), rtol=0, atol=1e-6)
    if isinstance(sampler, DDPMSampler):
        return
    # Deterministic samplers solve this ODE exactly: every x_t lies on alpha_t x0* + sigma_t e.
    steps = sampler.timesteps(schedule).tolist()
    alpha_0, sigma_0 = schedule.at(steps[0])
    e = (trajectory[0] - alpha_0 * x0_star) / sigma_0
    for x_s, s in zip(trajectory[1:], steps[1:] + [CLEAN]):
        alpha_s, sigma_s = schedule.at(s)
        torch.testing.assert_close(x_s, alpha_s * x0_star + sigma_s * e, rtol=1e-5, atol=1e-5)


def _scalar_gain(kind: str, steps: list[int], alpha_bar: list[float]) -> float:
    """x0 = gain * x_T for Gaussian data, from DDIM eq. 12 (eta=0) / DPM-Solver++ Alg. 2 in VP form."""
    x, prev = 1.0, None
    for t, s in zip(steps, steps[1:] + [CLEAN]):
        ab_t = alpha_bar[t]
        ab_s = 1.0 if s == CLEAN else alpha_bar[s]
        x0 = math.sqrt(ab_t) * DATA_STD**2 / (ab_t * DATA_STD**2 + 1 - ab_t) * x
        if kind == "ddim" or s == CLEAN:
            eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
            x = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * eps
            continue
        lam_t, lam_s = 0.5 * math.log(ab_t / (1 - ab_t)), 0.5 * math.log(ab_s / (1 - ab_s))
        h, d = lam_s - lam_t, x0
        if prev is not None:
            r = (lam_t - prev[1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev[0]
        x = math.sqrt((1 - ab_s) / (1 - ab_t)) * x - math.sqrt(ab_s) * (math.exp(-h) - 1) * d
        prev = (x0, lam_t)
    return x


@pytest.mark.parametrize(
    ("kind", "sampler"),
    [("ddim", DDIMSampler(50, eta=0.0, spacing=sp)) for sp in SPACINGS]
    + [("dpm", DPMSolverPP2M(20, spacing=sp)) for sp in SPACINGS],
    ids=_id,
)
def test_gaussian_oracle_matches_scalar_recursion(kind: str, sampler: Sampler) -> None:
    """For Gaussian data the deterministic samplers are linear maps; check the gain exactly."""
    schedule = NoiseSchedule(linear(1000))
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x = sample(gaussian_oracle(schedule), schedule, sampler, x_T.shape, x_T=x_T)
    gain = _scalar_gain(kind, sampler.timesteps(schedule).tolist(), _vp_linear_alpha_bar(1000))
    torch.testing.assert_close(x, gain * x_T, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("schedule_fn", "sampler"),
    [
        (cosine, DDIMSampler(50, eta=0.0)),
        (interpolation, DDIMSampler(50, eta=0.0)),
        (cosine, DPMSolverPP2M(20)),
        (linear, DPMSolverPP2M(20)),
        (interpolation, DPMSolverPP2M(20)),
        (linear, DDPMSampler()),
        (interpolation, DDPMSampler()),
    ],
    ids=_id,
)
def test_gaussian_oracle_sample_std(schedule_fn, sampler: Sampler) -> None:
    schedule = NoiseSchedule(schedule_fn(1000))
    gen = torch.Generator().manual_seed(0)
    x = sample(gaussian_oracle(schedule), schedule, sampler, (8192, 2), generator=gen)
    assert x.mean().item() == pytest.approx(0.0, abs=0.02)
    assert x.std().item() == pytest.approx(DATA_STD, rel=0.05)


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("sampler", all_samplers(), ids=repr)
def test_shapes_and_trajectory(sampler: Sampler) -> None:
    schedule = NoiseSchedule(cosine(100))
    shape = (3, 2, 4, 4)
    x, trajectory = sample(gaussian_oracle(schedule), schedule, sampler, shape, return_trajectory=True)
    assert x.shape == shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert len(trajectory) == len(sampler.timesteps(schedule)) + 1
    assert all(step.shape == shape for step in trajectory)
    assert trajectory[-1] is x


@pytest.mark.parametrize(
    "sampler", [DDPMSampler(), DDIMSampler(10, eta=0.5), DDIMSampler(10), DPMSolverPP2M(10)], ids=repr
)
def test_seeded_sampling_is_reproducible(sampler: Sampler) -> None:
    schedule = NoiseSchedule(cosine(100))

    def run(seed: int, x_T: Tensor | None = None) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return sample(gaussian_oracle(schedule), schedule, sampler, (2, 3, 4), generator=gen, x_T=x_T)

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    # With x_T fixed, only the stochastic samplers still depend on the seed.
    x_T = torch.randn(2, 3, 4)
    stochastic = isinstance(sampler, DDPMSampler) or getattr(sampler, "eta", 0.0) > 0
    if stochastic:
        assert not torch.allclose(run(0, x_T), run(1, x_T))
    else:
        assert torch.equal(run(0, x_T), run(1, x_T))


@pytest.mark.parametrize("param", [EpsilonPrediction(), VPrediction()], ids=repr)
def test_denoiser_from_network_and_parameterization(param) -> None:
    schedule = NoiseSchedule(cosine(100))
    oracle = gaussian_oracle(schedule)

    def network(x_t: Tensor, t: Tensor) -> Tensor:  # a "network" that outputs the exact target
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        return param.target(*oracle(x_t, t), alpha, sigma)

    x_T = torch.randn(4, 3)
    expected = sample(oracle, schedule, DDIMSampler(10, eta=0.0), x_T.shape, x_T=x_T)
    got = sample(denoiser_from(network, param, schedule), schedule, DDIMSampler(10, eta=0.0), x_T.shape, x_T=x_T)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_clip_and_progress_logging(caplog: pytest.LogCaptureFixture) -> None:
    schedule = NoiseSchedule(cosine(100))
    x0_star = torch.full((1, 3), 3.0)
    with caplog.at_level(logging.INFO, logger="ldm.diffusion.loop"):
        x = sample(point_oracle(schedule, x0_star), schedule, DDIMSampler(10), (2, 3), clip=1.0, progress=True)
    torch.testing.assert_close(x, torch.ones(2, 3))
    assert sum("step" in r.getMessage() for r in caplog.records) == 10
