"""ClassifierModule: trains the `MNISTClassifier` that judges generated samples (`ldm.metrics`).

Cross-entropy (optionally label-smoothed) on `{"image", "label"}` batches. Training batches are
augmented by random shifts of up to `augment_shift` pixels, done on the whole batch on its device
(zero padding then a per-image crop), which is what lifts a two-block CNN from ~99.2 % to
99.4-99.5 % MNIST test accuracy; validation and test see the images unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from ldm.models.classifier import MNISTClassifier
from ldm.serialize import built, spec
from ldm.systems.compile import Compiled
from ldm.systems.optim import configure


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of (B, C, H, W) by its own (dy, dx) in [-max_shift, max_shift], filling with 0."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s); 0 is MNIST's background
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b, 1), device=x.device, generator=generator)
    rows = offsets[0] + torch.arange(h, device=x.device)  # (B, H): rows of each crop
    cols = offsets[1] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indexing around the channel slice puts the indexed dims first: (B, H, W, C).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ClassifierModule(L.LightningModule):
    """Lightning wrapper of a digit classifier.

    Args:
        classifier: the network (built by Hydra, not stored in hyperparameters).
        optimizer: partial optimizer, finished here with the classifier's parameters.
        scheduler: optional partial LR schedule taking (optimizer, total_steps).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        augment_shift: training images are shifted by up to this many pixels (0 = off).
    """

    KIND = "classifier"  # checkpoint["ldm"]["kind"]: which stage wrote a checkpoint

    def __init__(
        self,
        classifier: MNISTClassifier | dict,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        label_smoothing: float = 0.0,
        augment_shift: int = 2,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0 or augment_shift < 0:
            raise ValueError(
                f"model.label_smoothing={label_smoothing} must be in [0, 1) and model.augment_shift={augment_shift} >= 0"
            )
        self.save_hyperparameters(
            ignore=["classifier", "optimizer", "scheduler"], logger=False
        )  # loggers get the resolved config
        classifier = built(classifier, MNISTClassifier)
        self.hparams["classifier"] = spec(classifier)  # a spec (ldm.serialize), so load_from_checkpoint rebuilds it
        self.classifier = classifier
        self.compiled = Compiled(compile)  # training calls torch.compile(classifier) if asked
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # One metric object per stage: their running states must not mix. (Attributes, not a
        # ModuleDict, because `train` is taken by nn.Module.train.)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=classifier.num_classes, average="micro"))

    @property
    def example_input_array(self) -> Tensor:  # one input, so that the model summary counts real FLOPs
        c = self.classifier.config
        return torch.zeros(1, c["in_channels"], c["image_size"], c["image_size"])

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of images in [0, 1] (B, C, H, W)."""
        return self.classifier(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        x, y = batch["image"], batch["label"].long()
        train = stage == "train"
        if train:
            x = random_shift(x, self.hparams.augment_shift)
        logits = (self.compiled(self.classifier) if train else self.classifier)(x).float()
        # Label smoothing is a training device; val/test report the plain cross-entropy.
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing if train else 0.0)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, y)
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/acc": accuracy},
            on_step=train,
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=len(x),
            sync_dist=not train,
        )
        return loss

    def configure_optimizers(self) -> Any:
        return configure(self, self.classifier.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain values only, so `ldm.checkpoints.load_classifier` can rebuild it with weights_only=True.
        checkpoint["ldm"] = {"kind": self.KIND, "classifier_config": dict(self.classifier.config)}

    @torch.no_grad()
    def log_images(self, batch: dict[str, Tensor], num_images: int) -> dict[str, Tensor]:
        """For `ldm.callbacks.ImageLogger`: the misclassified digits of the batch (none: no grid)."""
        x, y = batch["image"][:num_images], batch["label"][:num_images]
        wrong = x[self.classifier(x).argmax(dim=1) != y]
        return {"misclassified": wrong} if len(wrong) else {}
