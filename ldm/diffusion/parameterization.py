"""What the network predicts, and how to turn that prediction into (x0_hat, eps_hat).

All formulas are written for the general forward process x_t = alpha x0 + sigma eps
(VDM, Kingma et al. 2021, arXiv 2107.00630, eq. 1), so they are exact for VP
schedules (alpha^2 + sigma^2 = 1) and for the non-VP interpolation schedule alike.
Samplers only ever see (x0_hat, eps_hat); a parameterization is the one place that
knows what the raw network output means.

    eps-prediction: DDPM, Ho et al. 2020, arXiv 2006.11239, eqs. 11-12 and 14.
    x0-prediction:  the "mean" alternative DDPM Sec. 3.2 discusses; DDIM eq. 9.
    v-prediction:   Salimans & Ho 2022, arXiv 2202.00512, Sec. 4 and Appendix D,
                    v = alpha eps - sigma x0.

``x0_loss_factor`` F links the output-space MSE to the x0-space MSE at fixed x_t,
||output error||^2 = F ||x0 error||^2; loss weights (``weighting.py``) use it to
express an x0-space weighting such as Min-SNR (Hang et al. 2023) for any output.
Inputs ``alpha``/``sigma`` must broadcast against ``x0``/``x_t`` (e.g. the
(B, 1, ..., 1) tensors from ``NoiseSchedule.coefficients``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Parameterization(ABC):
    """Common interface; subclasses are stateless, so Hydra can build them with no arguments."""

    @abstractmethod
    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The regression target for the network output."""

    @abstractmethod
    def to_x0_eps(self, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) implied by ``output`` at x_t; exact for any (alpha, sigma)."""

    @abstractmethod
    def x0_loss_factor(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """F with ||output error||^2 = F ||x0 error||^2 at fixed x_t."""

    @property
    def config(self) -> dict:
        return {}  # stateless: rebuilt with no arguments (`ldm.serialize`)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsilonPrediction(Parameterization):
    """The network predicts the noise eps (DDPM eq. 11)."""

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return eps

    def to_x0_eps(self, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        # Invert x_t = alpha x0 + sigma eps for x0 (DDIM eq. 9, general form).
        return (x_t - sigma * output) / alpha, output

    def x0_loss_factor(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        # eps = (x_t - alpha x0) / sigma, so d eps / d x0 = -alpha/sigma: F = SNR.
        return (alpha / sigma) ** 2


class X0Prediction(Parameterization):
    """The network predicts the clean sample x0 directly."""

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return x0

    def to_x0_eps(self, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return output, (x_t - alpha * output) / sigma

    def x0_loss_factor(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        # Same broadcast shape as the other factors, so callers never special-case x0.
        return torch.ones_like(torch.broadcast_tensors(alpha, sigma)[0])


class VPrediction(Parameterization):
    """The network predicts v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4).

    For VP schedules v is the velocity d x_t / d phi with alpha = cos phi,
    sigma = sin phi; its scale stays O(1) at both ends of the schedule, where eps-
    (at high noise) or x0-prediction (at low noise) become ill-conditioned.
    """

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return alpha * eps - sigma * x0

    def to_x0_eps(self, output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        # Solve [x_t; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps]; the matrix has
        # determinant alpha^2 + sigma^2, which is 1 only for VP schedules (S&H App. D).
        norm = alpha**2 + sigma**2
        x0_hat = (alpha * x_t - sigma * output) / norm
        eps_hat = (sigma * x_t + alpha * output) / norm
        return x0_hat, eps_hat

    def x0_loss_factor(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        # At fixed x_t, v = (alpha/sigma) x_t - ((alpha^2 + sigma^2)/sigma) x0, hence
        # F = (alpha^2 + sigma^2)^2 / sigma^2, which is SNR + 1 for VP schedules.
        return (alpha**2 + sigma**2) ** 2 / sigma**2
