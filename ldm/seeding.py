"""Seeds derived from a run's seed, so every random draw is a function of *where* it happens.

`StepSeed` reseeds torch's global generators at the start of each training batch from
(seed, rank, global step, batch index). Together with `TensorLoader` (whose batches depend on (seed, epoch,
batch, rank)) this makes training reproducible across a kill and resume without storing RNG
states in checkpoints, and gives each DDP rank its own noise: `seed_everything` alone gives all
ranks the same t and eps draws.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

_MASK = (1 << 64) - 1


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (splitmix64 finaliser over each key): nearby keys, unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for key in keys:
        h = (h ^ (int(key) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 31
    return h >> 1


class StepSeed(L.Callback):
    """Before every training batch: `torch.manual_seed(mix_seed(seed, rank, global_step, batch_idx))`.

    Seeds the CPU and every CUDA generator, so the diffusion time steps, noise, label dropout and
    dropout masks of step n are the same in an uninterrupted run and in a run resumed before n.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # batch_idx too: with gradient accumulation several batches share one global step
        torch.manual_seed(mix_seed(self.seed, trainer.global_rank, trainer.global_step, batch_idx))
