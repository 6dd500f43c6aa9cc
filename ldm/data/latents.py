"""Latents of an image dataset, encoded once by a frozen VAE and cached on disk.

`prepare_data` encodes the train/val/test images of an image source (`ldm.data.source`) with the
first stage's encoder (eval, no grad, batched, on the accelerator in use) and stores each image's
posterior mean and std plus its label, and the latent statistics (scale = 1/std over the whole
training set, optional shift), which `setup` fits into the first stage's normaliser: the scale
lives with the first stage (`ldm.models.first_stage`), and the LDM's checkpoint keeps it.
The file is named by a key that hashes the first stage's weights and the source's fingerprint, so
runs and sweep jobs with the same VAE share one cache and a new VAE gets a new one. It also
holds a sha256 of its tensors, checked at every load: a truncated, corrupt (even a few zeroed
bytes inside a tensor) or foreign file is rebuilt with a warning. Writes are atomic and under a
file lock; under DDP the first process of each node builds and the others wait for it. A valid
cache in a read-only folder is used as it is.

Served batches are `{"latent", "label"}` with latent = mean + std * eps (not yet normalised), a
fresh eps every step (`mode="sample"`), or the mean (`mode="mean"`; validation and test always use
the mean so their losses are comparable across epochs). The tensors stay resident on the
training device: all of MNIST's latents are ~90 MB.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from filelock import FileLock
from torch import Tensor, nn

from ldm.checkpoints import load_first_stage
from ldm.data.loader import ResumableTrainLoader, TensorLoader, loader_for
from ldm.data.source import SPLITS, ImageSource
from ldm.data.tensors import Batch, TensorBatchDataset
from ldm.errors import UserError
from ldm.io import atomic_write, safe_load, update_hash
from ldm.models.first_stage import FirstStage, weights

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: + payload_sha256; 3: keyed by the first stage and the image source's fingerprint


def cache_key(first_stage: nn.Module, images: ImageSource) -> str:
    """sha256 over the first stage's weights (not its normaliser) and the images' fingerprint."""
    digest = hashlib.sha256(f"ldm-latents-v{CACHE_VERSION}".encode())
    update_hash(digest, weights(first_stage))
    digest.update(images.fingerprint().encode())
    return digest.hexdigest()


@torch.no_grad()
def encode_split(first_stage: FirstStage, dataset: TensorBatchDataset, batch_size: int, device: torch.device) -> Batch:
    """Posterior mean and std (N, *latent_shape) and labels (N,) of every image in `dataset`."""
    means, stds, labels = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        posterior = first_stage.encode(batch["image"].to(device, non_blocking=True))
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        labels.append(batch["label"])
    return {"mean": torch.cat(means), "std": torch.cat(stds), "label": torch.cat(labels)}


def estimate_statistics(train: Batch, shift: bool) -> tuple[float, float]:
    """Scale (and shift) so that training latents z = mean + std * eps have unit variance.

    E[z^2] over the data and eps is E[mean^2] + E[std^2]; without a shift the scale is its root
    (unit RMS), with one the mean is removed first. Exact, in float64, over the whole training
    set (Rombach et al. estimate it from one batch).
    """
    mean, std = train["mean"].double(), train["std"].double()
    second_moment = mean.pow(2).mean() + std.pow(2).mean()
    center = float(mean.mean()) if shift else 0.0
    return float((second_moment - center**2).rsqrt()), center


class CacheError(UserError, RuntimeError):
    """A latent cache file that is unreadable, partial, or built for something else."""


def payload_sha256(splits: dict[str, Batch]) -> str:
    """sha256 over every tensor of every split (names, dtypes, shapes and bytes)."""
    return update_hash(
        hashlib.sha256(), {f"{s}/{k}": v for s, part in splits.items() for k, v in part.items()}
    ).hexdigest()


def read_cache(path: Path, key: str) -> dict:
    """Load and validate a cache file; raises CacheError if it must be rebuilt."""
    try:
        cache = safe_load(path)
    except Exception as e:  # zeroed, truncated or foreign bytes: torch raises almost anything
        raise CacheError(f"{path} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    if not isinstance(cache, dict) or cache.get("key") != key or cache.get("version") != CACHE_VERSION:
        raise CacheError(f"{path} was built for another VAE, dataset or format")
    splits = cache.get("splits")
    for split in SPLITS:
        part = splits.get(split) if isinstance(splits, dict) else None
        if not isinstance(part, dict) or not all(isinstance(part.get(k), Tensor) for k in ("mean", "std", "label")):
            raise CacheError(f"{path} is missing the {split} split")
        n = len(part["label"])
        if part["mean"].shape != part["std"].shape or len(part["mean"]) != n or not torch.isfinite(part["mean"]).all():
            raise CacheError(f"{path}: the {split} split is inconsistent or not finite")
    if payload_sha256({s: splits[s] for s in SPLITS}) != cache.get("payload_sha256"):
        raise CacheError(f"{path}: its tensors do not match their recorded sha256 (the file is corrupt)")
    return cache


class SampleLatent:
    """Batch transform {"mean", "std", "label"} -> {"latent", "label"}: z from the cached posterior."""

    def __init__(self, mode: Literal["sample", "mean"]) -> None:
        self.mode = mode

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        z = batch["mean"]
        if self.mode == "sample":  # reparameterisation, as the VAE was trained
            eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z + batch["std"] * eps
        return {"latent": z, "label": batch["label"]}


class LatentDataModule(ResumableTrainLoader, L.LightningDataModule):
    """Cached first-stage latents of an image source's train/val/test splits.

    Args:
        images: the image source (`ldm.data.source.ImageSource`) whose splits are encoded.
        first_stage: the first stage that encodes them, whose normaliser `setup` fits: the LDM's own
            (train.py passes it), or a VAE / LDM checkpoint path.
        cache_dir: where `latents-<key>.pt` files live; shared by runs and sweep jobs.
        batch_size: latents per training batch.
        mode: "sample" draws z = mean + std * eps afresh each step; "mean" uses the mean.
        shift: also subtract the training latents' mean (else only scale).
        encode_batch_size: images per encoder call while building the cache.
        seed: the shuffling order and latent draws of epoch e depend on (seed, e) only.
    """

    def __init__(
        self,
        images: ImageSource,
        first_stage: nn.Module | str | Path,
        cache_dir: str | Path,
        batch_size: int = 512,
        mode: Literal["sample", "mean"] = "sample",
        shift: bool = False,
        encode_batch_size: int = 2048,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ("sample", "mean"):
            raise ValueError(f"data.mode={mode!r} is not one of ['mean', 'sample']")
        if batch_size < 1 or encode_batch_size < 1:
            raise ValueError(
                f"data.batch_size={batch_size} and data.encode_batch_size={encode_batch_size} must be >= 1"
            )
        self.images, self.cache_dir = images, Path(cache_dir)
        self.first_stage = load_first_stage(first_stage) if isinstance(first_stage, (str, Path)) else first_stage
        self.source = str(first_stage) if isinstance(first_stage, (str, Path)) else type(first_stage).__name__
        self.batch_size, self.mode, self.shift, self.encode_batch_size = batch_size, mode, shift, encode_batch_size
        self.seed = seed
        self.splits: dict[str, TensorBatchDataset] = {}
        self.encoded = False  # whether this process (re)built the cache
        self._cache: dict | None = None  # kept from prepare_data so setup in the same process reads nothing

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _load_or_build(self) -> dict:
        self.images.prepare_data()
        key = cache_key(self.first_stage, self.images)
        path = self.cache_dir / f"latents-{key[:16]}.pt"
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path) + ".lock")
            lock.acquire()  # one builder; concurrent jobs wait, then read it
        except OSError as e:  # a read-only folder: no lock file, and no new cache either
            return self._read_only(path, key, e)
        try:
            if path.exists():
                try:
                    return read_cache(path, key)
                except CacheError as e:
                    log.warning("Rebuilding the latent cache: %s", e)
            return self._build(key, path)
        finally:
            lock.release()

    def _read_only(self, path: Path, key: str, error: OSError) -> dict:
        if path.exists():
            try:
                return read_cache(path, key)  # nobody can be writing it: the folder is read-only
            except CacheError as e:
                raise CacheError(
                    f"{e}, and {self.cache_dir} is not writable ({error.strerror or error}): set "
                    "paths.cache_dir to a writable folder"
                ) from e
        raise CacheError(
            f"No latent cache for this VAE in {self.cache_dir}, and it is not writable "
            f"({error.strerror or error}): set paths.cache_dir to a writable folder"
        ) from error

    def _build(self, key: str, path: Path) -> dict:
        device = self._device()
        first_stage = self.first_stage.to(device).eval().requires_grad_(False)
        log.info("Encoding %s with %s on %s -> %s", type(self.images).__name__, self.source, device, path)
        splits = {s: encode_split(first_stage, self.images.split(s), self.encode_batch_size, device) for s in SPLITS}
        scale, shift = estimate_statistics(splits["train"], self.shift)
        cache = {
            "version": CACHE_VERSION,
            "key": key,
            "first_stage": self.source,
            "splits": splits,
            "payload_sha256": payload_sha256(splits),
            "latent_shape": list(first_stage.latent_shape),
            "scale": scale,
            "shift": shift,
        }
        # A full disk raises WriteError (one line); the temp file is gone, an older cache untouched.
        atomic_write(path, lambda tmp: torch.save(cache, tmp), hint="set paths.cache_dir to another disk")
        self.encoded = True
        return cache

    def prepare_data(self) -> None:
        self._cache = self._load_or_build()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        # Other DDP ranks (and setup-only use) did not run prepare_data: they read the file.
        cache = self._cache if self._cache is not None else self._load_or_build()
        self._cache = None
        device = self._device()
        self.first_stage.normalizer.set(cache["scale"], cache["shift"])
        for split in SPLITS:
            tensors = {k: v.to(device) for k, v in cache["splits"][split].items()}
            mode = self.mode if split == "train" else "mean"
            self.splits[split] = TensorBatchDataset(tensors, SampleLatent(mode))
        stats = cache["splits"]["train"]["mean"]
        log.info(
            "Latents %s: scale %.4f shift %.4f; train mean per channel %s, std per channel %s",
            tuple(cache["latent_shape"]),
            cache["scale"],
            cache["shift"],
            [round(v, 3) for v in stats.mean((0, 2, 3)).tolist()],
            [round(v, 3) for v in stats.std((0, 2, 3)).tolist()],
        )

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].tensors["mean"].shape[1:])

    def train_dataloader(self) -> TensorLoader:
        return self.track_train_loader(
            loader_for(self, self.splits["train"], self.batch_size, shuffle=True, seed=self.seed)
        )

    def val_dataloader(self) -> TensorLoader:
        return loader_for(self, self.splits["val"], self.batch_size, shuffle=False, seed=self.seed)

    def test_dataloader(self) -> TensorLoader:
        return loader_for(self, self.splits["test"], self.batch_size, shuffle=False, seed=self.seed)
