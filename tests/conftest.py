"""Shared fixtures: small MNIST-shaped IDX files, and composing the Hydra config like train.py does."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 320, 64


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array in the IDX format (optionally gzip-compressed, like the originals)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose content depends on the label (a bright bar at a label-dependent row) plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + 2 * int(label)
        images[i, row : row + 3, 4:24] = 255
    return images, labels


def make_mnist(root: Path, folder: str = "MNIST", compress: bool = True) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = fake_digits(n, seed)
        suffix = ".gz" if compress else ""
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding MNIST/raw/*.gz with 320 train and 64 test fake digits."""
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def small_fs(tmp_path: Path):
    """`small_fs(size)`: a real, size-limited filesystem (`mounts.tmpfs`) that fills up for real,
    unmounted at teardown; skips where mounting is not allowed (not root)."""
    import contextlib

    from mounts import tmpfs

    with contextlib.ExitStack() as stack:
        yield lambda size="2m", name="small": stack.enter_context(tmpfs(tmp_path / name, size))


@pytest.fixture(autouse=True)
def _quiet_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)


def compose_cfg(tmp_path: Path, data_dir: Path, overrides: list[str] = (), run: str = "run"):
    """Compose conf/train.yaml as `python train.py <overrides>` would, with outputs in tmp_path/run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ldm.cli.resolvers import register

    register()

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.output_dir = str(tmp_path / run)
        del cfg.hydra  # train() never reads it; resolvers still see HydraConfig
    return cfg


def save_vae_checkpoint(path: Path, seed: int = 0, **vae_kwargs) -> Path:
    """An (untrained) VAEModule checkpoint written the way training writes it."""
    import functools

    import lightning as L

    from ldm.models.autoencoder import AutoencoderKL
    from ldm.systems.vae import VAEModule

    torch.manual_seed(seed)
    vae = AutoencoderKL(**{"hidden_channels": (8, 16, 16), **vae_kwargs})
    module = VAEModule(vae, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def make_ldm(first_stage, *, unet=None, objective=None, sampler=None, scale: float | None = 1.0, **kwargs):
    """A small LatentDiffusionModule on `first_stage` (a VAE checkpoint path, ...): linear-100 eps DDPM
    with DDIM 10 unless told otherwise, its latent scale set to `scale` as the latent cache would."""
    import functools

    from ldm.diffusion import DDIMSampler, EpsilonPrediction, NoiseSchedule, linear
    from ldm.diffusion.objectives import DiffusionObjective
    from ldm.models.unet import UNet
    from ldm.systems.latent_diffusion import LatentDiffusionModule

    module = LatentDiffusionModule(
        unet=unet or UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1),
        objective=objective or DiffusionObjective(NoiseSchedule(linear(100)), EpsilonPrediction()),
        sampler=sampler or DDIMSampler(num_steps=10),
        first_stage=first_stage,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        **kwargs,
    )
    if scale is not None:
        module.first_stage.normalizer.set(scale)
    return module
