"""Surviving a kill: atomic checkpoints, and resuming a run where it stopped.

* `AtomicCheckpointIO` writes every Lightning checkpoint to a temporary file in the target's
  folder, fsyncs it and renames it over the target (`ldm.io.atomic_write`): a kill or a full disk
  leaves the previous checkpoint, never a truncated one. (Lightning's default stages the file in
  the system temp folder and *copies* it when that is another filesystem.)
* `LastCheckpoint` keeps `last.ckpt` current: every N steps, at every epoch end, when training
  ends, and when a SIGTERM (or Ctrl-C, see `ldm.cli.handler`) stops the run after a step.
  (Lightning 2.6's `save_last` refreshes it only when a top-k checkpoint was also written, so
  once the monitored metric stops improving `last.ckpt` silently falls behind.)
* `RememberWandbRun` stores the W&B run id in each checkpoint, so a resumed run continues the
  same W&B run instead of starting a new one.
* `resolve_resume` turns `ckpt_path=last` (the newest `last.ckpt` of this task) or a path into the
  checkpoint, the run folder it belongs to (the resumed run keeps writing there) and the run id,
  after checking that the checkpoint is a training checkpoint of the stage being resumed.

What a checkpoint restores: weights, EMA weights, optimizer, LR schedule, global step and epoch
(Lightning); the position inside the epoch (`ldm.data.loader.TensorLoader`); and every random
draw after it, which `ldm.seeding.StepSeed` derives from (seed, rank, step, batch) rather than from
RNG state, so a run killed and resumed ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ldm.checkpoints import CheckpointError, load_checkpoint
from ldm.compat import require
from ldm.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are write-to-temp, fsync, rename in the same folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class LastCheckpoint(ModelCheckpoint):
    """Writes `<dirpath>/last.ckpt` every `every_n_train_steps` steps, at each epoch end (after
    validation) and at the end of training; never a top-k file. One per run: the best-checkpoint
    callback should have `save_last: false`.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 500) -> None:
        require(ModelCheckpoint, "_should_skip_saving_checkpoint", "_save_last_checkpoint", "_monitor_candidates")
        super().__init__(
            dirpath=dirpath,
            monitor=None,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def _refresh(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # sanity check, other stages, or done
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._refresh(trainer)  # the epoch's validation has run by now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._refresh(trainer)  # max_steps or a stop request mid-epoch

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException only between steps, so the state is whole. Any other
        # exception may have struck mid-step, and the previous last.ckpt is the one to keep.
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            self._refresh(trainer)


class RememberWandbRun(L.Callback):
    """Put the W&B run id into every checkpoint (key `wandb_run_id`)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint["wandb_run_id"] = logger.version


@dataclass
class Resume:
    ckpt_path: Path
    run_dir: Path | None  # the run folder holding the checkpoint, if it is one of ours
    wandb_run_id: str | None


def newest_last_checkpoint(log_dir: str | Path, task_name: str) -> Path:
    """The most recently written `last.ckpt` of any run (or multirun job) of `task_name`."""
    candidates = sorted(Path(log_dir, task_name).glob("**/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"ckpt_path=last: no checkpoints/last.ckpt under {Path(log_dir, task_name)} to resume; "
            "start a new run (drop ckpt_path) or pass ckpt_path=PATH"
        )
    return candidates[-1]


def find_checkpoint(
    ckpt_path: str, log_dir: str | Path, task_name: str, kind: str | None
) -> tuple[Path, dict[str, Any]]:
    """`ckpt_path` ("last" or a path) as a file and its safely loaded contents, of `kind` if given."""
    path = newest_last_checkpoint(log_dir, task_name) if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: {path} does not exist; pass an existing checkpoint or ckpt_path=last"
        )
    try:
        checkpoint = load_checkpoint(path, None)  # safe load: truncated, unsafe or foreign files refused
    except CheckpointError as e:
        raise CheckpointError(f"ckpt_path={ckpt_path} cannot be used: {e}") from e
    found = checkpoint["ldm"]["kind"]
    if kind is not None and found != kind:
        raise CheckpointError(
            f"ckpt_path={ckpt_path} is a {found} checkpoint, but this is a {kind} run: pass a {kind} "
            f"checkpoint, or resume it with model={found}"
        )
    return path, checkpoint


def resolve_resume(
    ckpt_path: str | None, log_dir: str | Path, task_name: str, kind: str | None = None
) -> Resume | None:
    """What `ckpt_path` (None, "last" or a path) resumes; a clear error, before anything is written,
    if it is missing, unreadable, of another stage's `kind`, or not a training checkpoint."""
    if ckpt_path is None:
        return None
    path, checkpoint = find_checkpoint(ckpt_path, log_dir, task_name, kind)
    if "loops" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: {path} is not a training checkpoint (no loop state) and cannot be resumed"
        )
    run_dir = (
        path.parent.parent
        if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file()
        else None
    )
    return Resume(path.resolve(), run_dir.resolve() if run_dir else None, checkpoint.get("wandb_run_id"))
