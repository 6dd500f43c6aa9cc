"""A training run's checks, resume target and records, before and after `trainer.fit`.

* `check_run`: the top-level values of conf/train.yaml, and combinations no run can work with;
* `use_checkpoint`: `ckpt_path=last|PATH`, checked against the stage before any folder is touched;
  training resumes that run in its own folder and W&B run, `train=false` tests it from a new one;
  an LDM keeps the VAE its checkpoint holds (its UNet was trained on that VAE's latents);
* `record_config`: the resolved config, never overwriting an earlier launch's;
* `reported`: what ends `fit`/`test` early (a stop signal, weights that do not fit) as one line.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import yaml
from filelock import FileLock, Timeout
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm.checkpoints import CheckpointError, load_vae
from ldm.cli import handler
from ldm.cli.typecheck import check_values
from ldm.errors import ConfigError, Interrupted, one_line
from ldm.io import atomic_write
from ldm.resume import find_checkpoint, resolve_resume

log = logging.getLogger("train")

# Keys of conf/train.yaml that build nothing (the rest is checked against what it builds).
TOP_LEVEL = {
    "seed": int,
    "train": bool,
    "test": bool,
    "ckpt_path": str | None,
    "task_name": str,
    "lr_scaling": Literal["none", "sqrt", "linear"],
}


def check_run(cfg: DictConfig, kind: str | None) -> None:
    """Config values a run cannot work with, before anything is read or written."""
    check_values({key: cfg.get(key) for key in TOP_LEVEL}, TOP_LEVEL)
    if not cfg.train and not cfg.test:
        raise ConfigError("train=false test=false leaves nothing to do")
    if not cfg.train and cfg.get("ckpt_path") is None:
        raise ConfigError("train=false tests a trained checkpoint: pass ckpt_path=PATH (or ckpt_path=last)")
    if kind != "ldm":
        return
    vae_stage = "path" in (cfg.get("first_stage") or {})  # first_stage=vae loads vae_ckpt; pixel has no VAE
    if not vae_stage and OmegaConf.to_container(cfg, resolve=False).get("vae_ckpt") is not None:
        raise ConfigError(
            "vae_ckpt= is not used by first_stage=pixel, which trains on the images themselves: drop it, "
            "or train on its latents with first_stage=vae"
        )
    latent = OmegaConf.select(cfg, "vae_ckpt", throw_on_resolution_failure=False) is not None
    if vae_stage and latent and "first_stage" not in cfg.data:
        raise ConfigError(
            "model=ldm trains on the VAE latents of an image dataset, but data= replaced the latent data: "
            "choose the images with data@data.images=NAME (e.g. data@data.images=fashion_mnist) instead"
        )


def use_checkpoint(cfg: DictConfig, kind: str | None) -> None:
    """`ckpt_path=last|PATH` (see the module docstring); sets cfg.ckpt_path to the file it means."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return
    if cfg.train:
        resume = resolve_resume(ckpt, cfg.paths.log_dir, cfg.task_name, kind)
        path, run_dir, run_id = resume.ckpt_path, resume.run_dir, resume.wandb_run_id
    else:
        path, run_dir, run_id = find_checkpoint(ckpt, cfg.paths.log_dir, cfg.task_name, kind)[0].resolve(), None, None
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
        if run_dir is not None:
            cfg.paths.output_dir = str(run_dir)
        if run_id and cfg.get("logger") and cfg.logger.get("wandb"):
            cfg.logger.wandb.run_id = run_id
        if kind == "ldm":
            _keep_own_vae(cfg, path)
    log.info(
        "%s %s in %s (W&B run %s)", "Resuming" if cfg.train else "Testing", path, cfg.paths.output_dir, run_id or "-"
    )


def _keep_own_vae(cfg: DictConfig, ldm_ckpt: Path) -> None:
    if OmegaConf.to_container(cfg, resolve=False).get("vae_ckpt") is None:
        return  # a pixel-space model (first_stage=pixel): no VAE to keep
    configured = OmegaConf.select(cfg, "vae_ckpt", throw_on_resolution_failure=False)
    cfg.vae_ckpt = str(ldm_ckpt)  # load_vae reads the VAE an LDM checkpoint holds
    try:
        differs = configured is not None and not _same_weights(load_vae(configured), load_vae(ldm_ckpt))
    except CheckpointError:
        differs = True
    if differs:
        log.warning(
            "vae_ckpt=%s is not the VAE this LDM was trained on; using the one its checkpoint holds", configured
        )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@contextlib.contextmanager
