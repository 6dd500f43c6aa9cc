"""A dataset over tensors that are already in memory, indexed a whole batch at a time.

`TensorBatchDataset.batch(indices)` is one fancy-index per tensor, on the tensors' own device,
followed by an optional per-batch transform (dtype conversion, latent sampling). For MNIST-sized
data the whole dataset fits on the GPU, so batching costs a few kernel launches and no host work;
`ldm.data.loader.TensorLoader` drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Batch = dict[str, torch.Tensor]
Transform = Callable[[Batch, "torch.Generator | None"], Batch]


def _identity(batch: Batch, generator: torch.Generator | None = None) -> Batch:
    return batch


class TensorBatchDataset:
    """Rows of equally long tensors, returned as a dict batch, optionally transformed per batch.

    The transform is called as `transform(batch, generator)`; a random transform draws from
    `generator` (when given) so the loader can make every batch reproducible.
    """

    def __init__(self, tensors: Batch, transform: Transform | None = None) -> None:
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"TensorBatchDataset needs tensors of equal length, got {lengths}")
        self.tensors = tensors
        self.transform = transform or _identity

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str) -> TensorBatchDataset:
        """Move the tensors (in place) to `device`, e.g. the GPU, so batches are built there."""
        self.tensors = {name: t.to(device) for name, t in self.tensors.items()}
        return self

    def batch(self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None) -> Batch:
        """The transformed rows `indices` (a tensor of any device, or a list of ints)."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return self.transform({name: t[idx] for name, t in self.tensors.items()}, generator)
