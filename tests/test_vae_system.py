"""VAEModule: loss, beta warm-up, optimisation, checkpoints that rebuild the VAE safely."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from ldm.checkpoints import CheckpointError, find_latest, load_checkpoint, load_vae, record_latest
from ldm.models.autoencoder import AutoencoderKL
from ldm.systems.vae import VAEModule

from conftest import fake_digits


def _module(**kwargs) -> VAEModule:
    vae = AutoencoderKL(hidden_channels=(8, 16, 16))
    return VAEModule(vae, optimizer=functools.partial(torch.optim.Adam, lr=3e-3), **kwargs)


@pytest.mark.parametrize("recon_loss", ["bce", "mse", "l1"])
def test_a_few_steps_on_one_batch_reduce_the_loss(recon_loss: str) -> None:
    module = _module(recon_loss=recon_loss)
    optimizer = module.configure_optimizers()
    images, labels = fake_digits(16, seed=0)
    batch = {"image": torch.from_numpy(images).float().div(255).unsqueeze(1), "label": torch.from_numpy(labels).long()}
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer warns
        for _ in range(15):
            loss = module.training_step(batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_loss_is_recon_plus_beta_kl() -> None:
    module = _module(beta=0.5)
    x = torch.rand(4, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module._shared_step({"image": x}, "val")
    logits, posterior = module.vae(x, sample_posterior=False)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 4
    torch.testing.assert_close(loss, recon + 0.5 * posterior.kl().mean())


def test_beta_warmup_is_linear() -> None:
    from unittest.mock import PropertyMock, patch

    module = _module(beta=0.2, beta_warmup_steps=100)
    for step, expected in ((0, 0.0), (25, 0.05), (100, 0.2), (500, 0.2)):
        with patch.object(VAEModule, "global_step", new_callable=PropertyMock, return_value=step):
            assert module.current_beta() == pytest.approx(expected)
    assert _module(beta=0.2).current_beta() == 0.2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="recon_loss='huber'"):
        _module(recon_loss="huber")
    with pytest.raises(ValueError, match="beta"):
        _module(beta=-1.0)


def test_prior_samples_and_image_grids() -> None:
    module = _module()
    grids = module.log_images({"image": torch.rand(5, 1, 28, 28)}, num_images=4)
    assert set(grids) == {"inputs", "reconstructions", "prior_samples"}
    assert all(g.shape == (4, 1, 28, 28) for g in grids.values())
    assert torch.equal(
        grids["prior_samples"], module.log_images({"image": torch.rand(4, 1, 28, 28)}, 4)["prior_samples"]
    )


@pytest.fixture()
def vae_checkpoint(tmp_path: Path) -> Path:
    module = _module()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    path = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_rebuilds_the_vae(vae_checkpoint: Path) -> None:
    vae = load_vae(vae_checkpoint)
    state = torch.load(vae_checkpoint, weights_only=True)["state_dict"]
    assert not vae.training
    torch.testing.assert_close(vae.state_dict()["decoder.net.0.weight"], state["vae.decoder.net.0.weight"])
    assert vae.latent_shape == (4, 7, 7)


def test_unsafe_truncated_and_wrong_checkpoints_are_refused(vae_checkpoint: Path, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"ldm": {"kind": "vae"}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        load_vae(evil)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(vae_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(truncated)
    with pytest.raises(CheckpointError, match="a ldm checkpoint is needed"):
        load_checkpoint(vae_checkpoint, "ldm")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vae(tmp_path / "missing.ckpt")


def test_registry_points_at_the_latest_checkpoint(vae_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="python train.py model=vae"):
        find_latest(tmp_path / "registry", "vae")
    record_latest(tmp_path / "registry", "vae", vae_checkpoint, metrics={"val/loss": 1.0})
    assert find_latest(tmp_path / "registry", "vae") == vae_checkpoint.resolve()
    vae_checkpoint.unlink()
    with pytest.raises(CheckpointError, match="no longer exists"):
        find_latest(tmp_path / "registry", "vae")


def test_lightning_load_from_checkpoint_rebuilds_the_vae_and_the_classifier(tmp_path) -> None:
    """Every system saves its network as a spec (ldm.serialize): Lightning's own loader rebuilds it."""
    from ldm.models.classifier import MNISTClassifier
    from ldm.systems.classifier import ClassifierModule

    for module in (VAEModule(AutoencoderKL(hidden_channels=(8, 8, 8))), ClassifierModule(MNISTClassifier(width=8))):
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
        trainer.strategy.connect(module)
        trainer.save_checkpoint(tmp_path / "m.ckpt")
        restored = type(module).load_from_checkpoint(tmp_path / "m.ckpt")
        for key, value in module.state_dict().items():
            assert torch.equal(restored.state_dict()[key], value), key
