"""A convolutional VAE (Kingma & Welling 2014) used as the first stage of latent diffusion.

The encoder maps images (B, C, H, W) to a diagonal-Gaussian posterior over latents
(B, latent_channels, H/f, W/f) with f = 2**(len(hidden_channels) - 1); the decoder maps latents
back to per-pixel logits. As in Rombach et al. 2022 (arXiv 2112.10752, Sec. 3) the latent keeps a
spatial layout, so the diffusion UNet can work on it like on a small image. Defaults turn
1x28x28 digits into 4x7x7 latents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldm.models.distributions import DiagonalGaussian
from ldm.models.first_stage import LatentNormalizer


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, plus a (1x1 when widths differ) skip connection."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _stage(in_ch: int, out_ch: int, num_blocks: int) -> list[nn.Module]:
    return [ResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks)]


class Encoder(nn.Module):
    """(B, C, H, W) images -> (B, 2 * latent_channels, H/f, W/f): posterior mean and log-variance."""

    def __init__(self, in_channels: int, latent_channels: int, hidden: Sequence[int], num_res_blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden[0], 3, padding=1)]
        width = hidden[0]
        for level, out in enumerate(hidden):
            layers += _stage(width, out, num_res_blocks)
            width = out
            if level < len(hidden) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))  # halve H, W
        layers += [ResBlock(width, width), _norm(width), nn.SiLU(), nn.Conv2d(width, 2 * latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent_channels, h, w) latents -> (B, C, h*f, w*f) per-pixel logits."""

    def __init__(self, out_channels: int, latent_channels: int, hidden: Sequence[int], num_res_blocks: int) -> None:
        super().__init__()
        width = hidden[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), ResBlock(width, width)]
        for level, out in reversed(list(enumerate(hidden))):
            layers += _stage(width, out, num_res_blocks)
            width = out
            if level > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        layers += [_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class AutoencoderKL(nn.Module):
    """VAE with a diagonal-Gaussian posterior and a N(0, I) prior over a spatial latent.

    Args:
        in_channels: image channels (1 for MNIST; 3 for colour).
        image_size: image height = width; must be divisible by the downsampling factor f.
        latent_channels: C of the latent (B, C, H/f, W/f).
        hidden_channels: widths per resolution level; f = 2 ** (len(hidden_channels) - 1).
        num_res_blocks: residual blocks per level in encoder and decoder.
        deterministic: a plain autoencoder: `encode` returns the mean with the smallest std the
            posterior allows (the log-variance head is unused), so a draw is the code itself.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_channels: int = 4,
        hidden_channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        hidden_channels = [int(c) for c in hidden_channels]
        factor = 2 ** (len(hidden_channels) - 1)
        if not hidden_channels or min(hidden_channels) < 1:
            raise ValueError(f"hidden_channels={hidden_channels} must be a non-empty list of positive widths")
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} is not divisible by the downsampling factor {factor} "
                f"(len(hidden_channels)={len(hidden_channels)}): use fewer levels or another size"
            )
        if latent_channels < 1 or num_res_blocks < 1 or in_channels < 1:
            raise ValueError("in_channels, latent_channels and num_res_blocks must be >= 1")
        # Plain values only: stored in checkpoints so the VAE can be rebuilt without Hydra.
        self.config = dict(
            in_channels=in_channels,
            image_size=image_size,
            latent_channels=latent_channels,
            hidden_channels=hidden_channels,
            num_res_blocks=num_res_blocks,
        )
        if deterministic:  # only when set: the configs (and latent-cache keys) of VAEs stay as they were
            self.config["deterministic"] = True
        self.deterministic = bool(deterministic)
        self.encoder = Encoder(in_channels, latent_channels, hidden_channels, num_res_blocks)
        self.decoder = Decoder(in_channels, latent_channels, hidden_channels, num_res_blocks)
        self.latent_shape = (latent_channels, image_size // factor, image_size // factor)
        # The first-stage contract (ldm.models.first_stage): the diffusion model's latent scale
        # lives with the VAE, unfitted until the latent cache measures it.
        self.normalizer = LatentNormalizer()

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Images in [0, 1] (B, C, H, W) -> the posterior q(z | x) over (B, *latent_shape)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        if self.deterministic:  # a plain autoencoder: its code is the mean (the smallest std the posterior allows)
            logvar = torch.full_like(mean, DiagonalGaussian.MIN_LOGVAR)
        return DiagonalGaussian(mean, logvar)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Latents (B, *latent_shape) -> per-pixel logits (B, C, H, W)."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, *latent_shape) -> images in [0, 1] (B, C, H, W)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor, sample_posterior: bool = True) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction logits and the posterior they were decoded from."""
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode_logits(z), posterior
