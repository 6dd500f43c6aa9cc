"""`NonFiniteGuard`: never take an optimizer step, or write a checkpoint, with NaN/Inf in it.

Before each optimizer step the guard checks that every gradient is finite (one device sync;
under DDP the gradients are already all-reduced, so every rank decides the same). A NaN/Inf loss
always shows up here, because its gradients are NaN too. Then, per `action`:

* `stop`: raise `NonFiniteError` before the step, naming the step and the last good checkpoint,
  so the weights in memory and on disk are the last finite ones;
* `skip`: drop this step's gradients (the optimizer leaves the weights and its state untouched),
  count it in `train/nonfinite_skips`, and stop only after `max_skips` skips in a row.

A checkpoint whose weights are not all finite is never written (checked at every save).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training met a NaN/Inf loss or gradient; the message says where and how to go on."""


class NonFiniteGuard(L.Callback):
    """See the module docstring.

    Args:
        action: "stop" or "skip" (see above).
        max_skips: with "skip", stop after this many consecutive skipped steps.
        every_n_steps: with "stop", check every n-th step only (fewer device syncs on a GPU;
            an unchecked bad step is then caught up to n - 1 steps later, and still never saved).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10, every_n_steps: int = 1) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"callbacks.nonfinite.action={action!r} is not one of ['skip', 'stop']")
        if max_skips < 0 or every_n_steps < 1:
            raise ValueError(f"callbacks.nonfinite.max_skips={max_skips} must be >= 0 and every_n_steps={every_n_steps} >= 1")
        if action == "skip" and every_n_steps != 1:
            raise ValueError(f"callbacks.nonfinite.every_n_steps={every_n_steps}: action=skip must check every step (1)")
        self.action, self.max_skips, self.every_n_steps = action, max_skips, every_n_steps
        self.skipped, self.in_a_row = 0, 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling skips overflowing steps by design
        if trainer.global_step % self.every_n_steps:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            self.in_a_row = 0
            return
        step = trainer.global_step
        if self.action == "skip" and self.in_a_row < self.max_skips:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # optimizers skip parameters without a gradient
            self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
            log.warning("Non-finite loss or gradient at step %d: step skipped (%d so far)", step, self.skipped)
            pl_module.log("train/nonfinite_skips", float(self.skipped), on_step=True, on_epoch=False)
            return
        what = f"{self.in_a_row + 1} steps in a row" if self.action == "skip" else "it"
        raise NonFiniteError(
            f"Non-finite loss or gradient at step {step} (epoch {trainer.current_epoch}); training stopped before "
            f"{what} reached the weights. Last good checkpoint: {_last_checkpoint(trainer)}. Lower model.optimizer.lr, "
            "keep trainer.gradient_clip_val, try trainer.precision=32-true or callbacks.nonfinite.action=skip, "
            "and resume with ckpt_path=<that checkpoint>"
        )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        params = [p.detach() for p in pl_module.parameters()]
        if params and not bool(torch.stack(torch._foreach_norm(params)).isfinite().all()):
            raise NonFiniteError(
                f"Refusing to save a checkpoint at step {trainer.global_step}: the weights hold NaN/Inf. "
                f"Last good checkpoint: {_last_checkpoint(trainer)}; resume from it with a lower model.optimizer.lr"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))


def _last_checkpoint(trainer: L.Trainer) -> str:
    ckpt = trainer.checkpoint_callback
    path = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
    return path or "none saved yet"
