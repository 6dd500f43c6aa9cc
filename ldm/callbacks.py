"""Callbacks that use only public methods of a system: image grids, throughput, FID during training,
and a progress bar that does not stall the GPU.

`ImageLogger` asks the system for named image batches through `log_images(batch, num_images)`
(each (N, C, H, W) in [0, 1], or an (images, images_per_row) pair for figures whose rows mean
something) and writes each as a grid: a PNG under the run directory, and to
every logger that can show images (W&B, TensorBoard).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchvision.utils import make_grid, save_image

from ldm.data.source import ImageSource
from ldm.io import atomic_write

log = logging.getLogger(__name__)


class ImageLogger(L.Callback):
    """Every `every_n_epochs` validation epochs and at the last epoch, log the grids from
    `pl_module.log_images`.

    The images come from the first validation batch, so every epoch shows the same digits.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 64, save_dir: str | None = None) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} and num_images={num_images} must be >= 1")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.save_dir = Path(save_dir) if save_dir else None
        self._batch: dict[str, torch.Tensor] | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs  # a short run still gets its pictures
        return not trainer.sanity_checking and (epoch % self.every_n_epochs == 0 or last)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self._due(trainer):
            self._batch = {k: v[: self.num_images] for k, v in batch.items() if isinstance(v, torch.Tensor)}

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or not self._due(trainer):
            return
        grids = pl_module.log_images(self._batch, self.num_images)
        self._batch = None
        save_dir = self.save_dir or Path(trainer.default_root_dir) / "images"
        save_dir.mkdir(parents=True, exist_ok=True)
        drawn = {}
        for name, images in grids.items():
            images, nrow = images if isinstance(images, tuple) else (images, math.ceil(math.sqrt(len(images))))
            drawn[name] = grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow)
            png = save_dir / f"{name}_epoch{trainer.current_epoch:03d}.png"
            atomic_write(png, lambda tmp, grid=grid: save_image(grid, tmp, format="PNG"))  # a full disk: one line
            for logger in trainer.loggers:
                _log_grid(logger, f"images/{name}", grid, trainer.global_step)
        for logger in trainer.loggers:  # W&B: one table row per validation, every figure side by side
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key="images/table",
                    columns=["epoch", *drawn],
                    data=[[trainer.current_epoch, *(_wandb_image(g) for g in drawn.values())]],
                    step=trainer.global_step,
                )


def _wandb_image(grid: torch.Tensor) -> Any:
    import wandb

    return wandb.Image(grid.permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy())


def _log_grid(logger: object, key: str, grid: torch.Tensor, step: int) -> None:
    """Send one (C, H, W) grid to a logger that can show images; others get the PNG only."""
    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[grid], step=step)
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, grid, step)


class ThroughputLogger(L.Callback):
    """Logs `train/samples_per_sec` and `train/epoch_seconds` (training only) for each epoch.

    Counts the samples of every batch (the length of its first tensor) on this process and
    multiplies by the world size; the clock stops after a device synchronisation so queued GPU
    work is included, and the validation run inside the epoch (sample grids, FID) is left out.
    """

    def __init__(self) -> None:
        self._start, self._samples, self._paused, self._pause_start = 0.0, 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module.device)
        self._start, self._samples, self._paused = time.perf_counter(), 0, 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch gets no epoch start

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module.device)
        self._pause_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module.device)
        self._paused += time.perf_counter() - self._pause_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        first = (
            next((v for v in batch.values() if isinstance(v, torch.Tensor)), None) if isinstance(batch, dict) else None
        )
        self._samples += len(first) if first is not None else 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start - self._paused
        rate = self._samples * trainer.world_size / max(seconds, 1e-9)
        pl_module.log_dict(
            {"train/samples_per_sec": rate, "train/epoch_seconds": seconds}, on_epoch=True, on_step=False
        )
        log.info("epoch %d: %.0f samples/s, %.1f s", trainer.current_epoch, rate, seconds)


