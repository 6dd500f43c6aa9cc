"""The latent cache: built once, reused, rebuilt when the VAE or the file changes; normalisation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ldm.data import latents as latents_module
from ldm.data.latents import CacheError, LatentDataModule
from ldm.data.mnist import MNISTDataModule

from conftest import N_TEST, N_TRAIN, save_vae_checkpoint


def _datamodule(mnist_dir: Path, vae_ckpt: Path, cache_dir: Path, **kwargs) -> LatentDataModule:
    images = MNISTDataModule(data_dir=mnist_dir, val_size=64)
    dm = LatentDataModule(images, vae_ckpt, cache_dir, batch_size=100, encode_batch_size=128, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture()
def vae_ckpt(tmp_path: Path) -> Path:
    return save_vae_checkpoint(tmp_path / "vae.ckpt")


def test_cache_is_built_once_and_reused(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    first = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    assert first.encoded and len(list((tmp_path / "cache").glob("latents-*.pt"))) == 1
    calls = []
    monkeypatch.setattr(latents_module, "encode_split", lambda *a, **k: calls.append(1))
    second = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    assert not second.encoded and calls == []  # no re-encoding happened
    for split in ("train", "val", "test"):
        torch.testing.assert_close(first.splits[split].tensors["mean"], second.splits[split].tensors["mean"])


def test_cache_contents_match_the_encoder(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path) -> None:
    from ldm.checkpoints import load_vae

    dm = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": N_TRAIN - 64, "val": 64, "test": N_TEST}
    assert dm.latent_shape == (4, 7, 7)
    test = dm.splits["test"].tensors
    images = dm.images.splits["test"].batch(torch.arange(5))
    posterior = load_vae(vae_ckpt).encode(images["image"])
    torch.testing.assert_close(test["mean"][:5], posterior.mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(test["std"][:5], posterior.std, atol=1e-5, rtol=1e-4)
    assert torch.equal(test["label"][:5], images["label"])


def test_rebuilt_when_the_vae_changes(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path) -> None:
    _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    other = save_vae_checkpoint(tmp_path / "other.ckpt", seed=1)
    # Same file name, different weights: the key hashes weights, not names.
    other.replace(vae_ckpt)
    assert _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache").encoded
    assert len(list((tmp_path / "cache").glob("latents-*.pt"))) == 2


def test_rebuilt_when_truncated_or_corrupt(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path) -> None:
    _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("latents-*.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache").encoded
    for garbage in (b"garbage", b"", os.urandom(4096)):
        path.write_bytes(garbage)
        assert _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache").encoded
    assert not _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache").encoded


def test_zeroed_bytes_inside_the_tensors_are_caught_and_rebuilt(
    mnist_dir: Path, vae_ckpt: Path, tmp_path: Path, caplog
) -> None:
    """16 KiB zeroed in the middle of the file: torch.load reads it without complaint (the zip
    entries are stored, not checksummed on load), so only the payload's sha256 tells."""
    good = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("latents-*.pt")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16384] = bytes(16384)
    path.write_bytes(bytes(data))
    loaded = torch.load(path, weights_only=True)["splits"]  # the corruption is silent to torch
    assert any(not torch.equal(loaded[s][k], good.splits[s].tensors[k].cpu()) for s in loaded for k in loaded[s])
    rebuilt = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")
    assert rebuilt.encoded and "do not match their recorded sha256" in caplog.text
    torch.testing.assert_close(rebuilt.splits["train"].tensors["mean"], good.splits["train"].tensors["mean"])


def test_a_valid_cache_in_a_read_only_folder_is_used(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path, small_fs) -> None:
    """A real read-only filesystem (tmpfs remounted ro): no lock file can be made, the cache is read as it is;
    a cache that would need building says which folder to set."""
    from mounts import remount

    folder = small_fs("8m")
    first = _datamodule(mnist_dir, vae_ckpt, folder / "cache")
    for lock in (folder / "cache").glob("*.lock"):
        lock.unlink()
    remount(folder, "ro")
    again = _datamodule(mnist_dir, vae_ckpt, folder / "cache")
    assert not again.encoded
    torch.testing.assert_close(again.splits["train"].tensors["mean"], first.splits["train"].tensors["mean"])
    with pytest.raises(CacheError, match=r"No latent cache for this VAE in .* not writable .*set paths.cache_dir"):
        _datamodule(mnist_dir, save_vae_checkpoint(tmp_path / "other.ckpt", seed=3), folder / "cache")


def test_the_first_stage_gets_the_latent_scale_and_latents_are_resampled(
    mnist_dir: Path, vae_ckpt: Path, tmp_path: Path
) -> None:
    from ldm.checkpoints import load_first_stage

    first_stage = load_first_stage(vae_ckpt)  # as train.py hands the model's own to the data module
    assert not first_stage.normalizer.fitted
    dm = _datamodule(mnist_dir, first_stage, tmp_path / "cache", shift=True)
    assert dm.first_stage is first_stage and first_stage.normalizer.fitted
    train = dm.splits["train"]
    everything = first_stage.normalizer.normalize(train.batch(torch.arange(len(train)))["latent"])
    assert abs(everything.mean().item()) < 0.05 and abs(everything.var().item() - 1.0) < 0.1
    a, b = train.batch([0, 1]), train.batch([0, 1])
    assert not torch.equal(a["latent"], b["latent"])  # fresh eps each time
    val = dm.splits["val"]
    assert torch.equal(val.batch([0])["latent"], val.batch([0])["latent"])  # mean: fixed
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"latent", "label"} and batch["latent"].shape == (100, 4, 7, 7)


def test_mode_mean_and_bad_arguments(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path) -> None:
    dm = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache", mode="mean")
    train = dm.splits["train"]
    assert torch.equal(train.batch([3])["latent"], train.batch([3])["latent"])
    with pytest.raises(ValueError, match="data.mode='median'"):
        LatentDataModule(dm.images, vae_ckpt, tmp_path, mode="median")


def _build_in_process(args: tuple[Path, Path, Path]) -> bool:
    torch.set_num_threads(1)
    mnist_dir, vae_ckpt, cache_dir = args
    images = MNISTDataModule(data_dir=mnist_dir, val_size=64)
    dm = LatentDataModule(images, vae_ckpt, cache_dir, batch_size=100, encode_batch_size=128)
    dm.prepare_data()
    return dm.encoded


def test_two_processes_building_the_same_cache_encode_once(mnist_dir: Path, vae_ckpt: Path, tmp_path: Path) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        encoded = pool.map(_build_in_process, [(mnist_dir, vae_ckpt, tmp_path / "cache")] * 2)
    assert sorted(encoded) == [False, True]  # one built it under the lock, the other read it
    assert len(list((tmp_path / "cache").glob("latents-*.pt"))) == 1
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # no temp file left behind


def test_setup_after_prepare_data_reads_the_cache_once(
    mnist_dir: Path, vae_ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")  # builds it
    reads = []
    real = latents_module.read_cache
    monkeypatch.setattr(latents_module, "read_cache", lambda *a: reads.append(1) or real(*a))
    dm = _datamodule(mnist_dir, vae_ckpt, tmp_path / "cache")  # prepare_data + setup
    assert reads == [1] and len(dm.splits["train"]) == 256
