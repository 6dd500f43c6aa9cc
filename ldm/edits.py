"""Editing real digits with a trained model: DDIM inversion, interpolation, SDEdit, inpainting.

    pipe = ldm.load(...)                                   # a DiffusionPipeline (objective=diffusion)
    noise, error = invert(pipe, images, steps=50)          # x_T of each digit, and the round-trip error
    again = from_noise(pipe, noise, steps=50)              # ... decoded back (DDIM, eta = 0)
    strip = interpolate(pipe, images[:1], images[1:2], num=8)   # slerp between their inversions
    edited = sdedit(pipe, images, strength=0.5, seed=0)    # re-noised halfway, then denoised
    filled = inpaint(pipe, images, known, seed=0)          # `known` (H, W) or (N, 1, H, W) pixel mask, 1 = keep

Images are (N, C, H, W) in [0, 1]; they are encoded to the model's normalised latents (the posterior
mean), edited there with `ldm.diffusion.inversion`, and decoded. For a latent model the pixel
mask is shrunk to the latent grid (a latent cell is known only if all its pixels are). For a
class-conditional model `labels` picks the class (guidance as the model's, or `guidance=`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm.diffusion.inversion import inpaint as inpaint_latents
from ldm.diffusion.inversion import invert as invert_latents
from ldm.diffusion.inversion import sdedit as sdedit_latents
from ldm.diffusion.inversion import slerp
from ldm.diffusion.loop import denoiser_from, sample
from ldm.diffusion.objectives import DiffusionObjective
from ldm.diffusion.samplers import DDIMSampler, Denoiser
from ldm.pipeline import DiffusionPipeline, make_sampler


def _denoiser(pipe: DiffusionPipeline, labels: Tensor | None, guidance: float | None) -> Denoiser:
    if not isinstance(pipe.objective, DiffusionObjective):
        raise ValueError(
            f"edits need a model trained with objective=diffusion (this one: {type(pipe.objective).__name__})"
        )
    objective = pipe.objective
    return denoiser_from(pipe.guided_network(labels, guidance), objective.parameterization, objective.schedule)


def _labels(pipe: DiffusionPipeline, labels: Tensor | list[int] | None, n: int) -> Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=pipe.device).long()
    if labels.shape != (n,):
        raise ValueError(f"labels must be {n} class ids, one per image, got shape {tuple(labels.shape)}")
    return labels


@torch.no_grad()
def encode(pipe: DiffusionPipeline, images: Tensor) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> the normalised latents the diffusion model works in."""
    if images.ndim != 4 or images.is_floating_point() is False:
        raise ValueError(f"images must be float (N, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
    z = pipe.first_stage.encode(images.to(pipe.device)).mode()
    return pipe.first_stage.normalizer.normalize(z)


def _prepare(
    pipe: DiffusionPipeline, images: Tensor, labels: Tensor | list[int] | None, guidance: float | None, seed: int = 0
) -> tuple[Tensor, Denoiser, torch.Generator]:
    """What every edit starts from: the images' latents, the (guided) denoiser, a seeded generator."""
    z = encode(pipe, images)
    denoiser = _denoiser(pipe, _labels(pipe, labels, len(z)), guidance)
    return z, denoiser, torch.Generator(device=pipe.device).manual_seed(seed)


@torch.no_grad()
def invert(
    pipe: DiffusionPipeline,
    images: Tensor,
    steps: int = 50,
    labels: Tensor | None = None,
    guidance: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(x_T of each image, its round-trip error): the relative L2 error ||z - z'|| / ||z|| of its latent
    z against z' = DDIM(eta = 0, same steps) from x_T, per image."""
    sampler = DDIMSampler(steps, eta=0.0, spacing="trailing")
    z, denoiser, _ = _prepare(pipe, images, labels, guidance)
    noise = invert_latents(denoiser, pipe.objective.schedule, z, sampler)
    back = sample(denoiser, pipe.objective.schedule, sampler, z.shape, x_T=noise)
    error = (back - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)
    return noise, error


@torch.no_grad()
def interpolate(
    pipe: DiffusionPipeline,
    a: Tensor,
    b: Tensor,
    num: int = 8,
    steps: int = 50,
    label: int | None = None,
    guidance: float | None = None,
) -> Tensor:
    """`num` images from digit a (1, C, H, W) to digit b: their DDIM inversions interpolated by slerp,
    each decoded by DDIM (eta = 0). The ends reproduce a and b up to the round-trip error."""
    if num < 2:
        raise ValueError(f"num must be >= 2 (the two ends), got {num}")
    labels = None if label is None else torch.tensor([label])
    noise_a, _ = invert(pipe, a, steps, labels, guidance)
    noise_b, _ = invert(pipe, b, steps, labels, guidance)
    path = slerp(noise_a, noise_b, torch.linspace(0, 1, num, device=pipe.device))
    return from_noise(pipe, path, steps, None if label is None else [label] * num, guidance)


@torch.no_grad()
def from_noise(
    pipe: DiffusionPipeline,
    noise: Tensor,
    steps: int = 50,
    labels: Tensor | list[int] | None = None,
    guidance: float | None = None,
) -> Tensor:
    """Decoded images from given x_T by DDIM (eta = 0, `steps`): undoes `invert` up to its round-trip error."""
    sampler = DDIMSampler(steps, eta=0.0, spacing="trailing")
    denoiser = _denoiser(pipe, _labels(pipe, labels, len(noise)), guidance)
    return pipe.decode(sample(denoiser, pipe.objective.schedule, sampler, noise.shape, x_T=noise.to(pipe.device)))


@torch.no_grad()
def sdedit(
    pipe: DiffusionPipeline,
    images: Tensor,
    strength: float = 0.5,
    sampler: object = None,
    seed: int = 0,
    labels: Tensor | None = None,
    guidance: float | None = None,
) -> Tensor:
    """Each image re-noised to t = strength (T - 1) and denoised with `sampler` (default: the model's)."""
    z, denoiser, generator = _prepare(pipe, images, labels, guidance, seed)
    edited = sdedit_latents(
        denoiser, pipe.objective.schedule, z, strength, make_sampler(sampler or pipe.sampler), generator
    )
    return pipe.decode(edited)


@torch.no_grad()
def inpaint(
    pipe: DiffusionPipeline,
    images: Tensor,
    known: Tensor,
    sampler: object = None,
    seed: int = 0,
    labels: Tensor | None = None,
    guidance: float | None = None,
) -> Tensor:
    """Images completed where `known` (a pixel mask, 1 = keep) is 0."""
    z, denoiser, generator = _prepare(pipe, images, labels, guidance, seed)
    mask = torch.as_tensor(known, dtype=torch.float32, device=pipe.device)
    mask = mask.reshape(-1, 1, *mask.shape[-2:]) if mask.ndim in (2, 4) else None
    if mask is None or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"known must be an (H, W) or (N, 1, H, W) mask of the images' size {tuple(images.shape[-2:])}")
    if mask.shape[-2:] != z.shape[-2:]:  # a latent cell is known only if every pixel under it is
        mask = -F.adaptive_max_pool2d(-mask, z.shape[-2:])
    filled = inpaint_latents(
        denoiser, pipe.objective.schedule, z, mask, make_sampler(sampler or pipe.sampler), generator
    )
    return pipe.decode(filled)
