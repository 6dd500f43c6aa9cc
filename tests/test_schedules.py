"""Tests for ldm.diffusion.schedules: monotonicity, golden values, the forward process."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.diffusion.schedules import CLEAN, NoiseSchedule, cosine, interpolation, linear, scaled_linear, sigmoid

SCHEDULES = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
    "interpolation": interpolation,
}
VP = ["linear", "scaled_linear", "cosine", "sigmoid"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_monotone_and_float64(name: str) -> None:
    alpha, sigma = SCHEDULES[name]()
    assert alpha.dtype == sigma.dtype == torch.float64
    assert alpha.shape == sigma.shape == (1000,)
    assert (alpha[1:] < alpha[:-1]).all()
    assert (sigma[1:] > sigma[:-1]).all()
    snr = (alpha / sigma) ** 2
    assert (snr[1:] < snr[:-1]).all()


@pytest.mark.parametrize("name", SCHEDULES)
def test_endpoints(name: str) -> None:
    alpha, sigma = SCHEDULES[name]()
    # Nearly clean at t=0, nearly pure noise at t=T-1 (scaled_linear is the known
    # exception with alpha_bar_{T-1} ~ 0.0047, Lin et al. 2023).
    assert alpha[0] > 0.99 and sigma[0] < 0.05
    assert sigma[-1] > 0.99 and alpha[-1] < 0.07
    assert (alpha > 0).all() and (sigma > 0).all()


@pytest.mark.parametrize("name", VP)
def test_variance_preserving(name: str) -> None:
    alpha, sigma = SCHEDULES[name]()
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-12)


def test_linear_golden_alpha_bar() -> None:
    T, b0, b1 = 1000, 1e-4, 0.02
    alpha, _ = linear(T, b0, b1)
    for t in (0, 1, 10, 250, 500, 999):
        # alpha_bar_t = prod_{i<=t} (1 - beta_i), beta_i linear (DDPM eq. 4).
        expected = math.prod(1 - (b0 + (b1 - b0) * i / (T - 1)) for i in range(t + 1))
        assert alpha[t].item() ** 2 == pytest.approx(expected, rel=1e-10)
    assert alpha[0].item() ** 2 == pytest.approx(1 - b0, rel=1e-12)
    # Widely quoted value of DDPM's final alpha_bar.
    assert alpha[-1].item() ** 2 == pytest.approx(4.0358e-05, rel=1e-4)


def test_scaled_linear_first_beta() -> None:
    alpha, _ = scaled_linear()
    assert alpha[0].item() ** 2 == pytest.approx(1 - 0.00085, rel=1e-12)
    r0, r1 = math.sqrt(0.00085), math.sqrt(0.012)
    expected_last = math.prod(1 - (r0 + (r1 - r0) * i / 999) ** 2 for i in range(1000))
    assert alpha[-1].item() ** 2 == pytest.approx(expected_last, rel=1e-9)


def test_cosine_golden_alpha_bar() -> None:
    T, s = 1000, 0.008

    def f(u: float) -> float:  # Nichol & Dhariwal eq. 17, before normalisation
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    alpha, _ = cosine(T, s)
    # Betas telescope until the clip at 0.999, which only bites at the last index.
    for t in (0, 1, 10, 500, 900, 998):
        assert alpha[t].item() ** 2 == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert alpha[-1].item() ** 2 == pytest.approx(f(999 / T) / f(0) * (1 - 0.999), rel=1e-9)


def test_sigmoid_golden_alpha_bar() -> None:
    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    def gamma(u: float) -> float:  # Chen 2023, Algorithm 1 with start=-3, end=3, tau=1
        return (sig(3) - sig(6 * u - 3)) / (sig(3) - sig(-3))

    alpha, _ = sigmoid(1000)
    for t in (0, 100, 500, 998):
        assert alpha[t].item() ** 2 == pytest.approx(gamma((t + 1) / 1000), rel=1e-9)


def test_interpolation_values() -> None:
    T = 9
    alpha, sigma = interpolation(T)
    phi = torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)
    torch.testing.assert_close(sigma, phi)
    torch.testing.assert_close(alpha, 1 - phi)
    assert alpha[0] == pytest.approx(0.9) and sigma[-1] == pytest.approx(0.9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_one_step_chain_matches_q_sample(name: str) -> None:
    """Iterating blog eq. 1 from x0 reproduces q(x_t | x0) of q_sample (Monte Carlo)."""
    T = 200  # a shorter schedule keeps the Python-level loop fast; the algebra is the same
    alpha, sigma = SCHEDULES[name](T)
    schedule = NoiseSchedule((alpha, sigma))
    gen = torch.Generator().manual_seed(0)
    # n stays below torch's parallel grain size (32768): tiny ops, no thread-pool overhead.
    n, x0_value, checkpoints = 30_000, 1.5, {0, 9, 99, T - 1}
    x0 = torch.full((n,), x0_value, dtype=torch.float64)
    x = x0.clone()
    prev_alpha, prev_sigma = 1.0, 0.0  # "t = -1" is the clean sample
    for t in range(T):
        ratio = alpha[t] / prev_alpha
        step_std = torch.sqrt(sigma[t] ** 2 - ratio**2 * prev_sigma**2)
        x = ratio * x + step_std * torch.randn(n, generator=gen, dtype=torch.float64)
        prev_alpha, prev_sigma = alpha[t], sigma[t]
        if t in checkpoints:
            eps = torch.randn(n, 1, generator=gen)
            direct = schedule.q_sample(x0.float()[:, None], torch.full((n,), t), eps).double().squeeze(1)
            for samples in (x, direct):
                assert samples.mean().item() == pytest.approx(alpha[t].item() * x0_value, abs=0.025)
                assert samples.var().item() == pytest.approx(sigma[t].item() ** 2, rel=0.035, abs=1e-3)


def test_module_buffers_and_lookups() -> None:
    alpha, sigma = cosine(50)
    schedule = NoiseSchedule((alpha, sigma))
    assert schedule.num_timesteps == 50
    assert schedule.alpha.dtype == schedule.sigma.dtype == torch.float32
    assert dict(schedule.state_dict()) == {}  # derived buffers are not checkpointed
    t = torch.tensor([0, 7, 49])
    a, s = schedule.coefficients(t, ndim=4)
    assert a.shape == s.shape == (3, 1, 1, 1)
    torch.testing.assert_close(a.flatten(), alpha[t].float())
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(schedule.q_sample(x0, t, eps), a * x0 + s * eps)
    torch.testing.assert_close(schedule.snr(t), (alpha[t] / sigma[t]).float() ** 2)
    torch.testing.assert_close(schedule.log_snr(t), torch.log(schedule.snr(t)), rtol=1e-5, atol=1e-5)
    assert schedule.at(CLEAN)[0].item() == 1.0 and schedule.at(CLEAN)[1].item() == 0.0
    assert schedule.at(49)[0].item() == pytest.approx(alpha[49].item(), rel=1e-6)
    with pytest.raises(ValueError, match="t must be in"):
        schedule.at(50)


def _pair(alpha: list[float], sigma: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)


@pytest.mark.parametrize(
    ("coefficients", "message"),
    [
        (_pair([0.9, 0.5], [0.1, 0.5, 0.8]), "equal length"),
        ((torch.ones(2, 2), torch.ones(2, 2)), "1-D"),
        (_pair([0.9, float("nan")], [0.1, 0.5]), "finite"),
        (_pair([0.9, 0.0], [0.1, 1.0]), "strictly positive"),
        (_pair([1.0, 0.9], [0.0, 0.1]), "strictly positive"),
        (_pair([0.9, 0.9, 0.5], [0.1, 0.1, 0.5]), "strictly decreasing.*t=1"),
        ((torch.ones(3),), "pair"),
    ],
)
def test_invalid_coefficients_raise(coefficients: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(coefficients)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: linear(0), "num_timesteps"),
        (lambda: linear(10, beta_start=0.02, beta_end=0.01), "beta_start"),
        (lambda: scaled_linear(10, beta_end=1.0), "beta_end"),
        (lambda: cosine(10, s=-0.1), "s must"),
        (lambda: cosine(10, max_beta=1.0), "max_beta"),
        (lambda: sigmoid(10, start=3.0, end=-3.0), "start < end"),
        (lambda: interpolation(-1), "num_timesteps"),
    ],
)
def test_invalid_schedule_arguments_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
