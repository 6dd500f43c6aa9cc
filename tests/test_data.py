"""MNISTDataModule and the IDX reader on small fake MNIST files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.datasets import FashionMNIST

from ldm.data import mnist as mnist_module
from ldm.data.idx import IDXError, read_idx
from ldm.data.mnist import DatasetNotFoundError, MNISTDataModule

from conftest import N_TEST, N_TRAIN, make_mnist, write_idx


def _datamodule(root: Path, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=root, val_size=64, batch_size=50, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_sizes_dtypes_and_ranges(mnist_dir: Path) -> None:
    dm = _datamodule(mnist_dir)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": N_TRAIN - 64, "val": 64, "test": N_TEST}
    batches = list(dm.train_dataloader())  # training drops the last partial batch: fixed shapes
    assert [len(b["image"]) for b in batches] == [50] * ((N_TRAIN - 64) // 50)
    assert sum(len(b["image"]) for b in dm.val_dataloader()) == 64  # evaluation sees every image
    batch = batches[0]
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (50, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (50,) and batch["label"].dtype == torch.int64
    assert 0.0 <= batch["image"].min() and batch["image"].max() == 1.0  # 255 -> exactly 1
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["label"].max() <= 9


def test_split_is_fixed_by_seed_and_disjoint(mnist_dir: Path) -> None:
    a, b, c = _datamodule(mnist_dir), _datamodule(mnist_dir), _datamodule(mnist_dir, split_seed=1)
    first = lambda dm, s: dm.splits[s].tensors["image"]  # noqa: E731
    assert torch.equal(first(a, "val"), first(b, "val"))
    assert not torch.equal(first(a, "val"), first(c, "val"))
    train_rows = {bytes(x.numpy()) for x in first(a, "train")}
    assert not any(bytes(x.numpy()) in train_rows for x in first(a, "val"))


def test_three_channels_repeat_grey(mnist_dir: Path) -> None:
    batch = next(iter(_datamodule(mnist_dir, channels=3).val_dataloader()))
    assert batch["image"].shape[1] == 3
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])


def test_subset_limits_every_split(mnist_dir: Path) -> None:
    dm = _datamodule(mnist_dir, subset=10)
    assert {len(v) for v in dm.splits.values()} == {10}


def test_uncompressed_files_read_the_same(tmp_path: Path, mnist_dir: Path) -> None:
    raw = make_mnist(tmp_path, compress=False)
    assert torch.equal(
        _datamodule(raw).splits["test"].tensors["image"], _datamodule(mnist_dir).splits["test"].tensors["image"]
    )


def test_dataset_class_picks_the_folder(tmp_path: Path) -> None:
    make_mnist(tmp_path, folder="FashionMNIST")
    dm = _datamodule(tmp_path, dataset_cls=FashionMNIST)
    assert dm.raw_folder == tmp_path / "FashionMNIST" / "raw" and len(dm.splits["test"]) == N_TEST


def test_missing_data_names_the_folder_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_module, "_network_reachable", lambda url: False)
    dm = MNISTDataModule(data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str((tmp_path / "MNIST" / "raw").resolve()) in message
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in message
    assert "no network" in message and "LDM_DATA_DIR" in message
    with pytest.raises(DatasetNotFoundError, match="download=false"):
        MNISTDataModule(data_dir=tmp_path, download=False).prepare_data()


def test_truncated_file_is_a_clear_error(tmp_path: Path, mnist_dir: Path) -> None:
    shutil.copytree(mnist_dir / "MNIST", tmp_path / "MNIST")
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(IDXError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"not a gzip file")
    with pytest.raises(IDXError, match="cannot be read"):
        read_idx(path)


def test_wrong_image_size_and_bad_arguments(mnist_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.image_size=32"):
        _datamodule(mnist_dir, image_size=32)
    with pytest.raises(ValueError, match="data.channels=2"):
        MNISTDataModule(data_dir=mnist_dir, channels=2)
    with pytest.raises(ValueError, match="data.val_size"):
        MNISTDataModule(data_dir=mnist_dir, val_size=N_TRAIN).setup()


def test_idx_roundtrip_keeps_shape_and_values(tmp_path: Path) -> None:
    array = torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8).numpy()
    write_idx(tmp_path / "x.gz", array)
    assert torch.equal(read_idx(tmp_path / "x.gz"), torch.from_numpy(array))
