"""DDIM inversion, slerp, SDEdit and inpainting with the exact denoiser of Gaussian data, where
the right answers are known."""

from __future__ import annotations

import pytest
import torch

from ldm.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, sigmoid
from ldm.diffusion.inversion import inpaint, invert, sdedit, slerp, start_step
from ldm.diffusion.loop import sample

SCHEDULE = NoiseSchedule(sigmoid(1000))


def exact(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[x0 | x_t] and the matching eps for x0 ~ N(0, I)."""
    alpha, sigma = SCHEDULE.coefficients(t, x_t.ndim)
    x0 = alpha / (alpha**2 + sigma**2) * x_t
    return x0, (x_t - alpha * x0) / sigma


def x0_batch(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps", [50, 200])
def test_inversion_round_trip_is_close_and_improves_with_steps(steps: int) -> None:
    x0 = x0_batch()
    sampler = DDIMSampler(steps, eta=0.0, spacing="trailing")
    noise = invert(exact, SCHEDULE, x0, sampler)
    assert 0.8 < noise.std() < 1.2  # a plausible x_T
    back = sample(exact, SCHEDULE, sampler, x0.shape, x_T=noise)
    error = ((back - x0).norm() / x0.norm()).item()
    assert error < {50: 0.05, 200: 0.015}[steps], error


def test_inversion_needs_the_deterministic_sampler() -> None:
    with pytest.raises(ValueError, match="eta=0"):
        invert(exact, SCHEDULE, x0_batch(2), DDIMSampler(10, eta=1.0))


def test_slerp_keeps_the_ends_and_the_norm() -> None:
    a, b = torch.zeros(1, 8), torch.zeros(1, 8)
    a[0, 0], b[0, 1] = 3.0, 3.0  # orthogonal, same norm
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a[0]) and torch.allclose(path[-1], b[0], atol=1e-6)
    assert torch.allclose(path.norm(dim=1), torch.full((5,), 3.0), atol=1e-5)  # a straight line dips to 2.12
    assert torch.allclose(slerp(a, a, torch.tensor([0.5])), a)


def test_sdedit_runs_only_the_steps_below_its_start() -> None:
    x0 = x0_batch(8)
    assert start_step(SCHEDULE, 0.5) == 500
    with pytest.raises(ValueError, match="strength"):
        start_step(SCHEDULE, 0.0)
    gentle = sdedit(exact, SCHEDULE, x0, 0.02, DDIMSampler(50, eta=0.0), generator=torch.Generator().manual_seed(1))
    assert ((gentle - x0).norm() / x0.norm()) < 0.2  # a light edit stays near the input
    steps = []
    sample(exact, SCHEDULE, DDIMSampler(10, eta=0.0), x0.shape, x_T=x0, start=450, on_step=lambda i, n: steps.append(n))
    assert steps == [6] * 6  # 450, then the leading steps below it: 400, 300, 200, 100, 0


def test_inpainting_keeps_the_known_region_exactly() -> None:
    x0 = x0_batch(4)
    known = torch.zeros(1, 1, 4, 4)
    known[..., :2, :] = 1  # the upper half is given
    out = inpaint(exact, SCHEDULE, x0, known, DDPMSampler(), generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[..., :2, :], x0[..., :2, :])
    assert not torch.allclose(out[..., 2:, :], x0[..., 2:, :])
