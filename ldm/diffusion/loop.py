"""The one sampling loop: a Sampler's steps from x_T (or a given state) down to clean data.

``denoiser_from`` turns a raw network into the ``Denoiser`` the loop calls: (x_t, t) -> (x0_hat,
eps_hat) through the network's parameterization. The loop also serves SDEdit (``start``: begin
at a chosen step from a given state) and inpainting (``after_step``: replace each new state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ldm.diffusion.parameterization import Parameterization
from ldm.diffusion.samplers import Denoiser, Sampler, _randn
from ldm.diffusion.schedules import CLEAN, NoiseSchedule

logger = logging.getLogger(__name__)


def denoiser_from(
    network: Callable[[Tensor, Tensor], Tensor], parameterization: Parameterization, schedule: NoiseSchedule
) -> Denoiser:
    """Wrap a raw network (x_t, t) -> output into a Denoiser via its parameterization."""

    def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        return parameterization.to_x0_eps(network(x_t, t), x_t, alpha, sigma)

    return denoise


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    sampler: Sampler,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    clip: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
    start: int | None = None,
    after_step: Callable[[Tensor, int], Tensor] | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run ``sampler`` from x_T ~ N(0, I) (or the given ``x_T``) down to clean data.

    ``device`` defaults to the schedule's device. ``clip`` (off by default: latents
    have no fixed range) clamps x0_hat to [-clip, clip] and recomputes eps_hat so
    the pair stays consistent with x_t. With ``return_trajectory`` also returns
    [x_T, x_{t_1}, ..., x0] (num_steps + 1 tensors). ``on_step(i, n)`` is called after each of
    the n steps (host side only: no device sync). ``start``: ``x_T`` is x at that step and only the
    sampler's steps below it run (SDEdit). ``after_step(x_s, s)`` may replace each new state (inpainting).
    """
    device = torch.device(device) if device is not None else schedule.alpha.device
    x = _randn(shape, generator, device, torch.float32) if x_T is None else x_T.to(device)
    if x.shape != torch.Size(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, expected shape={tuple(shape)}")
    steps = sampler.timesteps(schedule).tolist()
    if start is not None:
        if x_T is None or not 0 <= start < schedule.num_timesteps:
            raise ValueError(
                f"start={start} needs x_T (the state at that step) and 0 <= start < {schedule.num_timesteps}"
            )
        steps = [start] + [t for t in steps if t < start]
    trajectory, state = [x], None
    for i, t in enumerate(steps):
        s = steps[i + 1] if i + 1 < len(steps) else CLEAN
        x0_hat, eps_hat = denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long, device=device))
        if clip is not None:
            alpha_t, sigma_t = schedule.at(t)
            x0_hat = x0_hat.clamp(-clip, clip)
            eps_hat = (x - alpha_t * x0_hat) / sigma_t
        x, state = sampler.step(schedule, x, x0_hat, eps_hat, t, s, state=state, generator=generator)
        if after_step is not None:
            x = after_step(x, s)
        if return_trajectory:
            trajectory.append(x)
        if on_step is not None:
            on_step(i, len(steps))
        if progress and (i + 1) % max(1, len(steps) // 10) == 0:
            logger.info("%s: step %d/%d (t=%d)", type(sampler).__name__, i + 1, len(steps), t)
    return (x, trajectory) if return_trajectory else x
