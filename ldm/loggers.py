"""Experiment loggers that never block a run.

`wandb_logger` goes offline by itself when there is no API key or no route to the W&B server,
so a laptop on a train or a cluster node without internet still trains and keeps a local run
directory (`wandb sync` uploads it later). An explicit `WANDB_MODE` always wins.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

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
        project=project, name=name, group=group, tags=list(tags), save_dir=str(save_dir),
        # `mode=` rather than `offline=True`, which would set WANDB_MODE for the whole process.
        log_model=log_model and mode == "online", id=run_id, mode=mode,
        settings=wandb.Settings(init_timeout=60, silent=True),
    )


def finish_wandb(loggers: Sequence[object]) -> None:
    """Close the W&B run so the next job of a multirun starts its own (Lightning leaves it open)."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
