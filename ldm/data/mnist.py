"""MNIST-shaped image datasets (MNIST, Fashion-MNIST, KMNIST) as a LightningDataModule.

The official 60k/10k train/test split is kept; validation is carved from train with a fixed seed.
The four IDX files are decoded once into uint8 tensors; each batch is one fancy-index plus a
conversion to float in [0, 1] (the range the VAE's Bernoulli/sigmoid decoder models).
"""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import lightning as L
import torch
from torchvision.datasets import MNIST

from ldm.data.idx import IDXError, find_idx_file, read_idx
from ldm.data.loader import ResumableTrainLoader, TensorLoader, loader_for
from ldm.data.tensors import Batch, TensorBatchDataset
from ldm.errors import ConfigError, UserError
from ldm.io import update_hash

log = logging.getLogger(__name__)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset files are missing and could not be downloaded."""


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
    # A quick TCP probe so an offline machine fails in seconds instead of hanging in urllib.
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class ToFloat:
    """uint8 (B, H, W) images -> float (B, C, H, W) in [0, 1]; grey is repeated to C channels."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        image = batch["image"].unsqueeze(1).float().div_(255.0)  # (B, 1, H, W)
        if self.channels != 1:
            image = image.expand(-1, self.channels, -1, -1).contiguous()
        return {"image": image, "label": batch["label"]}


class MNISTDataModule(ResumableTrainLoader, L.LightningDataModule):
    """Train / val / test splits of an MNIST-style dataset, served as `{"image", "label"}` batches.

    Args:
        data_dir: root holding `<DatasetClass>/raw/*-ubyte[.gz]` (torchvision's layout).
        dataset_cls: a torchvision class with MNIST's file layout (MNIST, FashionMNIST, KMNIST);
            it names the folder and the download mirrors.
        channels: 1, or 3 to repeat the grey channel (for networks built for colour).
        image_size: must equal the files' height and width; it is here so networks can read it.
        val_size: images moved from the official train split to validation (chosen by `split_seed`).
        seed: the shuffling order of epoch e depends on (seed, e) only (`ldm.data.loader`).
        subset: if set, use at most this many images per split (quick experiments).
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        dataset_cls: type[MNIST] = MNIST,
        channels: int = 1,
        image_size: int = 28,
        val_size: int = 5000,
        batch_size: int = 256,
        split_seed: int = 0,
        seed: int = 0,
        download: bool = True,
        subset: int | None = None,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels} is not supported: use 1 or 3")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        if val_size < 1:
            raise ValueError(f"data.val_size={val_size} must be >= 1")
        if subset is not None and subset < 1:
            raise ValueError(f"data.subset={subset} must be >= 1 (or null: every image)")
        self.data_dir = Path(data_dir).expanduser()
        self.dataset_cls = dataset_cls
        self.channels, self.image_size = channels, image_size
        self.val_size, self.batch_size, self.seed = val_size, batch_size, seed
        self.split_seed, self.download, self.subset = split_seed, download, subset
        self.splits: dict[str, TensorBatchDataset] = {}

    @property
    def raw_folder(self) -> Path:
        return self.data_dir / self.dataset_cls.__name__ / "raw"

    def _missing_files(self) -> list[str]:
        names = [name for pair in SPLIT_FILES.values() for name in pair]
        return [name for name in names if find_idx_file(self.raw_folder, name) is None]

    def prepare_data(self) -> None:
        """Download only when files are missing and a network exists; otherwise fail clearly."""
        missing = self._missing_files()
        if not missing:
            return
        reason = "downloading is off (data.download=false)"
        if self.download and _network_reachable(self.dataset_cls.mirrors[0]):
            log.info("Downloading %s to %s", self.dataset_cls.__name__, self.raw_folder)
            try:
                self.dataset_cls(str(self.data_dir), train=True, download=True)
                return
            except (RuntimeError, OSError) as e:
                reason = f"the download failed: {e}"
        elif self.download:
            reason = "no network to download from"
        raise DatasetNotFoundError(
            f"{self.dataset_cls.__name__} not found in {self.raw_folder.resolve()} and {reason}. "
            f"Missing: {', '.join(missing)} (each may be .gz). Put the four official files "
            f"there, or point paths.data_dir / the LDM_DATA_DIR environment variable at a folder "
            f"that holds {self.dataset_cls.__name__}/raw/."
        )

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        missing = self._missing_files()
        if missing:  # setup() without prepare_data(), e.g. a notebook
            self.prepare_data()
        images_name, labels_name = SPLIT_FILES[split]
        images = read_idx(find_idx_file(self.raw_folder, images_name))  # (N, H, W) uint8
        labels = read_idx(find_idx_file(self.raw_folder, labels_name)).long()  # (N,)
        if images.ndim != 3 or len(images) != len(labels):
            raise IDXError(
                f"{self.raw_folder}: {split} images {tuple(images.shape)} and labels "
                f"{tuple(labels.shape)} do not match; restore the original files"
            )
        if images.shape[1:] != (self.image_size, self.image_size):
            raise ConfigError(
                f"data.image_size={self.image_size} but {self.raw_folder} holds "
                f"{tuple(images.shape[1:])} images: set data.image_size={images.shape[1]}"
            )
        return images, labels

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = self._load("train")
        if self.val_size >= len(images):
            raise ConfigError(f"data.val_size={self.val_size} must be < {len(images)}, the number of train images")
        generator = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(len(images), generator=generator)
        parts = {"val": perm[: self.val_size], "train": perm[self.val_size :]}
        test_images, test_labels = self._load("test")
        tensors = {name: (images[idx], labels[idx]) for name, idx in parts.items()}
        tensors["test"] = (test_images, test_labels)
        transform = ToFloat(self.channels)
        for name, (x, y) in tensors.items():
            x, y = x[: self.subset], y[: self.subset]  # slicing with None keeps everything
            self.splits[name] = TensorBatchDataset({"image": x, "label": y}, transform)
        log.info("%s splits: %s", self.dataset_cls.__name__, {k: len(v) for k, v in self.splits.items()})

    def split(self, name: str) -> TensorBatchDataset:
        """One split (`ldm.data.source.ImageSource`), preparing and loading the files if needed."""
        if not self.splits:
            self.prepare_data()
            self.setup()
        if name not in self.splits:
            raise ValueError(f"split={name!r} is not one of {sorted(self.splits)}")
        return self.splits[name]

    def fingerprint(self) -> str:
        """sha256 over every split's images and labels and the preprocessing (`ImageSource`)."""
        digest = hashlib.sha256(f"{self.dataset_cls.__name__}:channels={self.channels}:range=[0,1]".encode())
        for name in ("train", "val", "test"):
            update_hash(digest, {f"{name}/{k}": v for k, v in self.split(name).tensors.items()})
        return digest.hexdigest()

    def _loader(self, split: str, shuffle: bool) -> TensorLoader:
        dataset = self.splits[split]
        if self.trainer is not None:  # ~50 MB of uint8 MNIST: batches are built where the model is
            dataset.to(self.trainer.strategy.root_device)
        return loader_for(self, dataset, self.batch_size, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> TensorLoader:
        return self.track_train_loader(self._loader("train", shuffle=True))

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", shuffle=False)
