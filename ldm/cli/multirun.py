"""Multirun jobs that each train on several DDP processes (`python train.py -m ... trainer=ddp`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from hydra.utils import get_original_cwd

from ldm.compat import require

DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def relaunch_ranks_from(config_file: Path) -> None:
    """Start the extra ranks of this job from its resolved config, as a single `python -m ldm.cli.train` run.

    Lightning starts DDP ranks 1..N-1 by re-running `sys.argv` (plus `hydra.run.dir`); inside a
    multirun that is `-m ...` again, so every rank would start the whole sweep of its own: the
    known Hydra + DDP pitfall. Here each rank runs exactly this job's config in this job's folder.
    """
    from lightning.pytorch.strategies.launchers import subprocess_script

    require(subprocess_script, "_hydra_subprocess_cmd")  # a private Lightning API (ldm/compat.py)

    def command(local_rank: int) -> tuple[list[str], str]:
        return [
            sys.executable,
            "-m",
            "ldm.cli.train",
            "-cp",
            str(config_file.parent),
            "-cn",
            config_file.name,
            f'hydra.run.dir="{config_file.parent}"',
            f"hydra.job.name=train_ddp_process_{local_rank}",
            "hydra.output_subdir=null",
        ], get_original_cwd()

    subprocess_script._hydra_subprocess_cmd = command  # what Lightning's launcher calls for each rank


def end_job(env_before: dict[str, str | None]) -> None:
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
