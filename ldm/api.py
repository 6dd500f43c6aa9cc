"""Using a trained model from Python: `ldm.load` and `ldm.save_grid`.

    import ldm
    pipe = ldm.load()                                  # the latest LDM run (logs/latest/ldm.json)
    pipe = ldm.load("logs/ldm/runs/2026-12-03_10-00-00")   # a run folder, a .ckpt, or a registry folder
    images = pipe.sample(16, sampler="ddim", steps=20, seed=0)   # (16, 1, 28, 28) floats in [0, 1]
    ldm.save_grid(images, "grid.png", nrow=4)

Training from Python (`ldm.compose`, `ldm.train`) lives in `ldm.cli.api`: it composes Hydra configs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ldm.checkpoints import CheckpointError, checkpoint_kind, checkpoint_of
from ldm.grids import grid_image, save_png
from ldm.pipeline import DiffusionPipeline
from ldm.sample_request import pick_device
from ldm.systems.latent_diffusion import LatentDiffusionModule


def load(
    source: str | Path | None = None, device: str = "auto", registry: str | Path = "logs/latest"
) -> DiffusionPipeline:
    """The sampling pipeline of a trained LDM (`checkpoint_of(source, registry)`) on `device`
    (auto: CUDA if there is a GPU): its EMA denoiser, objective, VAE decoder, sampler and guidance."""
    path = checkpoint_of(source, registry)
    kind = checkpoint_kind(path)
    if kind != "ldm":
        raise CheckpointError(
            f"{path} is a {kind} checkpoint; ldm.load takes an LDM's (python train.py model=ldm)"
            + (
                ": a VAE's prior is ldm.checkpoints.load_vae(path).decode(torch.randn(n, *latent_shape))"
                if kind == "vae"
                else ""
            )
        )
    return LatentDiffusionModule.from_checkpoint(path).to(pick_device(device)).pipeline()


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write (N, C, H, W) images (floats in [0, 1] or uint8) as one PNG grid, `nrow` per row
    (default: a square); written atomically. Returns the path."""
    images = torch.as_tensor(images)  # numpy arrays too
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    nrow = nrow or max(1, int(len(images) ** 0.5 + 0.5))
    return save_png(
        Path(path), grid_image(images.detach().cpu().clamp(0, 255 if images.dtype == torch.uint8 else 1), nrow)
    )
