"""Noise schedules: the (alpha_t, sigma_t) pair that defines the forward process.

Every schedule is reduced to the general Gaussian form of VDM (Kingma et al.
2021, arXiv 2107.00630, Sec. 3.1, eq. 1):

    q(x_t | x0) = N(alpha_t x0, sigma_t^2 I),   i.e.  x_t = alpha_t x0 + sigma_t eps,

so that parameterizations and samplers never need to know which schedule made
the numbers. Variance-preserving (VP) schedules have alpha_t^2 + sigma_t^2 = 1
and alpha_bar_t = alpha_t^2 (DDPM eq. 4); the interpolation schedule is not VP.

Index convention: t is an int64 in [0, T); t = 0 is the first *noisy* step
(DDPM's t = 1). ``CLEAN = -1`` names the noise-free end point (alpha=1,
sigma=0) that samplers step to last.

References
    DDPM: Ho et al. 2020, arXiv 2006.11239.
    Improved DDPM: Nichol & Dhariwal 2021, arXiv 2102.09672 (cosine, eq. 17).
    VDM: Kingma et al. 2021, arXiv 2107.00630.
    Sigmoid: Jabri et al. 2022, arXiv 2212.11972; Chen 2023, arXiv 2301.10972
        ("On the importance of noise scheduling", Algorithm 1).
    Stable Diffusion's "scaled_linear": Rombach et al. 2022, arXiv 2112.10752.
    Interpolation: the "Latent Diffusion Series" blog post (eqs. 1-2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

#: Timestep index meaning "clean data": alpha = 1, sigma = 0 (see NoiseSchedule.at).
CLEAN: int = -1

Coefficients = tuple[Tensor, Tensor]


# --------------------------------------------------------------------------- #
# Schedule functions: each returns float64 (alpha, sigma) of length T.
# --------------------------------------------------------------------------- #
def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")


def _from_betas(betas: Tensor) -> Coefficients:
    """VP coefficients from per-step betas: alpha_bar_t = prod_{i<=t} (1 - beta_i) (DDPM eq. 4).

    Accumulated in log space and with expm1 so that sigma_t = sqrt(1 - alpha_bar_t)
    stays accurate at small t, where alpha_bar_t is within 1e-4 of 1.
    """
    log_alpha_bar = torch.cumsum(torch.log1p(-betas), dim=0)
    return torch.exp(0.5 * log_alpha_bar), torch.sqrt(-torch.expm1(log_alpha_bar))


def _betas_from_alpha_bar(alpha_bar: Callable[[Tensor], Tensor], num_timesteps: int, max_beta: float) -> Tensor:
    """Discretise a continuous alpha_bar(u), u in [0, 1], into clipped betas.

    beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), max_beta), as in Nichol &
    Dhariwal's ``betas_for_alpha_bar``. The clip matters only near u = 1, where
    alpha_bar -> 0 would give beta = 1 and hence alpha = 0 (an undefined eps -> x0
    conversion and a zero SNR, i.e. pure noise that carries no signal).
    """
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    values = alpha_bar(u)
    return (1.0 - values[1:] / values[:-1]).clamp(max=max_beta)


def linear(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Coefficients:
    """DDPM's linear schedule: beta_t linear from beta_start to beta_end (DDPM Sec. 4)."""
    _check_num_timesteps(num_timesteps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start=}, {beta_end=}")
    return _from_betas(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))


def scaled_linear(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Coefficients:
    """Stable Diffusion's schedule: sqrt(beta_t) linear, i.e. betas = linspace(sqrt(b0), sqrt(b1), T)^2.

    Note (Lin et al. 2023): its final SNR is not zero (alpha_bar_{T-1} ~ 0.0047).
    """
    _check_num_timesteps(num_timesteps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start=}, {beta_end=}")
    roots = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64)
    return _from_betas(roots**2)


