"""Experiment loggers that never block a run and never delete what was logged.

`wandb_logger` goes offline by itself when there is no API key or no route to the W&B server,
so a laptop on a train or a cluster node without internet still trains and keeps a local run
directory (`wandb sync` uploads it later). An explicit `WANDB_MODE` always wins.

`CSVLogger` appends to an existing `metrics.csv` (Lightning's deletes it when a resumed run
creates its writer, so every resume lost the run's history) and writes each resume's
hyperparameters beside the first ones; every write is atomic.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning.pytorch.loggers as pl_loggers
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from ldm.errors import ConfigError
from ldm.io import atomic_write

log = logging.getLogger(__name__)


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wandb_mode(offline: bool = False) -> str:
    """'online', 'offline' or 'disabled': WANDB_MODE if set, else online only when it can work."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if offline:
        return "offline"
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    if not _has_api_key(host):
        log.info("W&B: no API key (WANDB_API_KEY or ~/.netrc) - logging offline; `wandb sync` uploads later")
        return "offline"
    if not _reachable(host, url.port or (443 if url.scheme == "https" else 80)):
        log.warning("W&B: %s unreachable - logging offline; `wandb sync` uploads later", host)
        return "offline"
    return "online"


def wandb_logger(
    project: str = "ldm",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str | Path = ".",
    offline: bool = False,
    log_model: bool = False,
    run_id: str | None = None,
) -> WandbLogger:
    """A WandbLogger whose mode is chosen by `wandb_mode` (see the module docstring)."""
    import wandb  # deferred: importing wandb costs ~1 s and only this logger needs it

    mode = wandb_mode(offline)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=name,
        group=group,
        tags=list(tags),
        save_dir=str(save_dir),
        # `mode=` rather than `offline=True`, which would set WANDB_MODE for the whole process.
        log_model=log_model and mode == "online",
        id=run_id,
        mode=mode,
        settings=wandb.Settings(init_timeout=60, silent=True),
    )


BEST_IS_LOWEST = ("val/fid", "val/kid", "val/loss")


def summarize_best(loggers: Sequence[object]) -> None:
    """W&B run summaries hold the best (lowest) val/fid, val/kid and val/loss, not the last: a
    sweep's runs then compare by their best FID in one table."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for key in BEST_IS_LOWEST:
                logger.experiment.define_metric(key, summary="min")


def tensorboard_logger(
    save_dir: str | Path, name: str = "tensorboard", version: str = "", **kwargs: Any
) -> pl_loggers.TensorBoardLogger:
    """Lightning's TensorBoardLogger, or a one-line error saying how to install what it needs."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "logger=tensorboard needs the tensorboard package, which is not installed: "
            "pip install -e '.[tensorboard]' (or pip install tensorboard), or use logger=csv"
        ) from None
    return pl_loggers.TensorBoardLogger(save_dir=save_dir, name=name, version=version, **kwargs)


def finish_wandb(loggers: Sequence[object], exit_code: int = 0) -> None:
    """Close the W&B run so the next job of a multirun starts its own (Lightning leaves it open);
    a non-zero `exit_code` marks it failed rather than finished."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


class CSVWriter:
    """`metrics.csv` and `hparams.yaml` in `log_dir`, appended to across resumes (see the module docstring).

    Rows logged after the last checkpoint of an interrupted attempt stay in the file; the resumed
    attempt logs those steps again after them.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file_path = str(self.log_dir / "metrics.csv")
        self.metrics: list[dict[str, Any]] = []  # rows not yet on disk
        self.hparams: dict[str, Any] = {}
        self.hparams_file = self._free_name("hparams")  # hparams.yaml, or hparams-resumed-<n>.yaml beside it

    def _free_name(self, stem: str) -> Path:
        n = 0
        while (path := self.log_dir / (f"{stem}.yaml" if n == 0 else f"{stem}-resumed-{n}.yaml")).exists():
            n += 1
        return path

    def log_metrics(self, metrics: dict[str, float | Tensor], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        rows: list[dict[str, Any]] = []
        keys: set[str] = set()
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, keys = list(reader), set(reader.fieldnames or ())
        rows += self.metrics
        keys = sorted(keys.union(*self.metrics))

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(path, write)
        self.metrics = []

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        atomic_write(self.hparams_file, lambda tmp: save_hparams_to_yaml(tmp, self.hparams))


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSVLogger with `CSVWriter`: a resumed run appends, nothing is deleted."""

    @property
    @rank_zero_experiment
    def experiment(self) -> CSVWriter:
        if getattr(self, "_writer", None) is None:
            self._writer = CSVWriter(self.log_dir)
        return self._writer
