"""Samplers for x_t = alpha_t x0 + sigma_t eps, written for general (alpha, sigma).

A sampler never sees the network: it gets (x0_hat, eps_hat) from a ``Denoiser``
and maps x_t to x_s for the next, less noisy index s (``CLEAN`` = -1 after the
last step). ``ldm.diffusion.loop.sample`` is the only sampling loop; a sampler supplies its
``timesteps`` and a ``step`` that threads an explicit per-call ``state`` (None for
single-step methods, the previous prediction for the multistep solver).

    DDPM: Ho et al. 2020, arXiv 2006.11239, posterior q(x_{t-1} | x_t, x0), eqs. 6-7;
        general (alpha, sigma) form from VDM, Kingma et al. 2021, arXiv 2107.00630,
        Sec. 3.1-3.3: alpha_{t|s} = alpha_t/alpha_s, sigma_{t|s}^2 = sigma_t^2 -
        alpha_{t|s}^2 sigma_s^2.
    DDIM: Song et al. 2020, arXiv 2010.02502, eq. 12 (update) and eq. 16 (eta).
    DPM-Solver++(2M): Lu et al. 2022, arXiv 2211.01095, Algorithm 2.
    Timestep spacing: Lin et al. 2023, "Common Diffusion Noise Schedules and
        Sample Steps are Flawed", arXiv 2305.08891, Table 2 (diffusers' definitions).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ldm.diffusion.schedules import CLEAN, NoiseSchedule

#: (x_t, t) -> (x0_hat, eps_hat); t is int64 of shape (B,).
Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Spacing = Literal["linspace", "leading", "trailing"]


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def _check_num_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got num_steps={num_steps!r}")


def timesteps(num_timesteps: int, num_steps: int, spacing: Spacing) -> Tensor:
    """Descending, unique int64 indices in [0, T) at which to evaluate the denoiser.

    Definitions follow diffusers / Lin et al. Table 2 (without diffusers'
    ``steps_offset``). For T = 1000, num_steps = 10:
    linspace 999, 888, ..., 0; leading 900, 800, ..., 0; trailing 999, 899, ..., 99.
    Only linspace and trailing start at T-1, where x_T ~ N(0, I) is matched.
    """
    _check_num_steps(num_steps)
    if num_steps > num_timesteps:
        raise ValueError(f"num_steps={num_steps} exceeds the schedule's num_timesteps={num_timesteps}")
    _check_choice("spacing", spacing, get_args(Spacing))
    T, N = num_timesteps, num_steps
    if spacing == "linspace":
        # Ascending then flipped, exactly as diffusers, so rounding ties agree.
        steps = torch.linspace(0, T - 1, N, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        steps = torch.arange(N - 1, -1, -1, dtype=torch.float64) * (T // N)
    else:  # trailing
        steps = torch.round(T - torch.arange(N, dtype=torch.float64) * (T / N)) - 1
    return steps.long()


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Draw on the generator's own device, then move: a seeded CPU generator then
    # gives identical noise whatever device the model runs on.
    source = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def transition_var(alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """sigma_{t|s}^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2 (VDM Sec. 3.2), clamped at 0.

    The clamp only absorbs float32 rounding; the schedule guarantees it is >= 0.
    """
    return (sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2).clamp(min=0)


def posterior(
    x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_s | x_t, x0) for s < t (DDPM eqs. 6-7 in VDM's general form).

    mean = alpha_{t|s} sigma_s^2/sigma_t^2 x_t + alpha_s sigma_{t|s}^2/sigma_t^2 x0,
    var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
    """
    var_ts = transition_var(alpha_t, sigma_t, alpha_s, sigma_s)
    mean = (alpha_t / alpha_s) * sigma_s**2 / sigma_t**2 * x_t + alpha_s * var_ts / sigma_t**2 * x0
    return mean, var_ts * sigma_s**2 / sigma_t**2


class Sampler(ABC):
    """One reverse-process update rule; ``ldm.diffusion.loop.sample`` drives it."""

    @abstractmethod
    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        """Descending int64 indices; the loop appends CLEAN as the final target."""

    @abstractmethod
    def step(
        self,
        schedule: NoiseSchedule,
        x_t: Tensor,
        x0_hat: Tensor,
        eps_hat: Tensor,
        t: int,
        s: int,
        *,
        state: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Any]:
        """x_s from x_t and the denoiser's prediction at t; returns (x_s, state for the next step)."""


class DDPMSampler(Sampler):
    """Ancestral sampling through every index, drawing from the exact posterior.

    Uses q(x_{t-1} | x_t, x0 = x0_hat), i.e. DDPM's "beta tilde" variance (eq. 7).
    """

    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        return torch.arange(schedule.num_timesteps - 1, -1, -1, dtype=torch.long)

    def step(
        self,
        schedule: NoiseSchedule,
        x_t: Tensor,
        x0_hat: Tensor,
        eps_hat: Tensor,
        t: int,
        s: int,
        *,
        state: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Any]:
        if s == CLEAN:  # the posterior collapses onto x0 with zero variance
            return x0_hat, None
        mean, var = posterior(x_t, x0_hat, *schedule.at(t), *schedule.at(s))
        noise = _randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return mean + var.sqrt() * noise, None

    @property
    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "DDPMSampler()"


