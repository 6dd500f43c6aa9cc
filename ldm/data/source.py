"""The image-source contract: what the latent cache, the FID callback and `evaluate.py` need from a
dataset of images, so none of them reads a particular DataModule's internals.

    split(name) -> TensorBatchDataset   "train" | "val" | "test"; batches {"image": (B, C, H, W) in [0, 1], "label"}
    fingerprint() -> str                a content hash: the images, the labels and the preprocessing

`MNISTDataModule` is one (any MNIST-layout torchvision dataset); another dataset needs only these
two methods (and Lightning's `prepare_data`, which is where a download belongs).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ldm.data.tensors import TensorBatchDataset

SPLITS = ("train", "val", "test")


@runtime_checkable
class ImageSource(Protocol):
    def prepare_data(self) -> None: ...

    def split(self, name: str) -> TensorBatchDataset: ...

    def fingerprint(self) -> str: ...


def all_images(source: ImageSource, split: str) -> torch.Tensor:
    """Every image of a split as one (N, C, H, W) float tensor in [0, 1]."""
    dataset = source.split(split)
    return dataset.batch(torch.arange(len(dataset)))["image"]
