"""ProgressBar: numbers read off the device every n training steps, always outside training."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar

from ldm.callbacks import ProgressBar

from conftest import compose_cfg


def test_metrics_are_read_every_n_steps_while_training(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    monkeypatch.setattr(
        RichProgressBar,
        "get_metrics",
        lambda self, trainer, module: reads.append(trainer.global_step) or {"step": trainer.global_step},
    )

    class Trainer:
        training, global_step, callback_metrics = True, 0, {}

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


@pytest.mark.parametrize("stage", ["vae", pytest.param("ldm", marks=pytest.mark.slow)])
def test_one_hundred_training_steps_read_the_device_rarely(
    tmp_path: Path, mnist_dir: Path, stage: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every `Tensor.item` is a host sync on a GPU. 100 steps of the real training loop with the
    default callbacks and bar may read the device a few times per epoch and every n steps, not after
    every step (with step metrics on the bar, Lightning reads each after every batch: >= 100 reads)."""
    from ldm.cli.train import train

    from test_train import LDM_TINY, TINY

    if stage == "ldm":
        train(compose_cfg(tmp_path, mnist_dir, ["model=vae", *TINY, "trainer.max_epochs=1"], run="vae"))
    overrides = [
        f"model={stage}",
        *(TINY if stage == "vae" else LDM_TINY),
        "data.batch_size=16",
        "test=false",
        "trainer.max_epochs=-1",
        "+trainer.max_steps=100",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=0",
        "callbacks.images=null",
        "trainer.log_every_n_steps=50",
    ]  # the default cadence (debug=fast logs every step)
    cfg = compose_cfg(tmp_path, mnist_dir, overrides)
    reads = []
    item = torch.Tensor.item

    def counted(self: torch.Tensor) -> float:
        # torch.optim's own reads of its step counter are excluded: that counter lives on the host.
        if "torch/optim/" not in traceback.extract_stack(limit=3)[0].filename:
            reads.append(1)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    with caplog.at_level("INFO", logger="ldm.callbacks"):
        train(cfg)
    monkeypatch.undo()
    # The CPU estimate, measured over steps 5..25 of this very run: 75 of 100 steps left.
    assert re.search(
        r"No GPU: [0-9.]+ training steps/s on the CPU; the remaining 75 of 100 steps take about \d+ (s|min)",
        caplog.text,
    ), caplog.text[-2000:]
    assert "experiment=vae_cpu, then experiment=ldm_cpu" in caplog.text  # and that the CPU profile exists
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    print(f"{stage}: {len(reads)} host reads in 100 steps")
    # Measured: VAE 50 (4 metrics x 6 epoch ends, 2 logger flushes), LDM 23; reading every step is >= 100.
    assert len(reads) <= 60, f"{len(reads)} Tensor.item calls in 100 training steps"
