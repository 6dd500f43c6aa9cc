"""ProgressBar: numbers read off the device every n training steps, always outside training."""

from __future__ import annotations

import pytest
from lightning.pytorch.callbacks import RichProgressBar

from ldm.callbacks import ProgressBar


def test_metrics_are_read_every_n_steps_while_training(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: reads.append(trainer.global_step) or {"step": trainer.global_step})

    class Trainer:
        training, global_step = True, 0

    trainer, bar = Trainer(), ProgressBar(metrics_every_n_steps=3)
    shown = []
    for step in range(7):
        trainer.global_step = step
        shown.append(bar.get_metrics(trainer, None)["step"])
    assert reads == [0, 3, 6] and shown == [0, 0, 0, 3, 3, 3, 6]
    trainer.training = False  # validation: always fresh
    bar.get_metrics(trainer, None)
    assert reads == [0, 3, 6, 6]
    with pytest.raises(ValueError, match="metrics_every_n_steps=0"):
        ProgressBar(metrics_every_n_steps=0)