class CpuEstimate(L.Callback):
    """Without a GPU, say early how long this run will take, measured from its own first steps.

    The clock starts after `skip_steps` (data workers, first allocations) and reads `measure_steps`
    later: one log line with steps/s, the remaining optimizer steps and their time, and `hint`.
    A run whose first epoch ends sooner says it then, measured over the steps it has.
    """

    def __init__(
        self,
        skip_steps: int = 5,
        measure_steps: int = 20,
        hint: str = "The CPU profile trains the whole pipeline in under 30 min on 2 cores: "
        "python train.py experiment=vae_cpu, then experiment=ldm_cpu (experiments/pipeline/README.md)",
    ) -> None:
        if skip_steps < 0 or measure_steps < 1:
            raise ValueError(f"skip_steps={skip_steps} must be >= 0 and measure_steps={measure_steps} >= 1")
        self.skip_steps, self.measure_steps, self.hint = skip_steps, measure_steps, hint
        self._first: tuple[int, float] | None = None  # (step, time) at the start of training
        self._start: tuple[int, float] | None = None  # (step, time) after skip_steps
        self.estimate: float | None = None  # seconds for the remaining steps, once measured

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first = (trainer.global_step, time.perf_counter())

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.estimate is not None or pl_module.device.type != "cpu":
            return
        step = trainer.global_step
        if self._start is None:
            if step - (self._first or (0, 0.0))[0] >= self.skip_steps:
                self._start = (step, time.perf_counter())
            return
        if step - self._start[0] >= self.measure_steps:
            self._report(trainer, self._start)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A first epoch shorter than skip_steps + measure_steps: measure over what ran."""
        if self.estimate is not None or pl_module.device.type != "cpu":
            return
        for start in (self._start, self._first):
            if start is not None and trainer.global_step > start[0]:
                self._report(trainer, start)
                return

    def _report(self, trainer: L.Trainer, start: tuple[int, float]) -> None:
        step, (first, began) = trainer.global_step, start
        rate = (step - first) / max(time.perf_counter() - began, 1e-9)
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            log.info("No GPU: %.2f training steps/s on the CPU. %s", rate, self.hint)
            self.estimate = math.inf
            return
        remaining = max(0, int(total) - step)
        self.estimate = remaining / rate
        if remaining == 0:  # a run that ended before it could be measured: say what it took
            log.info("No GPU: %.2f training steps/s on the CPU over this run's %d steps. %s", rate, step, self.hint)
            return
        log.info(
            "No GPU: %.2f training steps/s on the CPU; the remaining %d of %d steps take about %s, validation "
            "not included. %s",
            rate,
            remaining,
            total,
            _duration(self.estimate),
            self.hint,
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


class ProgressBar(RichProgressBar):
    """Rich progress bar that reads the training numbers off the device every n steps only.

    Lightning converts every `prog_bar=True` metric to a Python number after every batch, whatever
    the bar shows: one host sync per step, so the CPU cannot queue the next step while the GPU works.
    Our modules therefore log their step metrics with `prog_bar=False`; this bar reads `keys` from
    `trainer.callback_metrics` every `metrics_every_n_steps` steps (and always outside training).
    """

    def __init__(self, metrics_every_n_steps: int = 25, keys: Sequence[str] = ("train/loss",), **kwargs: Any) -> None:
        if metrics_every_n_steps < 1:
            raise ValueError(f"callbacks.progress_bar.metrics_every_n_steps={metrics_every_n_steps} must be >= 1")
        super().__init__(**kwargs)
        self.metrics_every_n_steps, self.keys = metrics_every_n_steps, tuple(keys)
        self._metrics: dict[str, Any] | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if trainer.training and self._metrics is not None and trainer.global_step % self.metrics_every_n_steps:
            return self._metrics
        metrics = super().get_metrics(trainer, pl_module)  # epoch-level prog_bar values: already numbers
        metrics.pop("v_num", None)  # the logger's version says nothing a run folder does not
        for key in self.keys:
            value = trainer.callback_metrics.get(f"{key}_step", trainer.callback_metrics.get(key))
            if value is not None:
                metrics[key] = f"{float(value):.4g}"  # the one host read, every n steps
        self._metrics = metrics
        return metrics


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SampleQuality(L.Callback):
    """Every `every_n_epochs` validation epochs: FID and KID of EMA samples against real digits.

    Scored in our classifier's feature space (`ldm.metrics`). Under DDP each rank draws its share
    of `num_samples` with its own seed and holds a shard of the real digits; torchmetrics gathers
    the statistics in `compute()`, so every rank contributes and all log the same `val/fid`,
    `val/kid`. Without a classifier checkpoint it warns once and does nothing.

    Args:
        classifier_ckpt: a `ClassifierModule` checkpoint (None: disabled).
        reference: the image source (`ldm.data.source`) whose validation digits are the real set.
        num_samples: generated samples per evaluation, over all ranks.
    """

    def __init__(
        self,
        classifier_ckpt: str | None,
        reference: ImageSource,
        every_n_epochs: int = 5,
        num_samples: int = 2000,
        batch_size: int = 500,
    ) -> None:
        if every_n_epochs < 1 or num_samples < 2 or batch_size < 1:
            raise ValueError(
                f"every_n_epochs={every_n_epochs}, num_samples={num_samples}, batch_size={batch_size} out of range"
            )
        self.classifier_ckpt, self.reference = classifier_ckpt, reference
        self.every_n_epochs, self.num_samples, self.batch_size = every_n_epochs, num_samples, batch_size
        self.metrics: dict[str, Metric] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.metrics or stage != "fit":
            return
        if not self.classifier_ckpt:
            rank_zero_warn("SampleQuality: no classifier checkpoint, so no val/fid (python train.py model=classifier)")
            return
        from ldm.checkpoints import load_classifier  # here: checkpoints imports the models, not callbacks
        from ldm.metrics import ClassifierFeatures

        extractor = ClassifierFeatures(load_classifier(self.classifier_ckpt)).to(pl_module.device)
        subset = min(1000, self.num_samples)
        self.metrics = {
            "fid": FrechetInceptionDistance(feature=extractor, reset_real_features=False).to(pl_module.device),
            "kid": KernelInceptionDistance(feature=extractor, reset_real_features=False, subset_size=subset).to(
                pl_module.device
            ),
        }
        real = self.reference.split("val")  # an image source (ldm.data.source): prepared on first use
        shard = torch.arange(trainer.global_rank, len(real), trainer.world_size)
        for indices in shard.split(self.batch_size):
            images = real.batch(indices)["image"].to(pl_module.device)
            for metric in self.metrics.values():
                metric.update(images, real=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not self.metrics or trainer.sanity_checking or not due:
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(
            1000 * trainer.current_epoch + trainer.global_rank
        )
        remaining = math.ceil(self.num_samples / trainer.world_size)
        while remaining > 0:
            n = min(self.batch_size, remaining)  # conditional models: balanced classes, default guidance
            images = pl_module.sample(n, generator=generator, labels=pl_module.default_labels(n))
            remaining -= len(images)
            for metric in self.metrics.values():
                metric.update(images.float(), real=False)
        fid = self.metrics["fid"].compute()
        kid, _ = self.metrics["kid"].compute()
        for metric in self.metrics.values():
            metric.reset()  # keeps the real statistics (reset_real_features=False)
        # Already reduced over ranks by torchmetrics: no sync_dist needed.
        pl_module.log_dict({"val/fid": fid.float(), "val/kid": kid.float()}, on_epoch=True)
