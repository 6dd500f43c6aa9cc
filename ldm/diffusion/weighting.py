"""Per-timestep loss weights for the output-space MSE ||output - target||^2.

Every weight has the one signature ``weight(snr, factor) -> Tensor``, where
``snr = alpha^2 / sigma^2`` and ``factor`` is the parameterization's
``x0_loss_factor`` F (||output error||^2 = F ||x0 error||^2 at fixed x_t). A weight
that is naturally defined on the x0-space error, w_x0, becomes w_x0 / F on the
output error, which is how one Min-SNR object serves eps-, x0- and v-prediction.

    Uniform: DDPM's L_simple (Ho et al. 2020, arXiv 2006.11239, eq. 14), i.e.
        weight 1 on whatever the network predicts.
    Min-SNR-gamma: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
        Weighting Strategy", arXiv 2303.09556, Sec. 3.4: x0-space weight
        min(SNR, gamma), giving min(SNR, gamma)/SNR for eps-prediction and
        min(SNR, gamma)/(SNR + 1) for v-prediction on VP schedules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class LossWeight(ABC):
    """Maps (snr, x0_loss_factor) to a weight on the output-space squared error."""

    @abstractmethod
    def __call__(self, snr: Tensor, factor: Tensor) -> Tensor: ...


class UniformWeight(LossWeight):
    """Weight 1: the plain MSE on the network output (DDPM eq. 14 for eps-prediction)."""

    def __call__(self, snr: Tensor, factor: Tensor) -> Tensor:
        return torch.ones_like(torch.broadcast_tensors(snr, factor)[0])

    @property
    def config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return "UniformWeight()"


class MinSNRWeight(LossWeight):
    """Min-SNR-gamma (Hang et al. 2023): x0-space weight min(SNR, gamma), divided by F.

    Clamping at gamma stops the nearly-clean timesteps (huge SNR) from dominating
    the gradient, which Hang et al. show speeds up convergence; gamma = 5 is
    their default.
    """

    def __init__(self, gamma: float = 5.0) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got gamma={gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, snr: Tensor, factor: Tensor) -> Tensor:
        return snr.clamp(max=self.gamma) / factor

    @property
    def config(self) -> dict:
        return {"gamma": self.gamma}

    def __repr__(self) -> str:
        return f"MinSNRWeight(gamma={self.gamma})"
