"""How every entry point (train.py, sample.py, evaluate.py) ends: one line for a user error, a
traceback for a bug, an exit status a scheduler can trust.

* `user_error` finds the user-facing cause of an exception: any `ldm.errors.UserError` in its
  chain, a constructor that rejected a config value (Hydra names the key), Lightning's
  `MisconfigurationException`, or an OmegaConf error (a missing key or a bad interpolation).
* `run_task` prints that cause as one line and exits with its status (1; 128 + signal for a
  stop signal). In a multirun a failing job is recorded and the sweep goes on; `main` reports
  the failed jobs at the end and exits 1.
* Signals: outside training, SIGTERM and Ctrl-C raise at once (files being written are
  cleaned up, see `ldm.io.atomic_write`). During `trainer.fit`, Lightning's SIGTERM handler
  lets the current step finish and stops; `ldm.resume.LastCheckpoint` then saves `last.ckpt`.
  The first Ctrl-C during training does the same (it is turned into a SIGTERM); a second one
  stops at once.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import OmegaConfBaseException

from ldm.cli.resolvers import multirun
from ldm.errors import ConfigError, Interrupted, UserError, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 12 and cause not in chain:  # Hydra and OmegaConf wrap what we raised
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def user_error(error: BaseException) -> UserError | None:
    """The user-facing cause of `error`, as a `UserError` with a one-line message; None for a bug."""
    chain = _chain(error)
    for cause in chain:
        if isinstance(cause, UserError):
            return cause
    for cause in chain:
        if isinstance(cause, InstantiationException) and isinstance(
            cause.__cause__, (ValueError, TypeError, MisconfigurationException)
        ):
            # A constructor rejected a config value: its message says what is wrong, Hydra's names the node.
            key = re.search(r"full_key: (\S+)", str(cause))
            message = one_line(cause.__cause__)
            prefix = f"{key.group(1)}: " if key and not message.startswith(key.group(1)) else ""
            return ConfigError(prefix + message)
        if isinstance(cause, MisconfigurationException):  # Lightning's messages name the setting
            return ConfigError(one_line(cause))
        if isinstance(cause, OmegaConfBaseException):  # a key that does not exist, an interpolation that fails
            return ConfigError(one_line(cause))
    return None


# --- signals -----------------------------------------------------------------------------------


class _Signal(BaseException):
    """Raised by our handlers outside training; a BaseException so `except Exception` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stop_signum: int | None = None  # the signal that asked a training run to stop


def stop_signal() -> int:
    """The signal (SIGTERM or SIGINT) that stopped the current training run."""
    return _stop_signum or signal.SIGTERM


def _fitting() -> bool:
    # Lightning replaces our SIGTERM handler during fit (and calls it after its own).
    return signal.getsignal(signal.SIGTERM) is not _on_sigterm


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _stop_signum
    _stop_signum = _stop_signum or signum
    if not _fitting():
        raise _Signal(signum)
    # Lightning's handler ran first: it stops the run once the current step is done.


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _stop_signum
    if not _fitting():
        raise _Signal(signum)
    _stop_signum = signal.SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
    log.warning("Ctrl-C: stopping after this step and saving last.ckpt (press Ctrl-C again to stop at once)")
    os.kill(os.getpid(), signal.SIGTERM)  # Lightning's graceful stop, the same on every DDP rank


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)


# --- entry points ------------------------------------------------------------------------------

_failed_jobs: list[str] = []
_task_started = False  # errors before it (composing the config, creating the run folder) are Hydra's


def run_task(task: Callable[[Any], T], cfg: Any, logger: logging.Logger = log) -> T | None:
    """`task(cfg)`, with its user errors reported as one line (see the module docstring)."""
    global _task_started
    _task_started = True
    try:
        return task(cfg)
    except _Signal as stop:
        cause: UserError = Interrupted(f"Stopped by {stop}; nothing was left half-written", stop.signum)
    except Exception as error:
        found = user_error(error)
        if found is None:
            raise  # a bug: keep the traceback
        cause = found
    logger.error("%s", one_line(cause))
    if multirun() and not isinstance(cause, Interrupted):
        job = HydraConfig.get().job
        _failed_jobs.append(f"#{job.num} ({job.override_dirname or 'no overrides'}): {one_line(cause)}")
        return None  # the sweep goes on; `main` reports the failure at the end
    raise SystemExit(cause.exit_code) from None


def _startup_error(error: BaseException) -> UserError | None:
    """What went wrong before the task started, told in one line: a bad override or config name
    (Hydra's messages span lines and end with advice about HYDRA_FULL_ERROR), or a run folder
    that cannot be created (`out=` naming a file, a read-only place)."""
    if isinstance(error, HydraException):
        text = str(error).split("Config search path")[0]
        skip = ("full_key:", "object_type=", "Set the environment variable HYDRA_FULL_ERROR")
        return ConfigError(
            " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip))
        )
    if isinstance(error, ValueError) and "Config group override must be a string" in str(error):
        nulls = [a for a in sys.argv[1:] if re.fullmatch(r"\+{0,2}[\w/.@-]+=null", a)]
        given = nulls[0] if nulls else "GROUP=null"
        return ConfigError(
            f"{given}: a config group takes one of its option names, not null: leave it out for its default, "
            f"or choose one (python {Path(sys.argv[0]).name} --help lists the groups and options)"
        )
    if isinstance(error, ValueError) and "Unable to configure handler" in str(error):  # Hydra's run log file
        error = next((c for c in _chain(error) if isinstance(c, OSError)), error)
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return ConfigError(
            f"Cannot create or write the output folder ({where}{error.strerror or error}): point out= / "
            "hydra.run.dir / paths.log_dir at a writable folder"
        )
    return None


def main(hydra_main: Callable[[], Any]) -> None:
    """Run a `@hydra.main` function as a command: signal handlers, one-line errors from composing
    the config too, then failed multirun jobs -> exit 1."""
    install_signal_handlers()
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises instead of printing: we tell it in one line
    try:
        hydra_main()
    except _Signal as stop:
        log.error("Stopped by %s before the run started; nothing was written", stop)
        sys.exit(128 + stop.signum)
    except BrokenPipeError:  # `ldm-train --help | head`: the reader left; say nothing, like any CLI tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except Exception as error:
        found = user_error(error) if _task_started else (_startup_error(error) or user_error(error))
        if found is None:
            raise  # a bug: keep the traceback
        log.error("%s", one_line(found))
        sys.exit(found.exit_code)
    if _failed_jobs:
        log.error("%d multirun job(s) failed:\n  %s", len(_failed_jobs), "\n  ".join(_failed_jobs))
        sys.exit(1)