class DDIMSampler(Sampler):
    """DDIM (Song et al. eq. 12) on a sub-sequence of timesteps; eta = 0 is deterministic.

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
    c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (eq. 16 in general form), so
    eta = 1 reproduces the DDPM posterior between the chosen steps.
    """

    def __init__(self, num_steps: int = 50, eta: float = 1.0, spacing: Spacing = "leading") -> None:
        _check_num_steps(num_steps)
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got eta={eta!r}")
        _check_choice("spacing", spacing, get_args(Spacing))
        self.num_steps, self.eta, self.spacing = num_steps, float(eta), spacing

    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        return timesteps(schedule.num_timesteps, self.num_steps, self.spacing)

    def step(
        self,
        schedule: NoiseSchedule,
        x_t: Tensor,
        x0_hat: Tensor,
        eps_hat: Tensor,
        t: int,
        s: int,
        *,
        state: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Any]:
        c2, direction = self.noise_and_direction(schedule, t, s)
        x_s = schedule.at(s)[0] * x0_hat + direction * eps_hat
        if self.eta > 0 and s != CLEAN:  # c = 0 at CLEAN: draw no noise there
            x_s = x_s + c2.sqrt() * _randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return x_s, None

    def noise_and_direction(self, schedule: NoiseSchedule, t: int, s: int) -> tuple[Tensor, Tensor]:
        """c^2 (eq. 16) and sqrt(sigma_s^2 - c^2), the weight of eps_hat in x_s."""
        alpha_t, sigma_t = schedule.at(t)
        alpha_s, sigma_s = schedule.at(s)
        c2 = self.eta**2 * transition_var(alpha_t, sigma_t, alpha_s, sigma_s) * sigma_s**2 / sigma_t**2
        return c2, (sigma_s**2 - c2).clamp(min=0).sqrt()

    @property
    def config(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "eta": self.eta, "spacing": self.spacing}

    def __repr__(self) -> str:
        return f"DDIMSampler(num_steps={self.num_steps}, eta={self.eta}, spacing={self.spacing!r})"


@dataclass
class DPMSolverState:
    """What DPM-Solver++(2M) carries between steps: the last x0_hat and its lambda."""

    x0_hat: Tensor
    lambda_: Tensor


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M): second-order multistep ODE solver in data prediction (Lu et al. Alg. 2).

    With lambda = log(alpha/sigma) and h = lambda_s - lambda_t:
        x_s = (sigma_s/sigma_t) x_t - alpha_s (e^{-h} - 1) D,
        D = (1 + 1/(2r)) x0_hat_t - 1/(2r) x0_hat_prev,  r = h_prev / h.
    The first step has no history and is first order (D = x0_hat, i.e. DDIM). The
    last step lands on sigma = 0 where lambda = inf and r -> 0, so it is first
    order too ("lower_order_final"), which returns x0_hat: the output is denoised.

    Prefer "trailing" spacing (the default): "linspace" and "leading" end with a
    model call at t = 0, so the step before it spans a long lambda interval with a
    small r, and the 1/(2r) extrapolation then overshoots (on Gaussian data with the
    linear schedule and 20 steps, the sample std comes out ~25% too large).
    """

    def __init__(self, num_steps: int = 20, spacing: Spacing = "trailing") -> None:
        _check_num_steps(num_steps)
        _check_choice("spacing", spacing, get_args(Spacing))
        self.num_steps, self.spacing = num_steps, spacing

    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        return timesteps(schedule.num_timesteps, self.num_steps, self.spacing)

    def step(
        self,
        schedule: NoiseSchedule,
        x_t: Tensor,
        x0_hat: Tensor,
        eps_hat: Tensor,
        t: int,
        s: int,
        *,
        state: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Any]:
        if s == CLEAN:
            return x0_hat, None
        alpha_t, sigma_t = schedule.at(t)
        alpha_s, sigma_s = schedule.at(s)
        lambda_t, lambda_s = torch.log(alpha_t / sigma_t), torch.log(alpha_s / sigma_s)
        h = lambda_s - lambda_t
        d = x0_hat
        if state is not None:
            half_inv_r = 0.5 * h / (lambda_t - state.lambda_)
            d = (1 + half_inv_r) * x0_hat - half_inv_r * state.x0_hat
        x_s = (sigma_s / sigma_t) * x_t - alpha_s * torch.expm1(-h) * d
        return x_s, DPMSolverState(x0_hat=x0_hat, lambda_=lambda_t)

    @property
    def config(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "spacing": self.spacing}

    def __repr__(self) -> str:
        return f"DPMSolverPP2M(num_steps={self.num_steps}, spacing={self.spacing!r})"
