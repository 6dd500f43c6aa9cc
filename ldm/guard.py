"""`NonFiniteGuard`: never take an optimizer step, or write a checkpoint, with NaN/Inf in it.

Before each optimizer step the guard tests whether every gradient is finite (under DDP they are
already all-reduced, so every rank decides the same). A NaN/Inf loss always shows up here,
because its gradients are NaN too. A non-finite step is skipped: the weights and the optimizer
state stay exactly as they were. Then, per `action`:

* `stop`: raise `NonFiniteError`, naming the first bad step and the last good checkpoint;
* `skip`: go on, count the step (`train/nonfinite_skips`, each epoch), and stop once more than `max_skips`
  steps of the run were skipped (the run is diverging, not meeting the odd bad batch).

No device sync per step on a GPU: with a fused Adam/AdamW (the default on CUDA, see
`ldm.systems.optim`) the skip happens on the device through the optimizer's `found_inf` input, the
mechanism fp16 loss scaling uses, and the host reads the count every `check_every_n_steps` steps,
at each epoch end and before each checkpoint. Other optimizers are checked on the host every step
(dropping the gradients skips the step). A checkpoint whose weights are not all finite is never
written either way.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from ldm.compat import require
from ldm.errors import UserError

require(torch, "_foreach_norm")  # private torch API (ldm/compat.py)

log = logging.getLogger(__name__)


class NonFiniteError(UserError, RuntimeError):
    """Training met a NaN/Inf loss or gradient; the message says where and how to go on."""


class NonFiniteGuard(L.Callback):
    """See the module docstring.

    Args:
        action: "stop" or "skip".
        max_skips: with "skip", stop once more than this many steps were skipped.
        check_every_n_steps: how often the host reads the device-side count (fused optimizers).
    """

    def __init__(
        self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10, check_every_n_steps: int = 50
    ) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"callbacks.nonfinite.action={action!r} is not one of ['skip', 'stop']")
        if max_skips < 0 or check_every_n_steps < 1:
            raise ValueError(
                f"callbacks.nonfinite.max_skips={max_skips} must be >= 0 "
                f"and check_every_n_steps={check_every_n_steps} >= 1"
            )
        self.action, self.max_skips, self.check_every_n_steps = action, max_skips, check_every_n_steps
        self.skipped = 0  # steps skipped before the last check (host)
        self._count: Tensor | None = None  # steps skipped since the last check (device)
        self._first: Tensor | None = None  # the first of them, -1 if none (device)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling skips overflowing steps by itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        bad = ~torch.stack(torch._foreach_norm(grads)).isfinite().all()
        step = trainer.global_step
        if all(group.get("fused") for group in optimizer.param_groups):  # groups: a resumed state may differ
            optimizer.found_inf = bad.float()  # the fused kernel leaves weights and state untouched
            self._record(bad, step)
            if step % self.check_every_n_steps == 0:
                self._check(trainer)
        elif bool(bad):  # one host read per step: free on a CPU
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # optimizers skip parameters without a gradient
            self._record(bad, step)
            self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)
        if self.action == "skip":
            pl_module.log("train/nonfinite_skips", float(self.skipped), on_step=False, on_epoch=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)  # a pending stop wins over the save
        params = [p.detach() for p in pl_module.parameters()]
        if params and not bool(torch.stack(torch._foreach_norm(params)).isfinite().all()):
            raise NonFiniteError(
                f"Refusing to save a checkpoint at step {trainer.global_step}: the weights hold NaN/Inf. "
                f"Last good checkpoint: {_last_checkpoint(trainer)}; resume from it with a lower model.optimizer.lr"
            )

    def _record(self, bad: Tensor, step: int) -> None:
        if self._count is None:
            self._count = torch.zeros((), dtype=torch.long, device=bad.device)
            self._first = torch.full((), -1, dtype=torch.long, device=bad.device)
        self._first = torch.where(bad & (self._first < 0), step, self._first)
        self._count += bad

    def _check(self, trainer: L.Trainer) -> None:
        if self._count is None:
            return
        new, first = int(self._count), int(self._first)  # the host read
        self._count, self._first = None, None
        if new == 0:
            return
        self.skipped += new
        log.warning(
            "Non-finite loss or gradient at step %d: %d step(s) skipped (%d in this run)", first, new, self.skipped
        )
        if self.action == "skip" and self.skipped <= self.max_skips:
            return
        why = (
            f"{self.skipped} skipped steps exceed max_skips={self.max_skips}"
            if self.action == "skip"
            else "action=stop"
        )
        raise NonFiniteError(
            f"Non-finite loss or gradient at step {first} (epoch {trainer.current_epoch}; {why}); that step was "
            f"skipped, so the weights are finite. Last good checkpoint: {_last_checkpoint(trainer)}. Lower "
            "model.optimizer.lr, keep trainer.gradient_clip_val, try trainer.precision=32-true or "
            "callbacks.nonfinite.action=skip, and resume with ckpt_path=<that checkpoint>"
        )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))


def _last_checkpoint(trainer: L.Trainer) -> str:
    """The newest checkpoint written: a `last.ckpt` if any callback keeps one, else the best."""
    callbacks = trainer.checkpoint_callbacks
    paths = [getattr(c, "last_model_path", "") for c in callbacks] + [
        getattr(c, "best_model_path", "") for c in callbacks
    ]
    return next((p for p in paths if p), "none saved yet")
