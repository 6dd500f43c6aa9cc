"""The first stage: what a diffusion model's data space is, and how to get there and back.

Latent diffusion (Rombach et al. 2022, arXiv 2112.10752, Sec. 3) trains the denoiser on
z = E(x) of a frozen autoencoder and decodes its samples with D. Anything with this contract can
be a first stage:

    encode(x) -> posterior      images in [0, 1] (B, C, H, W) -> a distribution over z (`.sample()`, `.mode()`)
    decode(z) -> images         z (B, *latent_shape) -> images in [0, 1]
    latent_shape                the shape of one z
    normalizer                  z_n = (z - shift) * scale, the space the diffusion model works in
    config                      constructor arguments as plain values (`ldm.serialize`)

`AutoencoderKL` (the KL-regularised VAE) is one; `IdentityFirstStage` (z = x, i.e. diffusion in
pixel space) is the other. The normaliser lives with the first stage and is saved with it: the
VAE's is fitted from the latent cache (`ldm.data.latents`), the identity's is fixed. An unfitted
normaliser holds scale 0 (finite, so checkpoints stay NaN-free), and using it for training or
sampling is an error, never a silent 1.0.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ldm.models.distributions import DiagonalGaussian


class LatentNormalizer(nn.Module):
    """z_n = (z - shift) * scale: brings first-stage latents to roughly unit variance for diffusion.

    Rombach et al. 2022 (Sec. 4.3.2, App. G) rescale latents by 1 / std so that a noise schedule
    designed for unit-variance data fits them. Built unfitted (scale 0) unless a scale is given;
    the buffers are saved in checkpoints.
    """

    def __init__(self, scale: float = 0.0, shift: float = 0.0, fixed: bool = False) -> None:
        super().__init__()
        self.fixed = fixed  # a first stage whose scale is part of its definition (the identity's)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))

    @property
    def fitted(self) -> bool:
        """Whether a finite, positive scale is set (reads the buffer: call once, not per step)."""
        return bool(torch.isfinite(self.scale) and self.scale > 0 and torch.isfinite(self.shift))

    def set(self, scale: float, shift: float = 0.0) -> None:
        """Fit: store the statistics (in place, so a module holding this normaliser sees them)."""
        if self.fixed:
            raise ValueError(
                "this first stage's latent scale is fixed (the identity's [-1, 1]); it is not fitted from data"
            )
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(shift)):
            raise ValueError(f"latent scale={scale!r} must be finite and > 0 and shift={shift!r} finite")
        self.scale.fill_(scale)
        self.shift.fill_(shift)

    def check(self) -> None:
        if not self.fitted:
            raise ValueError(
                "The first stage's latent scale is not set: train the LDM on cached latents (data=latents, which "
                "fits it from the training set), or load an LDM checkpoint, which holds it"
            )

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.shift) * self.scale

    def denormalize(self, z_n: Tensor) -> Tensor:
        return z_n / self.scale + self.shift

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.4g}, shift={self.shift.item():.4g}"


def weights(first_stage: nn.Module) -> dict[str, Tensor]:
    """A first stage's state without its normaliser: what identifies the encoder/decoder pair."""
    return {k: v for k, v in first_stage.state_dict().items() if not k.startswith("normalizer.")}


@runtime_checkable
class FirstStage(Protocol):
    """The contract a diffusion model's first stage fulfils (see the module docstring)."""

    latent_shape: tuple[int, ...]
    normalizer: LatentNormalizer

    @property
    def config(self) -> dict[str, Any]: ...

    def encode(self, x: Tensor) -> DiagonalGaussian: ...

    def decode(self, z: Tensor) -> Tensor: ...


class IdentityFirstStage(nn.Module):
    """z = x: diffusion directly on the images (pixel space), normalised from [0, 1] to [-1, 1].

    The scale is fixed (DDPM, Ho et al. 2020, Sec. 4, scales pixels to [-1, 1]), so nothing needs
    fitting. Decoding clamps to [0, 1], the image range, as pixel-space DDPMs do at the end.
    """

    def __init__(self, channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if channels < 1 or image_size < 1:
            raise ValueError(f"channels={channels} and image_size={image_size} must be >= 1")
        self.channels, self.image_size = int(channels), int(image_size)
        self.latent_shape = (self.channels, self.image_size, self.image_size)
        self.normalizer = LatentNormalizer(scale=2.0, shift=0.5, fixed=True)

    @property
    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "image_size": self.image_size}

    def encode(self, x: Tensor) -> DiagonalGaussian:
        # A point mass at x: the smallest variance DiagonalGaussian allows (std ~ 3e-7).
        return DiagonalGaussian(x, torch.full_like(x, -30.0))

    def decode(self, z: Tensor) -> Tensor:
        return z.clamp(0.0, 1.0)
