"""OmegaConf resolvers the configs in `conf/` use; `register()` installs them (idempotent).

${cwd:}                          the folder the command was started in
${latest_ckpt:vae,REGISTRY[,FALLBACK]}  the checkpoint the last `vae` run recorded in REGISTRY, else in
                                 FALLBACK (debug runs: their own registry, then the real one); an error if none
${latest_ckpt_or_none:...}       ... or null
${auto_precision:ACCELERATOR}    bf16-mixed on a CUDA GPU with native bf16, else 32-true
${run_name:TASK} / ${sweep_group:TASK}   W&B run and group names
${run_dir:BASE,CKPT_PATH,TRAIN,LOG_DIR,TASK,MODEL_TARGET}   this run's folder (see `run_dir`)
${unique_dir:BASE}               BASE, or BASE_1, BASE_2, ...: the first that did not exist, claimed
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import OmegaConf

from ldm.checkpoints import CheckpointError, find_latest
from ldm.errors import UserError

log = logging.getLogger(__name__)

_CLAIMED: dict[str, str] = {}  # base -> claimed folder, per process (a resolver may run twice)


def multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def unique_dir(base: str) -> str:
    """Claim a new folder named `base` (or `base_1`, `base_2`, ...) with an exclusive mkdir.

    Run folders are named by the second they start in; two runs started in the same second must
    not share one (they would overwrite each other's config, metrics and checkpoints). `mkdir`
    fails if the folder exists, also across processes and machines sharing the filesystem, so
    exactly one run owns each name.
    """
    if base in _CLAIMED:
        return _CLAIMED[base]
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = base if n == 0 else f"{base}_{n}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        _CLAIMED[base] = candidate
        return candidate
    raise UserError(f"Could not claim a run folder next to {base}: 10000 names taken; set hydra.run.dir")


def run_dir(base: str, ckpt_path: str | None, train: bool, log_dir: str, task_name: str, model_target: str) -> str:
    """`hydra.run.dir`: the folder of the run `ckpt_path` resumes, else a new folder claimed from `base`.

    Resolving the resume target here, before Hydra opens its log file, keeps a resumed run's log,
    config records and metrics in its own folder. Anything wrong with `ckpt_path` (missing file,
    another stage's checkpoint) is reported by `train()`; here it only means: a new folder.
    `train=false` tests a checkpoint from a new folder too.
    """
    if ckpt_path is not None and train is True:
        from ldm.resume import resolve_resume  # deferred: imports Lightning

        try:
            resume = resolve_resume(ckpt_path, log_dir, task_name, getattr(get_class(model_target), "KIND", None))
        except (UserError, ImportError, ValueError):
            resume = None
        if resume is not None and resume.run_dir is not None:
            return str(resume.run_dir)
    return unique_dir(base)


def auto_precision(accelerator: str) -> str:
    """bf16 mixed precision when training will run on a CUDA GPU that supports it, else float32."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    # Native bf16 only (Ampere and newer): emulated bf16 on a V100 or T4 is slower than float32.
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"


def _latest(stage: str, registry: str, fallback: str | None = None) -> str:
    """The latest `stage` checkpoint in `registry`, else in `fallback`; the error names `registry`."""
    try:
        return str(find_latest(registry, stage))
    except CheckpointError:
        if fallback is None or Path(fallback).resolve() == Path(registry).resolve():
            raise
        return str(find_latest(fallback, stage))


def _latest_or_none(stage: str, registry: str, fallback: str | None = None) -> str | None:
    try:
        return _latest(stage, registry, fallback)
    except CheckpointError:
        return None


def _sweep_group(task: str) -> str | None:
    """One W&B group per multirun, named after its sweep folder; single runs have none."""
    return f"{task}-{Path(HydraConfig.get().sweep.dir).name}" if multirun() else None


def _run_name(task: str) -> str:
    if multirun():
        job = HydraConfig.get().job
        return f"{task}-{job.num}-{job.override_dirname}".rstrip("-")
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def register() -> None:
    resolvers = {
        "cwd": os.getcwd,
        "latest_ckpt": _latest,
        "latest_ckpt_or_none": _latest_or_none,
        "auto_precision": auto_precision,
        "run_name": _run_name,
        "sweep_group": _sweep_group,
    }
    for name, fn in resolvers.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)
    # Cached: Hydra resolves the run folder more than once, and copies this cache into each sweep job.
    OmegaConf.register_new_resolver("unique_dir", unique_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True, use_cache=True)
