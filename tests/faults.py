"""Faults to inject into a training run from the command line (tests only):

    python train.py ... +callbacks.kill._target_=faults.KillAtStep +callbacks.kill.step=11

Each produces the real fault in the real process: a real signal, a really full filesystem.
"""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL this process (no cleanup, no final checkpoint) once `step` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(L.Callback):
    """Send `signum` (default SIGTERM) to this process once `step` optimizer steps are done, as a
    scheduler would; the process handles it as it handles any other delivery of that signal."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class FillDiskAt(L.Callback):
    """Fill the filesystem holding `folder` with a ballast file once `step` optimizer steps are done,
    so that the next write there meets a real ENOSPC."""

    def __init__(self, step: int, folder: str) -> None:
        self.step, self.folder, self.done = step, folder, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.done:
            self.done = True
            fill_disk(self.folder)


def fill_disk(folder: str | os.PathLike) -> str:
    """Write `<folder>/ballast` until the filesystem is full; returns its path."""
    path = os.path.join(folder, "ballast")
    with open(path, "ab", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return path


class NaNBatchAt(L.Callback):
    """Put a NaN into the training batch of the given (0-based) optimizer steps."""

    def __init__(self, steps: list[int], key: str = "latent") -> None:
        self.steps, self.key = set(steps), key

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            batch[self.key].view(-1)[0] = torch.nan


class RanksAgree(L.Callback):
    """At the end of fit, fail unless every DDP rank holds the same weights (and EMA weights)."""

    def on_train_end(self, trainer, pl_module) -> None:
        checksum = torch.stack([p.detach().double().sum() for p in pl_module.parameters()]).cpu()
        gathered = trainer.strategy.all_gather(checksum)  # (world_size, num_params)
        assert gathered.shape[0] == trainer.world_size == 2, gathered.shape
        assert torch.equal(gathered[0], gathered[1]), "DDP ranks diverged"
        if trainer.global_rank == 0:
            print(f"RANKS AGREE on {len(checksum)} tensors", flush=True)
