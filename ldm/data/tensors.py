"""A dataset over tensors that are already in memory, indexed a whole batch at a time.

PyTorch's DataLoader calls `dataset.__getitems__(indices)` when it exists, so one fancy-index
per batch replaces `batch_size` Python `__getitem__` calls and a collate. For MNIST-sized data
this keeps the loader far from being the bottleneck without any worker processes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

Batch = dict[str, torch.Tensor]


def _identity(batch: Batch) -> Batch:
    # Module-level (not a lambda) so DataLoader workers can pickle it.
    return batch


class TensorBatchDataset(Dataset):
    """Rows of equally long tensors, returned as a dict batch, optionally transformed per batch."""

    def __init__(self, tensors: Batch, transform: Callable[[Batch], Batch] | None = None) -> None:
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"TensorBatchDataset needs tensors of equal length, got {lengths}")
        self.tensors = tensors
        self.transform = transform or _identity

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.transform({name: t[idx] for name, t in self.tensors.items()})


def batch_loader(
    dataset: TensorBatchDataset, batch_size: int, shuffle: bool, num_workers: int = 0
) -> DataLoader:
    """A DataLoader that fetches whole batches through `__getitems__` (no per-item collate)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=_identity,
        # Pinning only helps host tensors; latents may already live on the GPU.
        pin_memory=torch.cuda.is_available() and all(t.device.type == "cpu" for t in dataset.tensors.values()),
        persistent_workers=num_workers > 0,
        drop_last=False,
    )
