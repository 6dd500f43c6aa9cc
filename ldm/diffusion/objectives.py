"""Training objectives: the one object that owns the draw of t, the noise, the network input, the
target, the per-sample weight, and the sampling loop that matches them.

A LightningModule holds no diffusion math: it asks its objective for times (`draw_times`,
`eval_times`) and a per-sample loss, and hands it the network to sample from. A new objective
(a new forward process, a new time variable) is one subclass here and one file in `conf/objective/`.

    network(x_t, network_time(t) [, labels]) -> output        (the only call shape a network sees)
    loss = weight(t) * mean over pixels of (output - target)^2 (DDPM eq. 14, weighted)

`DiffusionObjective` is the discrete-time DDPM family (Ho et al. 2020, arXiv 2006.11239,
Algorithm 1) in the general (alpha, sigma) form of VDM (Kingma et al. 2021, eq. 1): integer t in
[0, T), any schedule, parameterization and loss weight. Flow matching is in `ldm.diffusion.flow`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ldm.diffusion.loop import denoiser_from, sample
from ldm.diffusion.parameterization import Parameterization
from ldm.diffusion.samplers import Sampler
from ldm.diffusion.schedules import NoiseSchedule
from ldm.diffusion.weighting import LossWeight, UniformWeight

#: (x_t, network time) -> raw network output; labels already bound (see LatentDiffusionModule).
Network = Callable[[Tensor, Tensor], Tensor]

EVAL_GRID = 10  # validation uses t on a fixed grid of this many points, so epochs are comparable


class Objective(torch.nn.Module, ABC):
    """The forward process, the regression target and weight, and the reverse-time sampler loop.

    A module only so that tensors it holds (a schedule's buffers) follow `.to(device)`; it has no
    parameters and adds nothing to a state dict.
    """

    #: The sampler family this objective drives (checked before any network call).
    sampler_type: type = object

    @abstractmethod
    def draw_times(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Training times t for a batch of n, drawn from the objective's time distribution. (n,)"""

    @abstractmethod
    def eval_times(self, n: int, device: torch.device) -> Tensor:
        """Deterministic times on a fixed grid (validation): the same batch gives the same loss. (n,)"""

    @abstractmethod
    def noisy(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The forward process: x_t from clean x0 and noise eps at times t."""

    @abstractmethod
    def target_and_weight(self, x0: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The network's regression target (shaped like x0) and the per-sample loss weight (B,)."""

    @abstractmethod
    def network_time(self, t: Tensor) -> Tensor:
        """What the network's time embedding sees for t (an index, or continuous time scaled)."""

    @abstractmethod
    def figure_times(self, columns: int, device: torch.device) -> Tensor:
        """`columns` increasingly noisy times from near-clean to the noisiest, for figures. (columns,)"""

    @abstractmethod
    def sample(
        self,
        network: Network,
        sampler: Any,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        return_trajectory: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run `sampler` from pure noise to clean data through `network` (and the x_t trajectory);
        `on_step(i, n)` after each of its n steps."""

    def check_sampler(self, sampler: Any) -> None:
        """Refuse a sampler of another family before any network call."""
        if not isinstance(sampler, self.sampler_type):
            raise ValueError(
                f"{type(sampler).__name__} cannot sample a {type(self).__name__} model: use a "
                f"{self.sampler_type.__name__} (sampler=...; see conf/sampler/)"
            )

    def loss(
        self, network: Callable[..., Tensor], x0: Tensor, t: Tensor, eps: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """Weighted squared error of the network output against the target, per sample. (B,)"""
        x_t = self.noisy(x0, t, eps)
        target, weight = self.target_and_weight(x0, eps, t)
        time = self.network_time(t)
        output = network(x_t, time) if labels is None else network(x_t, time, labels)
        error = (output.float() - target.float()).pow(2).flatten(1).mean(1)
        return weight * error

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain values or built objects (`ldm.serialize`)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"


class DiffusionObjective(Objective):
    """Discrete-time DDPM training (Ho et al. Algorithm 1) for any schedule and parameterization.

    t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = alpha_t x0 + sigma_t eps (DDPM eq. 4; VDM eq. 1); the
    network regresses the parameterization's target with the loss weight's per-timestep factor.
    Sampled by the `ldm.diffusion.samplers` family (DDPM, DDIM, DPM-Solver++).
    """

    sampler_type = Sampler

    def __init__(
        self, schedule: NoiseSchedule, parameterization: Parameterization, weighting: LossWeight | None = None
    ) -> None:
        super().__init__()
        self.schedule, self.parameterization = schedule, parameterization
        self.weighting = weighting or UniformWeight()

    @property
    def config(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "parameterization": self.parameterization, "weighting": self.weighting}

    def draw_times(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.schedule.num_timesteps, (n,), device=device, generator=generator)

    def eval_times(self, n: int, device: torch.device) -> Tensor:
        grid = torch.linspace(0, self.schedule.num_timesteps - 1, EVAL_GRID, device=device).long()
        return grid[torch.arange(n, device=device) % EVAL_GRID]

    def noisy(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.schedule.q_sample(x0, t, eps)

    def target_and_weight(self, x0: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.schedule.coefficients(t, x0.ndim)
        target = self.parameterization.target(x0, eps, alpha, sigma)
        factor = self.parameterization.x0_loss_factor(alpha, sigma).flatten()
        return target, self.weighting(self.schedule.snr(t), factor)

    def network_time(self, t: Tensor) -> Tensor:
        return t

    def figure_times(self, columns: int, device: torch.device) -> Tensor:
        return torch.linspace(0, self.schedule.num_timesteps - 1, columns, device=device).long()

    def check_sampler(self, sampler: Any) -> None:
        super().check_sampler(sampler)
        sampler.timesteps(self.schedule)  # e.g. num_steps > T fails now, not after training

    def sample(
        self,
        network: Network,
        sampler: Sampler,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        return_trajectory: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        self.check_sampler(sampler)
        denoiser = denoiser_from(network, self.parameterization, self.schedule)
        return sample(
            denoiser,
            self.schedule,
            sampler,
            shape,
            generator=generator,
            device=device,
            return_trajectory=return_trajectory,
            on_step=on_step,
        )
