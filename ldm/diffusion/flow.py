"""Flow matching on the straight path between data and noise (rectified flow), and its samplers.

    x_t = (1 - t) x0 + t eps,  t in [0, 1]           (Liu et al. 2022, arXiv 2209.03003, eq. 1;
                                                       the post's alpha-(de)blending, eq. 2)
    u_t = d x_t / dt = eps - x0                      (the velocity the network regresses)
    loss = || v_theta(x_t, t) - (eps - x0) ||^2      (Lipman et al. 2022, arXiv 2210.02747, CFM eq. 23)

In the notation of `ldm.diffusion` this is the Gaussian path alpha_t = 1 - t, sigma_t = t, with
continuous t (t = 0 clean, t = 1 pure noise), and the velocity prediction v determines both
estimates: x0_hat = x_t - t v, eps_hat = x_t + (1 - t) v. Sampling integrates the ODE
dx/dt = v(x, t) from t = 1 (x ~ N(0, I)) down to t = 0.

Time distributions: "uniform" (Lipman et al.) and "logit_normal", t = sigmoid(m + s n), n ~ N(0, 1),
which puts more training on the middle of the path (Esser et al. 2024, arXiv 2403.03206, Sec. 3.1,
eq. 19). Sampling grids may be shifted toward the noisy end, t' = k t / (1 + (k - 1) t)
(Esser et al. eq. 23), which helps few-step sampling.

Samplers: Euler (first order, one evaluation per step; identical to deterministic DDIM on this
path), Heun (second order, two evaluations per step, Euler on the last; Karras et al. 2022,
arXiv 2206.00364, Algorithm 1), and an ancestral sampler that draws x_s from the path's Gaussian
posterior q(x_s | x_t, x0 = x0_hat) with DDIM's eta (Song et al. 2020, eq. 16 in VDM's general
form): eta = 0 is Euler, eta = 1 the full posterior.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ldm.diffusion.objectives import EVAL_GRID, Network, Objective
from ldm.diffusion.samplers import _check_choice, _check_num_steps, _randn, transition_var

TimeDistribution = Literal["uniform", "logit_normal"]


def estimates(v: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from a velocity prediction at x_t: invert x_t = (1 - t) x0 + t eps, v = eps - x0."""
    return x_t - t * v, x_t + (1 - t) * v


