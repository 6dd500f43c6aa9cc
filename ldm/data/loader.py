"""`TensorLoader`: batches of an in-memory dataset, built on its device, sharded and resumable.

Replaces torch's DataLoader for data that already sits in (GPU) memory:

* **On-device batching.** One `randperm` per epoch on the data's device, then a slice and one
  fancy-index per batch: no worker processes, no per-item Python, no host-to-device copies.
* **Deterministic.** The order of epoch e is a function of (seed, e) and the device type (CPU and
  CUDA generators differ), and a random batch transform (e.g. drawing z = mean + std * eps) gets
  a generator seeded from (seed, e, i, rank). Training drops the last partial batch, so every
  step has the same shape (no recompiles under torch.compile).
  Lightning calls `sampler.set_epoch(e)` at each epoch start, as it does for DistributedSampler.
* **Sharded.** With `world_size` > 1 each rank takes every world_size-th index of the (padded)
  epoch order, exactly as `DistributedSampler` does, so DDP ranks see disjoint data.
* **Resumable.** `state_dict()` records (epoch, batches handed out) and a resumed run continues
  mid-epoch at the next batch. The datamodule carries that state through the checkpoint
  (`ResumableTrainLoader`): Lightning's own route for stateful loaders is skipped when the loader
  was created early, as `trainer.estimated_stepping_batches` does for the LR schedule. Lightning
  reads ahead only from loaders without a length, so every batch handed out has been trained on
  when a checkpoint is saved. tests/test_resume.py checks all of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ldm.data.tensors import Batch, TensorBatchDataset
from ldm.seeding import mix_seed


class EpochOrder:
    """The indices one rank reads in one epoch: shuffled by (seed, epoch), padded, strided."""

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.size, self.shuffle, self.seed, self.rank, self.world_size = size, shuffle, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def indices(self, device: torch.device) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator(device=device).manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator, device=device)
        else:
            order = torch.arange(self.size, device=device)
        padded = len(self) * self.world_size  # wrap around so every rank gets the same count
        if padded > self.size:
            order = torch.cat([order, order[: padded - self.size]])
        return order[self.rank :: self.world_size]


class TensorLoader:
    """Iterate `dataset` in batches; see the module docstring."""

    batch_sampler = None  # Lightning inspects `sampler` / `batch_sampler` as on a DataLoader

    def __init__(
        self,
        dataset: TensorBatchDataset,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.sampler = EpochOrder(len(dataset), shuffle, seed, rank, world_size)
        # never drop the only (partial) batch of a tiny split
        self.dataset, self.batch_size = dataset, batch_size
        self.drop_last = drop_last and len(self.sampler) >= batch_size
        self._yielded, self._resume_at = 0, None

    def __len__(self) -> int:
        rows = len(self.sampler)
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self._batches()

    def _batches(self) -> Iterator[Batch]:
        # A generator: nothing runs until the first next(), after Lightning's set_epoch.
        epoch, start = self.sampler.epoch, 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            start = self._resume_at[1]
        self._resume_at, self._yielded = None, start
        order = self.sampler.indices(self.dataset.device)
        generator = torch.Generator(device=self.dataset.device)
        for i in range(start, len(self)):
            generator.manual_seed(mix_seed(self.sampler.seed, epoch, i, self.sampler.rank))
            batch = self.dataset.batch(order[i * self.batch_size : (i + 1) * self.batch_size], generator)
            self._yielded = i + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """(epoch, batches of it handed out so far)."""
        return {"epoch": self.sampler.epoch, "consumed": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue epoch `state["epoch"]` after its first `state["consumed"]` batches."""
        self._resume_at = (int(state["epoch"]), int(state["consumed"]))


def loader_for(datamodule: Any, dataset: TensorBatchDataset, batch_size: int, shuffle: bool, seed: int) -> TensorLoader:
    """A TensorLoader sharded over the datamodule's trainer (one shard without a trainer); shuffled
    (training) loaders drop the last partial batch."""
    trainer = getattr(datamodule, "trainer", None)
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return TensorLoader(dataset, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world, drop_last=shuffle)


class ResumableTrainLoader:
    """LightningDataModule mixin: the training TensorLoader's position rides in checkpoints.

    Lightning saves `datamodule.state_dict()` in every checkpoint and calls `load_state_dict` on
    resume before any dataloader is requested; the position is applied when the loader is made.
    """

    _train_loader: TensorLoader | None = None
    _pending_position: dict[str, Any] | None = None

    def track_train_loader(self, loader: TensorLoader) -> TensorLoader:
        self._train_loader = loader
        if self._pending_position is not None:
            loader.load_state_dict(self._pending_position)
            self._pending_position = None
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_loader" in state:
            if self._train_loader is not None:
                self._train_loader.load_state_dict(state["train_loader"])
            else:
                self._pending_position = state["train_loader"]
