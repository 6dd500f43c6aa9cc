"""Train one stage of the pipeline; Hydra composes conf/train.yaml.

    python train.py model=vae                       # first stage
    python train.py model=vae trainer=gpu logger=wandb
    python train.py -m model=vae model.beta=1e-3,1e-2   # a multirun sweep
    python train.py model=ldm ckpt_path=last        # resume the newest run of this stage in place

`train(cfg)` is importable (tests call it) and returns the final metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

import hydra
import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm.checkpoints import CheckpointError, load_vae, record_latest
from ldm.cli import handler, resolvers
from ldm.cli.typecheck import check_config, check_values
from ldm.errors import ConfigError, Interrupted
from ldm.io import atomic_write
from ldm.loggers import finish_wandb
from ldm.resume import find_checkpoint, resolve_resume

log = logging.getLogger("train")
# The LDM's frozen VAE and EMA copy are in eval mode on purpose; Lightning warns about any such module.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
resolvers.register()

# Keys of conf/train.yaml that build nothing (the rest is checked against what it builds).
TOP_LEVEL = {"seed": int, "train": bool, "test": bool, "ckpt_path": str | None, "task_name": str,
             "lr_scaling": Literal["none", "sqrt", "linear"]}


def _instantiate_all(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None]


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint):
        return ckpt.best_model_path or ckpt.last_model_path or None
    return None


def _check(cfg: DictConfig, kind: str) -> None:
    """Config values a run cannot work with, before anything is read or written."""
    check_values({key: cfg.get(key) for key in TOP_LEVEL}, TOP_LEVEL)
    if not cfg.train and not cfg.test:
        raise ConfigError("train=false test=false leaves nothing to do")
    if not cfg.train and cfg.get("ckpt_path") is None:
        raise ConfigError("train=false tests a trained checkpoint: pass ckpt_path=PATH (or ckpt_path=last)")
    if kind == "ldm" and OmegaConf.select(cfg, "data.vae_ckpt") is None:
        raise ConfigError("model=ldm trains on the VAE latents of an image dataset, but data= replaced the latent data: "
                          "choose the images with data@data.images=NAME (e.g. data@data.images=fashion_mnist) instead")


def _use_checkpoint(cfg: DictConfig, kind: str) -> None:
    """`ckpt_path=last|PATH`. Training resumes that run in its own folder and W&B run (ldm/resume.py);
    `train=false` tests it from this run's new folder. Either way its stage is checked first, and an
    LDM keeps the VAE its checkpoint holds: its UNet was trained on that VAE's latents."""
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
    log.info("%s %s in %s (W&B run %s)", "Resuming" if cfg.train else "Testing", path, cfg.paths.output_dir, run_id or "-")


def _keep_own_vae(cfg: DictConfig, ldm_ckpt: Path) -> None:
    configured = OmegaConf.select(cfg, "vae_ckpt", throw_on_resolution_failure=False)
    cfg.vae_ckpt = str(ldm_ckpt)  # load_vae reads the VAE an LDM checkpoint holds
    try:
        differs = configured is not None and not _same_weights(load_vae(configured), load_vae(ldm_ckpt))
    except CheckpointError:
        differs = True
    if differs:
        log.warning("vae_ckpt=%s is not the VAE this LDM was trained on; using the one its checkpoint holds", configured)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _record_config(cfg: DictConfig, output_dir: Path) -> Path:
    """The run's resolved config: config.yaml, or config-resumed-<time>[_n].yaml beside it (never overwritten)."""
    stem = "config" if not (output_dir / "config.yaml").exists() else f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while (path := output_dir / (f"{stem}.yaml" if n == 0 else f"{stem}_{n}.yaml")).exists():
        n += 1
    text = OmegaConf.to_yaml(cfg, resolve=True)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _relaunch_ranks_from(config_file: Path) -> None:
    """Multirun + DDP: start the extra ranks of this job from its resolved config, as a single run.

    Lightning starts DDP ranks 1..N-1 by re-running `sys.argv` (plus `hydra.run.dir`); inside a
    multirun that is `-m ...` again, so every rank would start the whole sweep of its own: the
    known Hydra + DDP pitfall. Here each rank runs exactly this job's config in this job's folder.
    """
    from lightning.pytorch.strategies.launchers import subprocess_script

    def command(local_rank: int) -> tuple[list[str], str]:
        return [
            sys.executable, str(Path(__file__).resolve()), "-cp", str(config_file.parent), "-cn", config_file.name,
            f'hydra.run.dir="{config_file.parent}"', f"hydra.job.name=train_ddp_process_{local_rank}",
            "hydra.output_subdir=null",
        ], hydra.utils.get_original_cwd()

    subprocess_script._hydra_subprocess_cmd = command  # what Lightning's launcher calls for each rank


DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _end_multirun_job(env_before: dict[str, str | None]) -> None:
    """After one multirun job: Lightning leaves its DDP launch variables in os.environ and the
    process group open; the next job would take LOCAL_RANK as "launched externally" and wait
    for ranks that never start. Restore both, and free this job's compiled graphs and GPU cache."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


LR_SCALING = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


def scale_lr(cfg: DictConfig, world_size: int, accumulate: int) -> None:
    """`lr_scaling`: multiply model.optimizer.lr by (world_size × accumulate)^p, p = 0, 1/2 or 1.

    `data.batch_size` is per device, so N devices (and k accumulated batches) take steps on an
    N·k times larger batch; "linear" (Goyal et al. 2017) or "sqrt" keeps the step per sample.
    Each process applies it to its own copy of the config: `config.yaml` records the requested
    learning rate, the loggers' hyperparameters the effective one.
    """
    rule = cfg.get("lr_scaling", "none")
    if rule not in LR_SCALING:
        raise ConfigError(f"lr_scaling={rule!r} is not one of {list(LR_SCALING)}")
    factor = float(world_size * accumulate) ** LR_SCALING[rule]
    if factor != 1.0 and cfg.model.get("optimizer") is not None:
        with open_dict(cfg):
            cfg.model.optimizer.lr = float(cfg.model.optimizer.lr) * factor
        log.info("lr_scaling=%s: effective batch x%d, model.optimizer.lr -> %.3g", rule, world_size * accumulate,
                 cfg.model.optimizer.lr)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; record its best checkpoint for the next stage."""
    env_before = {key: os.environ.get(key) for key in DDP_ENV}
    kind = getattr(get_class(cfg.model._target_), "KIND", None)
    _check(cfg, kind)
    _use_checkpoint(cfg, kind)  # checks the checkpoint's stage before any folder is touched
    check_config(OmegaConf.to_container(cfg, resolve=True))
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # DDP ranks > 0 re-enter here in processes of their own
        if not (cfg.get("ckpt_path") and cfg.train) and any((output_dir / "checkpoints").glob("*.ckpt")):
            raise CheckpointError(
                f"{output_dir} already holds another run's checkpoints, which this run would overwrite: resume "
                f"it with ckpt_path={output_dir / 'checkpoints' / 'last.ckpt'}, or pick a new hydra.run.dir"
            )
        config_file = _record_config(cfg, output_dir)
        if resolvers.multirun():
            _relaunch_ranks_from(config_file)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matmuls (Ampere+ GPUs)

    datamodule = hydra.utils.instantiate(cfg.data)
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    scale_lr(cfg, trainer.world_size, trainer.accumulate_grad_batches)
    model = hydra.utils.instantiate(cfg.model)
    model.configure_optimizers()  # a bad optimizer or LR-schedule value fails now, not after the data is prepared
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    exit_code = 1
    try:
        ckpt = cfg.ckpt_path if not cfg.train else None
        if cfg.train:
            with _reported(trainer, "training", cfg.get("ckpt_path")):
                trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            ckpt = _best_checkpoint(trainer)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.test:
            with _reported(trainer, "testing", ckpt):
                trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if cfg.train and ckpt and trainer.is_global_zero:
            record_latest(cfg.paths.registry_dir, cfg.task_name, ckpt, run_dir=str(output_dir), metrics=metrics)
            log.info("Best %s checkpoint: %s (recorded in %s)", cfg.task_name, ckpt, cfg.paths.registry_dir)
        exit_code = 0
    finally:
        finish_wandb(loggers, exit_code)
        if resolvers.multirun():
            _end_multirun_job(env_before)
    return metrics


class _reported:
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
                f"ckpt_path={self.ckpt_path}: its weights do not fit this model ({str(error).splitlines()[0]} "
                f"{' '.join(str(error).split())[:300]}): use the config it was trained with (config.yaml in its run folder)"
            ) from error
        if not isinstance(error, SIGTERMException):
            return False
        signum = handler.stop_signal()
        name, step = signal.Signals(signum).name, self.trainer.global_step
        last = next((c.last_model_path for c in self.trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")), "")
        if self.stage == "testing":
            message = f"Stopped by {name} while testing; training had finished: test again with train=false ckpt_path=PATH"
        elif step == 0 or not last:
            message = f"Stopped by {name} before the first checkpoint; nothing to resume: run the command again"
        else:
            message = f"Stopped by {name} at step {step}; {last} holds that step: resume with the same command plus ckpt_path={last}"
        raise Interrupted(message, signum) from None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = handler.run_task(train, cfg, log)
    return None if metrics is None else metrics.get(cfg.get("optimized_metric"))


def main() -> None:
    """`python train.py ...`: one-line user errors, exit status 128 + signal when stopped, 1 if a sweep job failed."""
    handler.main(_hydra_main)


if __name__ == "__main__":
    main()
