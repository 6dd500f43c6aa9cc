"""Train one stage of the pipeline; Hydra composes conf/train.yaml.

    python train.py model=vae                       # first stage
    python train.py model=vae trainer=gpu logger=wandb
    python train.py -m model=vae model.beta=1e-3,1e-2   # a multirun sweep
    python train.py model=ldm ckpt_path=last        # resume the newest run of this stage in place

`train(cfg)` is importable (tests call it) and returns the final metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm.checkpoints import CheckpointError, record_latest
from ldm.cli import CONF_DIR, handler, multirun, resolvers
from ldm.cli.quiet import quiet
from ldm.cli.runs import check_run, lock_run, record_config, reported, use_checkpoint
from ldm.cli.summary import run_summary
from ldm.cli.typecheck import check_config
from ldm.errors import ConfigError
from ldm.loggers import finish_wandb, summarize_best

log = logging.getLogger("train")
quiet()
resolvers.register()


def _instantiate_all(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None]


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint):
        return ckpt.best_model_path or ckpt.last_model_path or None
    return None


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
        log.info(
            "lr_scaling=%s: effective batch x%d, model.optimizer.lr -> %.3g",
            rule,
            world_size * accumulate,
            cfg.model.optimizer.lr,
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; record its best checkpoint for the next stage."""
    env_before = {key: os.environ.get(key) for key in multirun.DDP_ENV}
    kind = getattr(get_class(cfg.model._target_), "KIND", None)
    check_run(cfg, kind)
    use_checkpoint(cfg, kind)  # checks the checkpoint's stage before any folder is touched
    check_config(OmegaConf.to_container(cfg, resolve=True))
    output_dir = Path(cfg.paths.output_dir)
    with lock_run(output_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        return _run(cfg, output_dir, env_before)


def _first_stage(cfg: DictConfig) -> dict[str, Any]:
    """The latent model's first stage, built once and before Lightning's start-up lines, so that a bad
    `vae_ckpt=` is one line naming it; {} for a model without one (the VAE, the classifier)."""
    node = cfg.model.get("first_stage")
    if node is None:
        return {}
    try:
        return {"first_stage": hydra.utils.instantiate(node)}
    except InstantiationException as e:
        if isinstance(e.__cause__, CheckpointError):
            raise CheckpointError(f"vae_ckpt: {e.__cause__}") from None
        raise


def _run(cfg: DictConfig, output_dir: Path, env_before: dict[str, str | None]) -> dict[str, float]:
    if rank_zero_only.rank == 0:  # DDP ranks > 0 re-enter here in processes of their own
        if not (cfg.get("ckpt_path") and cfg.train) and any((output_dir / "checkpoints").glob("*.ckpt")):
            raise CheckpointError(
                f"{output_dir} already holds another run's checkpoints, which this run would overwrite: resume "
                f"it with ckpt_path={output_dir / 'checkpoints' / 'last.ckpt'}, or pick a new hydra.run.dir"
            )
        config_file = record_config(cfg, output_dir)
        if resolvers.multirun():
            multirun.relaunch_ranks_from(config_file)
    first_stage = _first_stage(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matmuls (Ampere+ GPUs)

    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    scale_lr(cfg, trainer.world_size, trainer.accumulate_grad_batches)
    model = hydra.utils.instantiate(cfg.model, **first_stage)
    # Latent data is encoded by, and fits the latent scale of, the model's own first stage.
    shared = {"first_stage": model.first_stage} if "first_stage" in cfg.data and hasattr(model, "first_stage") else {}
    datamodule = hydra.utils.instantiate(cfg.data, **shared)
    model.configure_optimizers()  # a bad optimizer or LR-schedule value fails now, not after the data is prepared
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    summarize_best(loggers)

    exit_code = 1
    try:
        ckpt = cfg.ckpt_path if not cfg.train else None
        if cfg.train:
            with reported(trainer, "training", cfg.get("ckpt_path")):
                trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            ckpt = _best_checkpoint(trainer)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.test:
            with reported(trainer, "testing", ckpt):
                trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if cfg.train and ckpt and trainer.is_global_zero:
            record_latest(cfg.paths.registry_dir, cfg.task_name, ckpt, run_dir=str(output_dir), metrics=metrics)
            log.info("Best %s checkpoint: %s (recorded in %s)", cfg.task_name, ckpt, cfg.paths.registry_dir)
        if trainer.is_global_zero:  # before the W&B run is closed: it names its folder
            log.info(
                run_summary(
                    output_dir,
                    ckpt if cfg.train else None,
                    str(output_dir / "checkpoints" / "last.ckpt"),
                    loggers,
                    metrics,
                )
            )
        exit_code = 0
    finally:
        finish_wandb(loggers, exit_code)
        if resolvers.multirun():
            multirun.end_job(env_before)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = handler.run_task(train, cfg, log)
    return optimized_value(metrics, cfg.get("optimized_metric"))


def optimized_value(metrics: dict[str, float] | None, key: str | None) -> float | None:
    """What a sweeper (Optuna) optimises: `metrics[key]`; None for a failed job or a missing metric,
    which the Optuna sweeper records as a failed trial (with `max_failure_rate: 1.0` the study goes on)."""
    if metrics is not None and key in metrics:
        return metrics[key]
    if metrics is not None and "BasicSweeper" not in HydraConfig.get().sweeper._target_:
        log.error(
            "optimized_metric=%s was not logged by this run (it has %s): for val/fid the run needs a classifier "
            "(python train.py model=classifier) and callbacks.sample_quality.every_n_epochs dividing "
            "trainer.max_epochs; this trial counts as failed",
            key,
            sorted(metrics),
        )
    return None


def main() -> None:
    """`python train.py ...`: one-line user errors, exit status 128 + signal when stopped, 1 if a sweep job failed."""
    handler.main(_hydra_main)


if __name__ == "__main__":
    main()
