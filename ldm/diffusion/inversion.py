"""DDIM inversion and the edits built on the reverse process (issue 16, item 8).

    invert     clean x0 -> x_T along the deterministic DDIM ODE, run forward (Song et al. 2021,
               eq. 13; the inversion of Dhariwal & Nichol 2021, App. F)
    slerp      spherical interpolation of two noises (Shoemake 1985): it keeps the norm that
               Gaussian noise of this size has, where a straight line would shrink it
    sdedit     re-noise x0 to time t_start, then denoise from there (Meng et al. 2022)
    inpaint    keep the known region: after each step it is replaced by the forward-noised original
               (Lugmayr et al. 2022, RePaint without resampling)

Notation as in `ldm.diffusion.samplers`: x_t = alpha_t x0 + sigma_t eps; a Denoiser maps
(x_t, t) -> (x0_hat, eps_hat); CLEAN is the clean end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.diffusion.loop import sample
from ldm.diffusion.samplers import CLEAN, DDIMSampler, Denoiser, Sampler
from ldm.diffusion.schedules import NoiseSchedule


def _check_deterministic(sampler: Sampler) -> None:
    if not isinstance(sampler, DDIMSampler) or sampler.eta != 0:
        raise ValueError(f"inversion follows the deterministic DDIM ODE: use DDIMSampler(eta=0), got {sampler!r}")


@torch.no_grad()
def invert(denoiser: Denoiser, schedule: NoiseSchedule, x0: Tensor, sampler: DDIMSampler) -> Tensor:
    """x_T such that DDIM (eta = 0, the same steps) maps it back to about x0.

    Each step goes from s to the next larger t with the prediction at t made from x_s (the usual
    approximation: the ODE's slope at x_t is not known before x_t is):
        eps_hat = eps(x_s, t);  x0_hat = (x_s - sigma_s eps_hat) / alpha_s;  x_t = alpha_t x0_hat + sigma_t eps_hat
    """
    _check_deterministic(sampler)
    x, s = x0, CLEAN
    for t in sampler.timesteps(schedule).flip(0).tolist():
        _, eps_hat = denoiser(x, torch.full((len(x),), t, dtype=torch.long, device=x.device))
        alpha_s, sigma_s = schedule.at(s)
        alpha_t, sigma_t = schedule.at(t)
        x = alpha_t * (x - sigma_s * eps_hat) / alpha_s + sigma_t * eps_hat
        s = t
    return x


def slerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """(len(weights), *a.shape[1:]): a (1, ...) and b (1, ...) interpolated on the great circle."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    w = weights.double().reshape(-1, *([1] * (a.ndim - 1)))
    if theta < 1e-4:  # (nearly) the same direction: the straight line is the arc
        return ((1 - w) * a.double() + w * b.double()).to(a.dtype)
    out = (torch.sin((1 - w) * theta) * a.double() + torch.sin(w * theta) * b.double()) / torch.sin(theta)
    return out.to(a.dtype)


def start_step(schedule: NoiseSchedule, strength: float) -> int:
    """The step t_start = round(strength (T - 1)) an edit re-noises to; strength in (0, 1]."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1: from pure noise), got {strength!r}")
    return round(strength * (schedule.num_timesteps - 1))


@torch.no_grad()
def sdedit(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    strength: float,
    sampler: Sampler,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x0 re-noised to t_start = strength (T - 1), then the sampler's steps below t_start."""
    t = start_step(schedule, strength)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.q_sample(x0, torch.full((len(x0),), t, dtype=torch.long, device=x0.device), eps)
    return sample(denoiser, schedule, sampler, x0.shape, generator=generator, x_T=x_t, start=t)


@torch.no_grad()
def inpaint(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    known: Tensor,
    sampler: Sampler,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Samples that agree with x0 where `known` is 1 (broadcastable to x0) and are generated elsewhere."""
    known = known.to(x0.dtype).expand_as(x0)

    def keep_known(x_s: Tensor, s: int) -> Tensor:
        if s == CLEAN:
            return known * x0 + (1 - known) * x_s
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noisy = schedule.q_sample(x0, torch.full((len(x0),), s, dtype=torch.long, device=x0.device), eps)
        return known * noisy + (1 - known) * x_s

    return sample(denoiser, schedule, sampler, x0.shape, generator=generator, device=x0.device, after_step=keep_known)
