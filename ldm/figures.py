"""The post's figures of a diffusion model, drawn through its sampling pipeline (`ldm.pipeline`).

forward_corruption: each row one clean sample, then decoded x_t at increasingly noisy t
                    (the forward process, DDPM eq. 4 / the post's eq. 2)
trajectory:         each row one sample, decoded at evenly spaced states of the reverse process
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm.pipeline import DiffusionPipeline


@torch.no_grad()
def forward_corruption(pipeline: DiffusionPipeline, x0: Tensor, columns: int = 8) -> tuple[Tensor, int]:
    """Images ((rows * (columns + 1)), C, H, W) and the row length, for normalised clean x0 (rows, ...)."""
    objective = pipeline.objective
    t = objective.figure_times(columns, x0.device)
    generator = torch.Generator(device=x0.device).manual_seed(1)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    rows = [objective.noisy(x.expand(columns, *x.shape), t, e.expand(columns, *e.shape)) for x, e in zip(x0, eps)]
    images = pipeline.decode(torch.cat([x0[:, None], torch.stack(rows)], 1).flatten(0, 1))
    return images, columns + 1


@torch.no_grad()
def trajectory(
    pipeline: DiffusionPipeline, num_rows: int, generator: torch.Generator, columns: int = 8
) -> tuple[Tensor, int]:
    """Decoded reverse-process states: each row one sample from noise (left) to the result (right)."""
    labels = pipeline.default_labels(num_rows)
    _, states = pipeline.sample_latents(num_rows, generator=generator, labels=labels, return_trajectory=True)
    picks = torch.linspace(0, len(states) - 1, columns).round().long().tolist()
    return pipeline.decode(torch.stack([states[i] for i in picks], 1).flatten(0, 1)), columns
