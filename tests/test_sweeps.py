"""Sweeps and clusters: the Optuna search really runs (2 trials on CPU, scored by val/fid), the
SLURM launcher composes, and every W&B sweep command is a valid override list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, compose_cfg, save_vae_checkpoint
from test_classifier import save_classifier_checkpoint
from test_train import LDM_TINY


def _optuna(tmp_path: Path, mnist_dir: Path, *extra: str, batch: str = "64") -> subprocess.CompletedProcess:
    """`train.py hparams_search=ldm_optuna` on a tiny LDM whose every epoch is scored by val/fid."""
    vae, classifier = save_vae_checkpoint(tmp_path / "vae.ckpt"), save_classifier_checkpoint(tmp_path / "cls.ckpt")
    scored = [
        f"callbacks.sample_quality.classifier_ckpt={classifier}",
        "callbacks.sample_quality.every_n_epochs=1",
        "callbacks.sample_quality.num_samples=16",
        "callbacks.sample_quality.batch_size=16",
    ]
    tiny = [o for o in LDM_TINY if not o.startswith(("callbacks.images", "data.batch_size"))] + [
        f"data.batch_size={batch}"
    ]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "hparams_search=ldm_optuna",
        f"vae_ckpt={vae}",
        *scored,
        "callbacks.progress_bar=null",
        "callbacks.images=null",
        "test=false",
        f"paths.root_dir={tmp_path}",
        *tiny,
        *extra,
    ]
    env = {**os.environ, "LDM_DATA_DIR": str(mnist_dir)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def test_optuna_search_runs_two_trials_on_val_fid(tmp_path: Path, mnist_dir: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = _optuna(tmp_path, mnist_dir, "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "debug" / "ldm" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"objective", "model.optimizer.lr"}
    assert results["best_value"] > 0  # a real FID, not NaN from a missing metric
    configs = [yaml.safe_load((j / "config.yaml").read_text()) for j in jobs]
    assert all(c["callbacks"]["model_checkpoint"]["_target_"] for c in configs)
    assert len({c["model"]["optimizer"]["lr"] for c in configs}) == 2  # two different points


def test_slurm_launcher_composes_one_task_per_device(tmp_path: Path, mnist_dir: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ldm.cli.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "model=ldm",
                "trainer=ddp",
                "trainer.devices=4",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes, launcher.partition) == (4, 4, 1, "gpu")


def test_every_wandb_sweep_command_is_a_valid_config(tmp_path: Path, mnist_dir: Path) -> None:
    """The agent runs `python train.py <fixed args> key=value ...`: each value of the sweep must
    compose (W&B's agent needs a server, so the commands are built here as it builds them)."""
    sweep = yaml.safe_load((ROOT / "experiments" / "wandb_sweep.yaml").read_text())
    assert sweep["metric"] == {"name": "val/fid", "goal": "minimize"}
    fixed = [a for a in sweep["command"] if not a.startswith("${")]
    for key, spec in sweep["parameters"].items():
        values = spec.get("values") or [spec["min"], spec["max"]]
        for value in values:
            compose_cfg(tmp_path, mnist_dir, [*fixed, f"{key}={value}"])


def test_a_failed_optuna_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, mnist_dir: Path) -> None:
    """One trial's run fails (an invalid batch size drawn from the search space): it is recorded as
    failed, the other trials run, and the study ends with its best completed point."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = _optuna(tmp_path, mnist_dir, "hydra.sweeper.n_trials=4", batch="choice(64,0)")
    output = result.stdout + result.stderr
    # Exit status 1 says a job failed (as in any multirun), after the whole study ran.
    assert result.returncode == 1 and "multirun job(s) failed" in output, output[-3000:]
    (sweep,) = (tmp_path / "logs" / "debug" / "ldm" / "multiruns").iterdir()
    assert len([p for p in sweep.iterdir() if p.name.isdigit()]) == 4
    assert "data.batch_size=0" in output  # at least one trial drew the bad value...
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["data.batch_size"] == 64 and results["best_value"] > 0  # ...and one completed
