"""Faults to inject into a training run from the command line (tests only):

    python train.py ... +callbacks.kill._target_=faults.KillAtStep +callbacks.kill.step=11
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


class NaNBatchAt(L.Callback):
    """Put a NaN into the training batch of the given (0-based) optimizer steps."""

    def __init__(self, steps: list[int], key: str = "latent") -> None:
        self.steps, self.key = set(steps), key

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            batch[self.key].view(-1)[0] = torch.nan


class ParamsAt(L.Callback):
    """Record a copy of the trainable weights at the start of each optimizer step (in memory)."""

    def __init__(self) -> None:
        self.history: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.history.append({k: v.detach().clone() for k, v in pl_module.named_parameters() if v.requires_grad})


class PrintBatches(L.Callback):  # debugging aid
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import sys
        print(f"STEP {trainer.global_step} idx {batch_idx} sum {float(batch['latent'].sum()):.6f} "
              f"p {float(sum(p.sum() for p in pl_module.unet.parameters())):.6f} lr {trainer.optimizers[0].param_groups[0]['lr']:.6g}", file=sys.stderr)