def cosine(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Coefficients:
    """Improved DDPM cosine schedule (Nichol & Dhariwal eq. 17).

    alpha_bar(u) = f(u) / f(0), f(u) = cos(((u + s) / (1 + s)) * pi / 2)^2; the offset
    s keeps beta_t from being vanishingly small near u = 0. Index t gets
    alpha_bar((t+1)/T) (DDPM's t+1), and betas are clipped at max_beta.
    """
    _check_num_timesteps(num_timesteps)
    if s < 0:
        raise ValueError(f"s must be >= 0, got {s!r}")

    def alpha_bar(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return _from_betas(_betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta))


def sigmoid(num_timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Coefficients:
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023, Algorithm 1).

    alpha_bar(u) = (S(end/tau) - S((u (end - start) + start)/tau)) / (S(end/tau) - S(start/tau)),
    S the logistic sigmoid: normalised so alpha_bar(0) = 1 and alpha_bar(1) = 0. Like
    cosine it is discretised through betas clipped at 0.999.
    """
    _check_num_timesteps(num_timesteps)
    if not (start < end and tau > 0):
        raise ValueError(f"need start < end and tau > 0, got start={start}, end={end}, tau={tau}")
    v_start, v_end = (torch.sigmoid(torch.tensor(v / tau, dtype=torch.float64)) for v in (start, end))

    def alpha_bar(u: Tensor) -> Tensor:
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    return _from_betas(_betas_from_alpha_bar(alpha_bar, num_timesteps, 0.999))


def interpolation(num_timesteps: int = 1000) -> Coefficients:
    """Linear interpolation x_t = (1 - phi_t) x0 + phi_t eps (Latent Diffusion Series, eq. 2).

    Not variance preserving: alpha_t = 1 - phi_t, sigma_t = phi_t. We use
    phi_t = (t + 1) / (T + 1) so neither end point is reached exactly: phi = 1
    would give alpha = 0 (the eps -> x0 conversion divides by alpha) and phi = 0
    would give sigma = 0 (infinite SNR, and x0 -> eps divides by sigma).
    """
    _check_num_timesteps(num_timesteps)
    phi = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / (num_timesteps + 1)
    return 1.0 - phi, phi


# --------------------------------------------------------------------------- #
# The module every other component consumes.
# --------------------------------------------------------------------------- #
def _validate(alpha: Tensor, sigma: Tensor) -> None:
    if alpha.ndim != 1 or sigma.ndim != 1:
        raise ValueError(f"alpha and sigma must be 1-D, got shapes {tuple(alpha.shape)}, {tuple(sigma.shape)}")
    if alpha.numel() == 0 or alpha.shape != sigma.shape:
        raise ValueError(
            f"alpha and sigma must be non-empty and of equal length, got {alpha.numel()} and {sigma.numel()}"
        )
    if not (torch.isfinite(alpha).all() and torch.isfinite(sigma).all()):
        raise ValueError("alpha and sigma must be finite")
    if not ((alpha > 0).all() and (sigma > 0).all()):
        # alpha = 0 makes eps -> x0 undefined; sigma = 0 makes the SNR infinite.
        raise ValueError("alpha and sigma must be strictly positive at every timestep")
    ratio = alpha / sigma
    if not (ratio[1:] < ratio[:-1]).all():
        bad = int(torch.nonzero(ratio[1:] >= ratio[:-1])[0]) + 1
        raise ValueError(f"SNR = (alpha/sigma)^2 must be strictly decreasing in t; it is not at t={bad}")


class NoiseSchedule(torch.nn.Module):
    """Holds (alpha_t, sigma_t) for t in [0, T) as float32 buffers that follow ``.to(device)``.

    Built from a ``(alpha, sigma)`` pair so Hydra can nest a schedule function:
    ``{_target_: ldm.diffusion.schedules.NoiseSchedule,
    coefficients: {_target_: ldm.diffusion.schedules.cosine}}``.
    """

    alpha: Tensor
    sigma: Tensor

    def __init__(self, coefficients: Coefficients) -> None:
        super().__init__()
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 2:
            raise ValueError(f"coefficients must be an (alpha, sigma) pair, got {type(coefficients).__name__}")
        alpha, sigma = (torch.as_tensor(c, dtype=torch.float64) for c in coefficients)
        _validate(alpha, sigma)
        alpha, sigma = alpha.float(), sigma.float()
        # Again after rounding: two steps merged by float32 would give the solvers a zero step.
        _validate(alpha, sigma)
        # Derived from config, so not persistent: checkpoints stay schedule-agnostic.
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("sigma", sigma, persistent=False)

    @property
    def config(self) -> dict:
        """Constructor arguments (`ldm.serialize`): the float32 coefficients themselves, exact on rebuild."""
        return {"coefficients": [self.alpha.cpu(), self.sigma.cpu()]}

    @property
    def num_timesteps(self) -> int:
        return self.alpha.numel()

    def extra_repr(self) -> str:
        log_snr = self.log_snr(torch.tensor([0, self.num_timesteps - 1], device=self.alpha.device))
        return f"num_timesteps={self.num_timesteps}, log_snr=[{log_snr[0]:.3f}, {log_snr[1]:.3f}]"

    def _lookup(self, t: Tensor) -> Coefficients:
        # index_select, not alpha[t]: same result, but advanced indexing is far slower on CPU.
        t = t.to(self.alpha.device)
        return self.alpha.index_select(0, t), self.sigma.index_select(0, t)

    def coefficients(self, t: Tensor, ndim: int) -> Coefficients:
        """alpha_t, sigma_t for an int64 t of shape (B,), shaped (B, 1, ..., 1) with ``ndim`` dims."""
        shape = (-1,) + (1,) * (ndim - 1)
        alpha, sigma = self._lookup(t)
        return alpha.reshape(shape), sigma.reshape(shape)

    def at(self, t: int) -> Coefficients:
        """0-dim (alpha_t, sigma_t) for one integer step; ``t = CLEAN`` (-1) gives (1, 0).

        Samplers step to CLEAN last. Handled explicitly because Python indexing
        would silently read ``alpha[-1]``, the *noisiest* step.
        """
        if t == CLEAN:
            return self.alpha.new_ones(()), self.sigma.new_zeros(())
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"t must be in [0, {self.num_timesteps}) or CLEAN={CLEAN}, got {t}")
        return self.alpha[t], self.sigma[t]

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t eps (DDPM eq. 4; VDM eq. 1; blog eq. 2)."""
        alpha, sigma = self.coefficients(t, x0.ndim)
        # Cast so a bf16/fp16 x0 is not silently promoted to float32.
        return alpha.to(x0.dtype) * x0 + sigma.to(x0.dtype) * eps

    def snr(self, t: Tensor) -> Tensor:
        """SNR_t = alpha_t^2 / sigma_t^2 (VDM Sec. 3.2), shape (B,)."""
        alpha, sigma = self._lookup(t)
        return (alpha / sigma) ** 2

    def log_snr(self, t: Tensor) -> Tensor:
        """log SNR_t = 2 lambda_t, with lambda_t = log(alpha_t / sigma_t), shape (B,)."""
        alpha, sigma = self._lookup(t)
        return 2.0 * (torch.log(alpha) - torch.log(sigma))
