"""MNISTClassifier and ClassifierModule: shapes, augmentation, learning, checkpoints, train(cfg)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch

from ldm.checkpoints import CheckpointError, load_checkpoint, load_classifier
from ldm.models.classifier import MNISTClassifier
from ldm.systems.classifier import ClassifierModule, random_shift

from conftest import compose_cfg, fake_digits

SMALL = dict(width=8, feature_dim=32)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra threads only contend with other work
    yield
    torch.set_num_threads(threads)


def _module(**kwargs) -> ClassifierModule:
    return ClassifierModule(MNISTClassifier(**SMALL), optimizer=functools.partial(torch.optim.Adam, lr=3e-3), **kwargs)


def _batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    images, labels = fake_digits(n, seed)
    return {"image": torch.from_numpy(images).float().div(255).unsqueeze(1), "label": torch.from_numpy(labels).long()}


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(channels: int) -> None:
    net = MNISTClassifier(in_channels=channels, feature_dim=24, width=8).eval()
    x = torch.rand(5, channels, 28, 28)
    assert net(x).shape == (5, 10)
    assert net.features(x).shape == (5, 24)
    assert net.predict(x).shape == (5,) and net.predict(x).dtype == torch.long
    assert (net.features(x) >= 0).all()  # post-ReLU, what the last layer reads
    torch.testing.assert_close(net.head(net.features(x)), net(x))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        MNISTClassifier(image_size=30)
    with pytest.raises(ValueError, match="dropout"):
        MNISTClassifier(dropout=1.0)
    with pytest.raises(ValueError, match="augment_shift"):
        _module(augment_shift=-1)


def test_random_shift_moves_each_image_by_at_most_max_shift() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 10] = 1.0  # one lit pixel per image
    shifted = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and shifted.sum().item() == 64  # moved, never lost (|shift| < border)
    rows, cols = (
        shifted[:, 0].flatten(1).argmax(1).div(28, rounding_mode="floor"),
        shifted[:, 0].flatten(1).argmax(1) % 28,
    )
    assert (rows - 14).abs().max() <= 2 and (cols - 10).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # each image gets its own shift
    assert random_shift(x, 0) is x


def test_a_few_steps_learn_the_fake_digits() -> None:
    torch.manual_seed(0)
    module = _module(augment_shift=0)
    optimizer = module.configure_optimizers()
    batch = _batch(32)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer warns
        for _ in range(20):
            loss = module.training_step(batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    module.eval()
    accuracy = (module.classifier.predict(batch["image"]) == batch["label"]).float().mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy > 0.9, accuracy


def test_hyperparameters_are_plain_and_label_smoothing_is_training_only() -> None:
    module = _module(label_smoothing=0.1)
    hparams = dict(module.hparams)
    assert hparams.pop("classifier")["class"] == "ldm.models.classifier.MNISTClassifier"  # a plain spec, not a module
    assert hparams == {"label_smoothing": 0.1, "augment_shift": 2, "compile": False}
    module.eval()
    batch = _batch(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module.validation_step(batch, 0)
    expected = torch.nn.functional.cross_entropy(module(batch["image"]), batch["label"])
    torch.testing.assert_close(loss, expected)


def test_augmentation_is_for_training_only() -> None:
    module = _module(augment_shift=2).eval()  # eval: dropout off, so only the shifts are random
    batch = _batch(16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_losses = {module._shared_step(batch, "train").item() for _ in range(3)}
        val_losses = {module._shared_step(batch, "val").item() for _ in range(3)}
    assert len(train_losses) == 3 and len(val_losses) == 1


def test_log_images_shows_misclassified_digits() -> None:
    module = _module().eval()
    batch = _batch(16)
    grids = module.log_images(batch, num_images=16)
    wrong = (module.classifier.predict(batch["image"]) != batch["label"]).sum().item()
    assert (grids["misclassified"].shape[0] if grids else 0) == wrong


def save_classifier_checkpoint(path: Path, seed: int = 0) -> Path:
    """An (untrained) ClassifierModule checkpoint written the way training writes it."""
    torch.manual_seed(seed)
    module = _module()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_rebuilds_the_classifier(tmp_path: Path) -> None:
    path = save_classifier_checkpoint(tmp_path / "classifier.ckpt")
    classifier = load_classifier(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not classifier.training and classifier.config == {**MNISTClassifier(**SMALL).config}
    torch.testing.assert_close(classifier.state_dict()["head.1.weight"], state["classifier.head.1.weight"])
    with pytest.raises(CheckpointError, match="a vae checkpoint is needed"):
        load_checkpoint(path, "vae")


def test_train_classifier_end_to_end(tmp_path: Path, mnist_dir: Path) -> None:
    from ldm.cli.train import train

    overrides = [
        "model=classifier",
        "debug=fast",
        "trainer=cpu",
        "logger=csv",
        "data.val_size=64",
        "data.batch_size=32",
        "model.classifier.width=8",
        "model.classifier.feature_dim=32",
        "trainer.max_epochs=2",
    ]
    cfg = compose_cfg(tmp_path, mnist_dir, overrides)
    assert cfg.task_name == "classifier"
    metrics = train(cfg)
    for key in ("train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/acc"] <= 1.0
    classifier = load_classifier(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert classifier.config["width"] == 8 and classifier.config["in_channels"] == 1