def lock_run(output_dir: Path) -> Iterator[None]:
    """One training process per run folder: a second one (the same `ckpt_path=last` started twice)
    is refused before it writes anything. An OS lock: a killed process holds it no longer."""
    lock = FileLock(str(output_dir / ".run.lock"), timeout=0)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"{output_dir} is in use by another training process (the same run started twice?): wait "
            "for it to finish, or stop it and resume with ckpt_path=last"
        ) from None
    try:
        yield
    finally:
        lock.release()


def record_config(cfg: DictConfig, output_dir: Path) -> Path:
    """The run's resolved config: config.yaml, or config-resumed-<time>[_n].yaml beside it (never overwritten)."""
    stem = "config" if not (output_dir / "config.yaml").exists() else f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while (path := output_dir / (f"{stem}.yaml" if n == 0 else f"{stem}_{n}.yaml")).exists():
        n += 1
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if stem != "config":
        _warn_changed(output_dir / "config.yaml", OmegaConf.to_container(cfg, resolve=True))
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# Keys a resume is expected to change: how long it runs, where it resumes from, the loggers' run names.
_RESUME_KEYS = ("ckpt_path", "trainer.max_epochs", "trainer.max_steps", "logger.", "paths.", "tags")


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs (nested dicts), sorted."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [k for key in keys for k in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if before != after else []


def _warn_changed(first: Path, now: dict[str, Any]) -> None:
    """A resume whose config differs from the run's first one: say which keys, loudly (the run goes on:
    changing the learning rate or the epochs on resume can be what the user wants)."""
    try:
        before = yaml.safe_load(first.read_text())
    except (OSError, yaml.YAMLError):
        return
    changed = [k for k in changed_keys(before, now) if not k.startswith(_RESUME_KEYS)]
    if changed:
        shown = ", ".join(f"{k}: {_get(before, k)!r} -> {_get(now, k)!r}" for k in changed[:8])
        log.warning(
            "Resuming with a config that differs from the run's own (%s): %s%s. If that is not intended, stop "
            "and resume with the run's values (its config.yaml)",
            first,
            shown,
            f" and {len(changed) - 8} more" if len(changed) > 8 else "",
        )


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


class reported:
    """What ends `fit`/`test` early, told as a one-line user error:

    * a SIGTERM (or Ctrl-C, `ldm.cli.handler`): Lightning raises SIGTERMException, a SystemExit
      with status 0; it becomes `Interrupted`, saying what was saved and how to go on, with exit
      status 128 + signal;
    * a checkpoint whose weights do not fit the configured model (a changed model size).
    """

    def __init__(self, trainer: L.Trainer, stage: str, ckpt_path: str | None) -> None:
        self.trainer, self.stage, self.ckpt_path = trainer, stage, ckpt_path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> bool:
        if isinstance(error, RuntimeError) and "Error(s) in loading state_dict" in str(error):
            raise CheckpointError(
                f"ckpt_path={self.ckpt_path}: its weights do not fit this model ({one_line(error)[:300]}): use the "
                "config it was trained with (config.yaml in its run folder)"
            ) from error
        if not isinstance(error, SIGTERMException):
            return False
        signum = handler.stop_signal()
        name, step = signal.Signals(signum).name, self.trainer.global_step
        last = next(
            (c.last_model_path for c in self.trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")), ""
        )
        if self.stage == "testing":
            message = (
                f"Stopped by {name} while testing; training had finished: test again with train=false ckpt_path=PATH"
            )
        elif step == 0 or not last:
            message = f"Stopped by {name} before the first checkpoint; nothing to resume: run the command again"
        else:
            message = f"Stopped by {name} at step {step}; {last} holds that step: resume with the same command plus ckpt_path={last}"
        raise Interrupted(message, signum) from None
