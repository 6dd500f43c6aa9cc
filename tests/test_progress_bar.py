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
    # The CPU estimate, measured over steps 5..16 of this very run: its first epoch (16 batches of 16
    # digits) ends before the 25 steps the estimate waits for, so it reports then: 84 of 100 steps left.
    assert re.search(
        r"No GPU: [0-9.]+ training steps/s on the CPU; the remaining 84 of 100 steps take about \d+ (s|min)",
        caplog.text,
    ), caplog.text[-2000:]
    assert "experiment=vae_cpu, then experiment=ldm_cpu" in caplog.text  # and that the CPU profile exists
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    print(f"{stage}: {len(reads)} host reads in 100 steps")
    # Measured: VAE 50 (4 metrics x 6 epoch ends, 2 logger flushes), LDM 23; reading every step is >= 100.
    assert len(reads) <= 60, f"{len(reads)} Tensor.item calls in 100 training steps"


def test_a_run_shorter_than_the_measurement_still_gets_its_cpu_estimate(
    tmp_path: Path, mnist_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """debug=fast: 5 steps per epoch, fewer than the 25 the estimate waits for. A first run this
    small must still say how long the configuration takes and that the CPU profile exists."""
    from ldm.cli.train import train

    from test_train import TINY

    cfg = compose_cfg(tmp_path, mnist_dir, ["model=vae", *TINY, "trainer.max_epochs=3", "test=false"])
    with caplog.at_level("INFO", logger="ldm.callbacks"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("No GPU")]
    assert len(lines) == 1, lines  # once, at the end of the first epoch
    assert re.match(r"No GPU: [0-9.]+ training steps/s on the CPU; the remaining 10 of 15 steps take about", lines[0])
    assert "experiment=vae_cpu, then experiment=ldm_cpu" in lines[0]


def test_the_cpu_estimate_waits_for_skip_plus_measure_steps_inside_a_long_epoch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from ldm.callbacks import CpuEstimate

    trainer = SimpleNamespace(global_step=40, estimated_stepping_batches=1000)  # resumed at step 40
    module = SimpleNamespace(device=torch.device("cpu"))
    estimate = CpuEstimate(skip_steps=5, measure_steps=20)
    with caplog.at_level("INFO", logger="ldm.callbacks"):
        estimate.on_train_start(trainer, module)
        for step in range(41, 66):
            trainer.global_step = step
            estimate.on_train_batch_end(trainer, module, None, None, step)
            assert (estimate.estimate is None) == (step < 65), step  # skip 5 after the resume, measure 20
        estimate.on_train_epoch_end(trainer, module)  # already said: not again
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "the remaining 935 of 1000 steps" in lines[0], lines


def test_a_run_over_before_it_was_measured_says_what_it_took(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from ldm.callbacks import CpuEstimate

    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=5)  # debug=fast: one epoch of 5 steps
    module = SimpleNamespace(device=torch.device("cpu"))
    estimate = CpuEstimate()
    with caplog.at_level("INFO", logger="ldm.callbacks"):
        estimate.on_train_start(trainer, module)
        for step in range(1, 6):
            trainer.global_step = step
            estimate.on_train_batch_end(trainer, module, None, None, step)
        estimate.on_train_epoch_end(trainer, module)
    (line,) = [r.getMessage() for r in caplog.records]
    assert re.match(r"No GPU: [0-9.]+ training steps/s on the CPU over this run's 5 steps\. The CPU profile", line)
