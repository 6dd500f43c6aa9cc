"""Learning-rate schedules shared by the systems.

Hydra passes them as partials (`_partial_: true`); the system finishes them in
`configure_optimizers` with the optimizer and the run's total number of optimizer steps,
which is only known once the Trainer has seen the data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ldm.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` * lr at `total_steps`."""
    if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"warmup_steps={warmup_steps} must be >= 0 and min_lr_ratio={min_lr_ratio} in [0, 1]")
    total_steps = max(int(total_steps), 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def _fused_if_cuda(
    factory: Callable[..., Optimizer], params: list[torch.nn.Parameter], precision: str
) -> dict[str, bool]:
    """`fused=True` for Adam/AdamW over CUDA parameters unless the config chose: one kernel per step.
    Not under fp16 loss scaling, where Lightning cannot clip a fused optimizer's gradients."""
    if isinstance(factory, functools.partial) and factory.func in (torch.optim.Adam, torch.optim.AdamW):
        if (
            "fused" not in factory.keywords
            and params
            and all(p.is_cuda for p in params)
            and not precision.startswith("16")
        ):
            return {"fused": True}
    return {}


def _attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    try:
        return module.trainer  # Lightning raises when the module is used without one (a notebook, a test)
    except RuntimeError:
        return None


def configure(module: L.LightningModule, params: Iterable[torch.nn.Parameter]) -> Optimizer | dict:
    """What a system's `configure_optimizers` returns: its partial optimizer finished over `params`
    (Adam/AdamW fused on CUDA), and its partial LR schedule (if any) stepped per optimizer step
    over the run's total steps."""
    if module.optimizer_factory is None:
        raise RuntimeError("This module was built without an optimizer (for sampling only); it cannot train")
    params = list(params)
    trainer = _attached_trainer(module)
    precision = str(trainer.precision) if trainer is not None else "32-true"
    try:  # a bad value (lr=-1, betas=[2, 0]) is the config's fault: name its key
        built = module.optimizer_factory(params=params, **_fused_if_cuda(module.optimizer_factory, params, precision))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.optimizer: {e}") from e
    for group in built.param_groups:
        lr = group.get("lr")
        if isinstance(lr, float) and not (0 <= lr < math.inf):  # torch accepts NaN and inf
            raise ConfigError(f"model.optimizer.lr={lr} must be a finite number >= 0")
    if module.scheduler_factory is None:
        return built
    # Without a Trainer (notebooks, tests) the total is unknown; the schedule then stays at its start.
    total_steps = trainer.estimated_stepping_batches if trainer is not None else 1
    if not math.isfinite(total_steps):
        raise ConfigError(
            "model.scheduler needs the run's length, but it has none (trainer.max_epochs=-1 and no "
            "trainer.max_steps): set trainer.max_epochs >= 1 or trainer.max_steps, or model.scheduler=null"
        )
    try:
        scheduler = module.scheduler_factory(built, total_steps=total_steps)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.scheduler: {e}") from e
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
