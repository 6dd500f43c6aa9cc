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
import re
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm.checkpoints import CheckpointError, find_latest, record_latest
from ldm.data.idx import IDXError
from ldm.data.latents import CacheError
from ldm.data.mnist import DatasetNotFoundError
from ldm.guard import NonFiniteError
from ldm.loggers import finish_wandb
from ldm.resume import resolve_resume

log = logging.getLogger("train")
# The LDM's frozen VAE and EMA copy are in eval mode on purpose; Lightning warns about any such module.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_group(task: str) -> str | None:
    """One W&B group per multirun, named after its sweep folder; single runs have none."""
    return f"{task}-{Path(HydraConfig.get().sweep.dir).name}" if _multirun() else None


def _run_name(task: str) -> str:
    if _multirun():
        job = HydraConfig.get().job
        return f"{task}-{job.num}-{job.override_dirname}".rstrip("-")
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
OmegaConf.register_new_resolver("sweep_group", _sweep_group, replace=True)
OmegaConf.register_new_resolver("latest_ckpt", lambda stage, registry: str(find_latest(registry, stage)), replace=True)
OmegaConf.register_new_resolver("run_name", _run_name, replace=True)


def _latest_or_none(stage: str, registry: str) -> str | None:
    try:
        return str(find_latest(registry, stage))
    except CheckpointError:
        return None


OmegaConf.register_new_resolver("latest_ckpt_or_none", _latest_or_none, replace=True)


def _auto_precision(accelerator: str) -> str:
    """bf16 mixed precision when training will run on a CUDA GPU that supports it, else float32."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    # Native bf16 only (Ampere and newer): emulated bf16 on a V100 or T4 is slower than float32.
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"


OmegaConf.register_new_resolver("auto_precision", _auto_precision, replace=True)


def _instantiate_all(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None]


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint):
        return ckpt.best_model_path or ckpt.last_model_path or None
    return None


def _resume_in_place(cfg: DictConfig) -> None:
    """`ckpt_path=last|PATH`: continue that run in its own folder and W&B run (ldm/resume.py)."""
    resume = resolve_resume(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if resume is None:
        return
    with open_dict(cfg):
        cfg.ckpt_path = str(resume.ckpt_path)
        if resume.run_dir is not None:
            cfg.paths.output_dir = str(resume.run_dir)
        if resume.wandb_run_id and cfg.get("logger") and cfg.logger.get("wandb"):
            cfg.logger.wandb.run_id = resume.wandb_run_id
    log.info("Resuming %s in %s (W&B run %s)", resume.ckpt_path, cfg.paths.output_dir, resume.wandb_run_id or "-")


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
        raise ValueError(f"lr_scaling={rule!r} is not one of {list(LR_SCALING)}")
    factor = float(world_size * accumulate) ** LR_SCALING[rule]
    if factor != 1.0 and cfg.model.get("optimizer") is not None:
        with open_dict(cfg):
            cfg.model.optimizer.lr = float(cfg.model.optimizer.lr) * factor
        log.info("lr_scaling=%s: effective batch x%d, model.optimizer.lr -> %.3g", rule, world_size * accumulate,
                 cfg.model.optimizer.lr)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; record its best checkpoint for the next stage."""
    env_before = {key: os.environ.get(key) for key in DDP_ENV}
    _resume_in_place(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # DDP ranks > 0 re-enter here in processes of their own
        if not cfg.get("ckpt_path") and any((output_dir / "checkpoints").glob("*.ckpt")):
            raise CheckpointError(
                f"{output_dir} already holds another run's checkpoints, which this run would overwrite: resume "
                f"it with ckpt_path={output_dir / 'checkpoints' / 'last.ckpt'}, or pick a new hydra.run.dir"
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        resumed = (output_dir / "config.yaml").exists()
        config_file = output_dir / (f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml" if resumed else "config.yaml")
        OmegaConf.save(cfg, config_file, resolve=True)  # the run's resolved config
        if _multirun():
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
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt = _best_checkpoint(trainer)
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if ckpt and trainer.is_global_zero:
            record_latest(cfg.paths.registry_dir, cfg.task_name, ckpt, run_dir=str(output_dir), metrics=metrics)
            log.info("Best %s checkpoint: %s (recorded in %s)", cfg.task_name, ckpt, cfg.paths.registry_dir)
    finally:
        finish_wandb(loggers)
        if _multirun():
            _end_multirun_job(env_before)
    return metrics


def user_error(error: BaseException) -> BaseException | None:
    """The user-facing cause of `error` (missing data or checkpoint, bad config value), if it is one."""
    chain, cause = [], error
    while cause is not None and len(chain) < 8:  # Hydra and OmegaConf wrap what our code raised
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if isinstance(cause, (CheckpointError, DatasetNotFoundError, IDXError, CacheError, NonFiniteError)):
            return cause
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, ValueError):
        # A constructor rejected a config value; its message names the value and the valid range,
        # Hydra's names the config node it was building.
        key = re.search(r"full_key: (\S+)", str(error))
        return ValueError(f"{key.group(1)}: {error.__cause__}" if key else str(error.__cause__))
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise  # a bug: keep the traceback
        log.error("%s", cause)  # one line that names the problem and the fix, no traceback
        raise SystemExit(1) from None
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
