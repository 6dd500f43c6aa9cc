"""A full-covariance Gaussian fitted to latent codes: the generator of a plain autoencoder.

A deterministic autoencoder has no prior to sample from; the classic baseline (the post's
"autoencoders are lousy at generating digits") fits N(mu, Sigma) to the codes of the training set
by maximum likelihood and decodes draws from it. The same fit on a VAE's posterior means shows how
much of the VAE's weak samples comes from its N(0, I) prior not matching where the codes lie.

    mu = mean of the codes z_i (flattened, D = C*H*W),  Sigma = (1/N) sum (z_i - mu)(z_i - mu)^T,
    z = mu + L e with L L^T = Sigma (Cholesky), e ~ N(0, I_D).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class FittedGaussian(nn.Module):
    """N(mean, scale_tril scale_tril^T) over latents of `shape`; `fit` estimates it from codes."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        dim = int(torch.Size(shape).numel())
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale_tril", torch.eye(dim))

    @classmethod
    @torch.no_grad()
    def fit(cls, batches: Iterable[Tensor], jitter: float = 1e-6) -> FittedGaussian:
        """Maximum-likelihood mean and covariance of the codes in `batches` (each (B, *shape)),
        accumulated in float64 so that 60k codes fit in one pass at one batch of memory."""
        count, total, outer, shape = 0, None, None, None
        for z in batches:
            shape = shape or tuple(z.shape[1:])
            if tuple(z.shape[1:]) != shape:
                raise ValueError(f"codes of shape {tuple(z.shape[1:])} after codes of shape {shape}")
            flat = z.detach().reshape(len(z), -1).double().cpu()
            total = flat.sum(0) if total is None else total + flat.sum(0)
            outer = flat.T @ flat if outer is None else outer + flat.T @ flat
            count += len(flat)
        if shape is None or count < 2:
            raise ValueError(f"fitting a Gaussian needs at least 2 codes, got {count}")
        if not torch.isfinite(outer).all():
            raise ValueError("the codes contain NaN/Inf: the first stage's weights are broken")
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        cov = (cov + cov.T) / 2 + jitter * cov.diagonal().mean() * torch.eye(len(mean), dtype=cov.dtype)
        gaussian = cls(shape)
        gaussian.mean.copy_(mean.float())
        gaussian.scale_tril.copy_(torch.linalg.cholesky(cov).float())
        return gaussian

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, (n, *shape), on the buffers' device."""
        e = torch.randn((n, len(self.mean)), generator=generator, device=self.mean.device)
        return (self.mean + e @ self.scale_tril.T).reshape(n, *self.shape)