class FlowSampler(ABC):
    """Integrates dx/dt = v(x, t) from t = 1 to t = 0 on `num_steps` intervals (optionally shifted)."""

    MAX_STEPS = 100_000  # far past any gain; the diffusion samplers' bound is the schedule's T

    def __init__(self, num_steps: int = 50, shift: float = 1.0) -> None:
        _check_num_steps(num_steps)
        if num_steps > self.MAX_STEPS:
            raise ValueError(f"num_steps={num_steps} exceeds {self.MAX_STEPS}, the most a flow sampler takes")
        if not 0 < shift < float("inf"):
            raise ValueError(f"shift must be a finite number > 0, got shift={shift!r}")
        self.num_steps, self.shift = num_steps, float(shift)

    @property
    def config(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "shift": self.shift}

    @property
    def num_evaluations(self) -> int:
        """Network evaluations per sample."""
        return self.num_steps

    def times(self) -> list[float]:
        """Descending times 1 = t_0 > t_1 > ... > t_N = 0, shifted by t' = k t / (1 + (k - 1) t)."""
        u = torch.linspace(1.0, 0.0, self.num_steps + 1, dtype=torch.float64)
        return (self.shift * u / (1 + (self.shift - 1) * u)).tolist()

    @abstractmethod
    def step(self, velocity: Network, x: Tensor, t: float, s: float, generator: torch.Generator | None) -> Tensor:
        """x_s from x_t (s < t), calling `velocity(x, t)` as often as the method needs."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"


class EulerSampler(FlowSampler):
    """x_s = x_t + (s - t) v(x_t, t): the deterministic first-order solver."""

    def step(self, velocity: Network, x: Tensor, t: float, s: float, generator: torch.Generator | None) -> Tensor:
        return x + (s - t) * velocity(x, t)


class HeunSampler(FlowSampler):
    """Heun's second-order method (trapezoid with an Euler predictor); the last step is plain Euler,
    so N steps cost 2N - 1 evaluations (Karras et al. Algorithm 1, which stops at sigma = 0 alike)."""

    def __init__(self, num_steps: int = 25, shift: float = 1.0) -> None:
        super().__init__(num_steps, shift)

    @property
    def num_evaluations(self) -> int:
        return 2 * self.num_steps - 1

    def step(self, velocity: Network, x: Tensor, t: float, s: float, generator: torch.Generator | None) -> Tensor:
        v_t = velocity(x, t)
        x_euler = x + (s - t) * v_t
        if s == 0.0:
            return x_euler
        return x + (s - t) * 0.5 * (v_t + velocity(x_euler, s))


class FlowAncestralSampler(FlowSampler):
    """Stochastic: x_s ~ q(x_s | x_t, x0_hat) on the straight path, with DDIM's eta.

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2,
    alpha = 1 - t, sigma = t. Each step re-injects fresh noise, which corrects part of the
    network's error (as DDIM with eta = 1 does for the DDPM models here); eta = 0 is Euler.
    """

    def __init__(self, num_steps: int = 50, shift: float = 1.0, eta: float = 1.0) -> None:
        super().__init__(num_steps, shift)
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got eta={eta!r}")
        self.eta = float(eta)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "eta": self.eta}

    def step(self, velocity: Network, x: Tensor, t: float, s: float, generator: torch.Generator | None) -> Tensor:
        x0_hat, eps_hat = estimates(velocity(x, t), x, torch.tensor(t, dtype=x.dtype, device=x.device))
        if s == 0.0:
            return x0_hat
        alpha_t, sigma_t, alpha_s, sigma_s = (torch.tensor(v, dtype=torch.float64) for v in (1 - t, t, 1 - s, s))
        c2 = float(self.eta**2 * transition_var(alpha_t, sigma_t, alpha_s, sigma_s) * sigma_s**2 / sigma_t**2)
        x_s = (1 - s) * x0_hat + max(s**2 - c2, 0.0) ** 0.5 * eps_hat
        return x_s + c2**0.5 * _randn(x.shape, generator, x.device, x.dtype) if c2 > 0 else x_s


class FlowMatching(Objective):
    """Conditional flow matching on x_t = (1 - t) x0 + t eps with the velocity target eps - x0.

    Args:
        time_distribution: "uniform" or "logit_normal" training times.
        loc, scale: the logit-normal's m and s (Esser et al. use m = 0, s = 1).
        time_scale: the network sees t * time_scale, so a time embedding built for DDPM's
            integer steps (frequencies up to 1/1000) sees the same range.
    """

    sampler_type = FlowSampler

    def __init__(
        self,
        time_distribution: TimeDistribution = "logit_normal",
        loc: float = 0.0,
        scale: float = 1.0,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        _check_choice("time_distribution", time_distribution, get_args(TimeDistribution))
        if not scale > 0 or not time_scale > 0:
            raise ValueError(f"scale={scale!r} and time_scale={time_scale!r} must be > 0")
        self.time_distribution, self.loc, self.scale = time_distribution, float(loc), float(scale)
        self.time_scale = float(time_scale)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "time_distribution": self.time_distribution,
            "loc": self.loc,
            "scale": self.scale,
            "time_scale": self.time_scale,
        }

    def draw_times(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        if self.time_distribution == "uniform":
            return torch.rand(n, device=device, generator=generator)
        return torch.sigmoid(self.loc + self.scale * torch.randn(n, device=device, generator=generator))

    def eval_times(self, n: int, device: torch.device) -> Tensor:
        grid = (torch.arange(EVAL_GRID, device=device) + 0.5) / EVAL_GRID  # midpoints, never 0 or 1
        return grid[torch.arange(n, device=device) % EVAL_GRID]

    def noisy(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        t = t.to(x0.dtype).reshape(-1, *(1,) * (x0.ndim - 1))
        return (1 - t) * x0 + t * eps

    def target_and_weight(self, x0: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return eps - x0, torch.ones(len(x0), device=x0.device)

    def network_time(self, t: Tensor) -> Tensor:
        return t.float() * self.time_scale

    def figure_times(self, columns: int, device: torch.device) -> Tensor:
        return torch.linspace(1.0 / columns, 1.0, columns, device=device)

    def sample(
        self,
        network: Network,
        sampler: FlowSampler,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        return_trajectory: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        self.check_sampler(sampler)
        device = torch.device(device) if device is not None else torch.device("cpu")
        x = _randn(shape, generator, device, torch.float32)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            return network(x_t, self.network_time(torch.full((len(x_t),), t, device=device))).float()

        times, trajectory = sampler.times(), [x]
        with torch.no_grad():
            for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
                x = sampler.step(velocity, x, t, s, generator)
                if return_trajectory:
                    trajectory.append(x)
                if on_step is not None:
                    on_step(i, len(times) - 1)
        return (x, trajectory) if return_trajectory else x
