"""The diagonal-Gaussian posterior q(z|x) of a VAE (Kingma & Welling 2014, arXiv 1312.6114)."""

from __future__ import annotations

import torch
from torch import Tensor


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over latents of shape (B, C, h, w)."""

    MIN_LOGVAR, MAX_LOGVAR = -30.0, 20.0  # std from 3e-7 to 2e4

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        self.mean = mean
        # Bounded so exp() can neither overflow nor collapse to an exactly-zero std early on.
        self.logvar = logvar.clamp(self.MIN_LOGVAR, self.MAX_LOGVAR)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps: the reparameterisation trick (Kingma & Welling, eq. 10)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q(z|x) || N(0, I)) per sample, summed over latent dims (Kingma & Welling, App. B). (B,)"""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)
