"""train(cfg) end to end on tiny fake MNIST: checkpoints, metrics, registry, run folder, W&B offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ldm.checkpoints import CheckpointError, find_latest, load_vae
from ldm.cli.train import train
from ldm.errors import ConfigError

from conftest import ROOT, compose_cfg

TINY = [
    "debug=fast",
    "trainer=cpu",
    "data.val_size=64",
    "data.batch_size=32",
    "model.vae.hidden_channels=[8,16,16]",
    "trainer.max_epochs=2",
]


def test_train_vae_end_to_end_with_csv(tmp_path: Path, mnist_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=vae", "logger=csv", *TINY])
    with caplog.at_level("INFO", logger="train"):
        metrics = train(cfg)
    summary = caplog.text[caplog.text.index("Run finished:") :]
    for line in (
        f"run folder       {tmp_path / 'run'}",
        "best checkpoint  ",
        "last checkpoint  ",
        "images  ",
        f"metrics          {tmp_path / 'run' / 'csv' / 'metrics.csv'}",
    ):
        assert line in summary, summary
    for key in (
        "val/loss",
        "val/psnr",
        "val/ssim",
        "val/kl",
        "train/loss_epoch",
        "test/loss",
        "test/psnr",
        "train/samples_per_sec",
    ):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").read_text().count("${") == 0  # resolved
    metrics_csv = (run / "csv" / "metrics.csv").read_text()
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert {"model", "trainer", "data"} <= set(hparams) and "beta" not in hparams  # the config, no flat duplicates
    assert "val/loss" in metrics_csv and "train/recon_step" in metrics_csv
    assert sorted(p.name for p in (run / "images").glob("*epoch001.png")) == [
        "inputs_epoch001.png",
        "prior_samples_epoch001.png",
        "reconstructions_epoch001.png",
    ]
    ckpt = find_latest(tmp_path / "logs" / "debug" / "latest", "vae")
    assert ckpt.parent == run / "checkpoints"
    entry = json.loads((tmp_path / "logs" / "debug" / "latest" / "vae.json").read_text())
    assert entry["run_dir"] == str(run) and "val/loss" in entry["metrics"]
    assert load_vae(ckpt).latent_shape == (4, 7, 7)


def test_train_vae_with_wandb_offline(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WANDB_MODE")  # no API key here: the logger must choose offline by itself
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=vae", "logger=wandb", *TINY, "tags=[test]"])
    with caplog.at_level("INFO", logger="train"):
        metrics = train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected one offline W&B run directory"
    assert f"upload: wandb sync {runs[0]}" in caplog.text
    # wandb >= 0.2x keeps history, summary and config offline only in its binary run log
    # (protobuf records: keys and JSON values are stored as plain strings).
    # The run log is written by wandb's own service process, which can still be flushing it when
    # wandb.finish() returns (1 failure in 2 runs read only its header): wait for it, up to a minute.
    keys = (b"val/loss", b"val/psnr", b"train/loss_step", b"trainer/global_step", b"hidden_channels")
    deadline = time.monotonic() + 60
    while True:
        log = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
        media = any((runs[0] / "files" / "media" / "images").rglob("prior_samples_*.png"))
        if (all(key in log for key in keys) and media) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for key in keys:
        assert key in log, key
    assert any((runs[0] / "files" / "media" / "images").rglob("prior_samples_*.png"))
    assert any((runs[0] / "files" / "media" / "table").rglob("*.table.json"))  # the per-validation image table
    assert "val/loss" in metrics


LDM_TINY = [
    "debug=fast",
    "trainer=cpu",
    "data.images.val_size=64",
    "data.batch_size=64",
    "model.unet.base_channels=16",
    "model.unet.num_res_blocks=1",
    "sampler.num_steps=5",
    "callbacks.images.num_images=4",
    "callbacks.images.every_n_epochs=1",
]


PIXEL_TINY = [
    "debug=fast",
    "trainer=cpu",
    "data.val_size=64",
    "data.batch_size=64",
    "model.unet.base_channels=8",
    "model.unet.num_res_blocks=1",
    "model.unet.channel_mults=[1,2]",
    "sampler.num_steps=3",
    "callbacks.images.num_images=4",
    "callbacks.images.every_n_epochs=1",
    "trainer.max_epochs=2",
]


def test_pixel_space_flow_matching_end_to_end(tmp_path: Path, mnist_dir: Path) -> None:
    """The no-VAE baseline with the flow objective: trains on the images, needs no VAE run, records
    its checkpoint, draws its figures; sample.py then uses the sampler it was trained with."""
    from ldm.cli.sample import run as sample

    cfg = compose_cfg(
        tmp_path,
        mnist_dir,
        ["model=ldm", "objective=flow", "first_stage=pixel", *PIXEL_TINY, "callbacks.sample_quality=null"],
    )
    metrics = train(cfg)
    assert {"train/loss_epoch", "val/loss", "test/loss"} <= set(metrics)
    run = tmp_path / "run"
    for figure in ("samples", "forward_corruption", "denoising_trajectory"):
        assert (run / "images" / f"{figure}_epoch001.png").is_file()
    assert not (tmp_path / ".cache" / "ldm").exists()  # no latent cache in pixel space
    ckpt = find_latest(tmp_path / "logs" / "debug" / "latest", "ldm")
    with pytest.raises(CheckpointError, match="pixel-space model"):
        load_vae(ckpt)
    path = sample(_compose_sample([f"ckpt={ckpt}", "num_samples=5", f"out={tmp_path / 's'}", "device=cpu"]))
    assert np.load(path)["images"].shape == (5, 28, 28)
    assert "FlowAncestralSampler(num_steps=3" in json.loads((tmp_path / "s" / "sampling.json").read_text())["generator"]
    with pytest.raises(ConfigError, match="vae_ckpt= is not used by first_stage=pixel"):
        train(
            compose_cfg(
                tmp_path, mnist_dir, ["model=ldm", "first_stage=pixel", f"vae_ckpt={ckpt}", *PIXEL_TINY], run="y"
            )
        )


def _compose_sample(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=overrides)


def test_train_vae_then_ldm_end_to_end(tmp_path: Path, mnist_dir: Path) -> None:
    train(compose_cfg(tmp_path, mnist_dir, ["model=vae", *TINY], run="vae_run"))
    # model=ldm finds the VAE just trained through the registry, with no vae_ckpt argument.
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", *LDM_TINY, "trainer.max_epochs=2"])
    assert cfg.vae_ckpt == str(find_latest(tmp_path / "logs" / "debug" / "latest", "vae"))
    metrics = train(cfg)
    assert {"train/loss_epoch", "val/loss", "test/loss"} <= set(metrics)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert find_latest(tmp_path / "logs" / "debug" / "latest", "ldm").parent == run / "checkpoints"
    assert load_vae(find_latest(tmp_path / "logs" / "debug" / "latest", "vae")).latent_shape == (4, 7, 7)  # untouched
    for figure in ("samples", "forward_corruption", "denoising_trajectory"):
        assert (run / "images" / f"{figure}_epoch001.png").is_file()
    assert len(list((tmp_path / ".cache" / "ldm").glob("latents-*.pt"))) == 1


def test_debug_runs_never_feed_or_replace_real_runs(tmp_path: Path, mnist_dir: Path) -> None:
    """debug=fast runs live under logs/debug: the real registry and `ckpt_path=last` never see them,
    while a debug LDM uses a debug VAE if there is one, else the real one."""
    from ldm.checkpoints import record_latest

    from conftest import save_vae_checkpoint

    real = save_vae_checkpoint(tmp_path / "real.ckpt")
    record_latest(tmp_path / "logs" / "latest", "vae", real)
    before = (tmp_path / "logs" / "latest" / "vae.json").read_bytes()
    assert compose_cfg(tmp_path, mnist_dir, ["model=ldm", *LDM_TINY]).vae_ckpt == str(real)  # no debug VAE yet
    train(compose_cfg(tmp_path, mnist_dir, ["model=vae", *TINY, "trainer.max_epochs=1"], run="logs/debug/vae/runs/a"))
    assert (tmp_path / "logs" / "latest" / "vae.json").read_bytes() == before
    debug_vae = find_latest(tmp_path / "logs" / "debug" / "latest", "vae")
    assert compose_cfg(tmp_path, mnist_dir, ["model=ldm", *LDM_TINY]).vae_ckpt == str(debug_vae)
    assert compose_cfg(tmp_path, mnist_dir, ["model=ldm", "trainer=cpu"]).vae_ckpt == str(real)
    with pytest.raises(CheckpointError, match="no checkpoints/last.ckpt under"):
        train(compose_cfg(tmp_path, mnist_dir, ["model=vae", "trainer=cpu", "ckpt_path=last"], run="resumed"))


def test_ldm_logs_fid_and_kid_when_a_classifier_exists(tmp_path: Path, mnist_dir: Path) -> None:
    from conftest import save_vae_checkpoint
    from test_classifier import save_classifier_checkpoint

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    classifier = save_classifier_checkpoint(tmp_path / "classifier.ckpt")
    cfg = compose_cfg(
        tmp_path,
        mnist_dir,
        [
            "model=ldm",
            f"vae_ckpt={vae}",
            *LDM_TINY,
            "trainer.max_epochs=2",
            "test=false",
            f"callbacks.sample_quality.classifier_ckpt={classifier}",
            "callbacks.sample_quality.every_n_epochs=2",
            "callbacks.sample_quality.num_samples=16",
            "callbacks.sample_quality.batch_size=8",
            "callbacks.model_checkpoint.monitor=val/fid",
            "callbacks.model_checkpoint.every_n_epochs=2",
        ],
    )
    metrics = train(cfg)
    assert metrics["val/fid"] > 0 and "val/kid" in metrics
    assert "val/fid" in (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert find_latest(tmp_path / "logs" / "debug" / "latest", "ldm").name == "epoch001.ckpt"  # best by val/fid


def test_ldm_without_a_vae_says_how_to_get_one(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", *LDM_TINY])
    with pytest.raises(Exception, match=r"python train.py model=vae.*vae_ckpt=PATH"):
        train(cfg)


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_a_bad_vae_ckpt_is_named_before_anything_starts(tmp_path: Path, mnist_dir: Path, content) -> None:
    """A missing or garbage vae_ckpt= is told as vae_ckpt's problem, before any run folder is used."""
    given = tmp_path / "vae.ckpt"
    if content is not None:
        given.write_bytes(content)
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", f"vae_ckpt={given}", *LDM_TINY])
    with pytest.raises(CheckpointError, match=rf"^vae_ckpt: .*{given}"):
        train(cfg)
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_schedule_multirun_shares_one_cache_and_one_wandb_group(tmp_path: Path, mnist_dir: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import ROOT, save_vae_checkpoint

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    env = {**os.environ, "LDM_DATA_DIR": str(mnist_dir), "WANDB_MODE": "offline"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "model=ldm",
        "schedule=linear,cosine",
        f"vae_ckpt={vae}",
        f"paths.root_dir={tmp_path}",
        "logger=wandb",
        "callbacks.progress_bar=null",
        "test=false",
        *LDM_TINY,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "logs" / "debug" / "ldm" / "multiruns").glob("*/[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    configs = [(j / "config.yaml").read_text() for j in jobs]
    assert "ldm.diffusion.schedules.linear" in configs[0] and "ldm.diffusion.schedules.cosine" in configs[1]
    assert all((j / "checkpoints" / "last.ckpt").is_file() for j in jobs)
    assert len(list((tmp_path / ".cache" / "ldm").glob("latents-*.pt"))) == 1  # encoded once
    assert result.stderr.count("Encoding MNIST") + result.stdout.count("Encoding MNIST") == 1
    group = f"ldm-{jobs[0].parent.name}".encode()
    for job in jobs:
        (run_log,) = job.glob("wandb/offline-run-*/run-*.wandb")
        assert group in run_log.read_bytes()


def _train_subprocess(tmp_path: Path, mnist_dir: Path, *args: str) -> str:
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "LDM_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT / "tests")}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *args,
        f"paths.root_dir={tmp_path}",
        "callbacks.progress_bar=null",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "+callbacks.agree._target_=faults.RanksAgree"]


def test_ddp_two_cpu_processes_every_stage(tmp_path: Path, mnist_dir: Path) -> None:
    """trainer=ddp with 2 gloo processes for the VAE, the classifier and the LDM (with FID during
    training): every stage finishes without a hang, the ranks end with identical weights and EMA,
    the latent cache is encoded once, and each stage records its checkpoint."""
    no_cpu = lambda overrides: [o for o in overrides if o != "trainer=cpu"]  # noqa: E731
    stages = {
        "vae": ["model=vae", *no_cpu(TINY), "lr_scaling=linear"],
        "classifier": [
            "model=classifier",
            *[o for o in no_cpu(TINY) if "model.vae" not in o],
            "model.classifier.width=8",
            "callbacks.images=null",
        ],
        "ldm": [
            "model=ldm",
            *no_cpu(LDM_TINY),
            "callbacks.sample_quality.every_n_epochs=1",
            "callbacks.sample_quality.num_samples=16",
            "callbacks.sample_quality.batch_size=8",
        ],
        "ldm (flow, pixel)": [
            "model=ldm",
            "objective=flow",
            "first_stage=pixel",
            *no_cpu(PIXEL_TINY),
            "callbacks.sample_quality=null",
        ],
    }
    for stage, overrides in stages.items():
        output = _train_subprocess(tmp_path, mnist_dir, *overrides, *DDP)
        if stage == "ldm":
            assert output.count("Encoding MNIST") == 1
        assert "RANKS AGREE" in output, (stage, output[-3000:])
        assert (stage == "vae") == ("lr_scaling=linear: effective batch x2" in output)
        assert find_latest(tmp_path / "logs" / "debug" / "latest", stage.split()[0]).is_file()
    metrics = sorted((tmp_path / "logs" / "debug" / "ldm" / "runs").glob("*/csv/metrics.csv"))[-2].read_text()
    assert "val/fid" in metrics and "val/kid" in metrics


def test_multirun_of_ddp_jobs(tmp_path: Path, mnist_dir: Path) -> None:
    """`-m` sweeps whose jobs each run 2 DDP processes: Lightning relaunches each rank from the
    job's saved config (.hydra/config.yaml) as a single run, so ranks do not start sweeps of their own."""
    output = _train_subprocess(
        tmp_path,
        mnist_dir,
        "-m",
        "model=vae",
        *[o for o in TINY if o != "trainer=cpu"],
        "model.beta=1e-3,1e-2",
        *DDP,
        "callbacks.images=null",
        "trainer.max_epochs=1",
    )
    jobs = sorted((tmp_path / "logs" / "debug" / "vae" / "multiruns").glob("*/[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    assert all((j / "checkpoints" / "last.ckpt").is_file() for j in jobs)
    assert all((j / "train_ddp_process_1.log").is_file() for j in jobs)  # rank 1 ran inside each job
    assert len(list((tmp_path / "logs" / "debug" / "vae" / "multiruns").iterdir())) == 1  # and started no sweep
    assert output.count("RANKS AGREE") == 2


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("LDM_DATA_DIR", "HYDRA_FULL_ERROR")}
    (tmp_path / "afile").write_text("not a folder")
    for script, args, message in (
        ("train.py", ["model=ldm"], "python train.py model=vae"),
        ("train.py", ["model=vae", "model.recon_loss=huber"], "model.recon_loss='huber'"),
        ("train.py", ["model=vae", "data.download=false"], "Put the four official files there"),
        # Errors Hydra meets before the task starts: a config name, a key typo, a run folder that cannot be made.
        ("train.py", ["model=vea"], "Could not find 'model/vea' Available options in 'model': ae classifier ldm vae"),
        ("train.py", ["model=vae", "trainer.max_epoch=1"], "To append to your config use +trainer.max_epoch=1"),
        ("train.py", ["model=vae", f"paths.log_dir={tmp_path / 'afile'}"], "Not a directory"),
        ("sample.py", [f"out={tmp_path / 'afile'}"], "Cannot create or write the output folder"),
        ("train.py", ["data=null"], "data=null: a config group takes one of its option names, not null"),
        ("train.py", ["model=vae", "model.beta=nan"], "model.beta=nan"),
    ):
        result = subprocess.run(
            [sys.executable, str(ROOT / script), *args, f"paths.root_dir={tmp_path}"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 1 and message in output and "Traceback" not in output, output[-2000:]


def test_tensorboard_logger_writes_events(tmp_path: Path, mnist_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("tensorboard")
    overrides = ["model=vae", *TINY, "trainer.max_epochs=1", "logger=tensorboard", "callbacks.images=null"]
    with caplog.at_level("INFO", logger="train"):
        train(compose_cfg(tmp_path, mnist_dir, overrides))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()  # the CSV every run writes
    assert f"tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}" in caplog.text


def test_tensorboard_missing_is_one_line_naming_the_extra(tmp_path: Path, mnist_dir: Path) -> None:
    """A fresh base install has no tensorboard. Where it is installed (dev machines), the run blocks
    its import the way Python treats a missing module (sys.modules entry None -> ImportError)."""
    import importlib.util
    import os
    import subprocess
    import sys

    block = "sys.modules['tensorboard'] = None; " if importlib.util.find_spec("tensorboard") else ""
    script = (
        f"import runpy, sys; {block}sys.argv = ['train.py', *sys.argv[1:]]; "
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "model=vae", "logger=tensorboard", *TINY, f"paths.root_dir={tmp_path}"],
        env={**os.environ, "LDM_DATA_DIR": str(mnist_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "pip install -e '.[tensorboard]'" in output, output[-2000:]
    assert "Traceback" not in output and not list((tmp_path / "logs").rglob("*.ckpt"))  # refused before training


def test_help_explains_and_a_closed_pipe_is_quiet() -> None:
    """--help shows the stages and the common overrides (not the config dump); a reader that left
    (`| head`) gets no traceback and no bogus error: the real EPIPE of a pipe whose read end is closed."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    for script, expected, absent in (
        ("train.py", "The five most used overrides", "min_lr_ratio"),
        ("sample.py", "guidance=W", "model.unet"),
        ("evaluate.py", "classifier_ckpt=P", "model.unet"),
        ("edit.py", "mode=inpaint fill=lower", "model.unet"),
    ):
        text = subprocess.run(
            [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        assert expected in text and absent not in text and len(text.splitlines()) < 45, text
    read, write = os.pipe()
    os.close(read)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120
    )
    os.close(write)
    assert result.returncode == 141 and result.stderr == "", result.stderr[-2000:]


def test_wandb_summaries_keep_the_best_fid_not_the_last(tmp_path: Path) -> None:
    from ldm.loggers import summarize_best, wandb_logger

    logger = wandb_logger(save_dir=tmp_path, offline=True)
    summarize_best([logger])
    for fid in (9.0, 4.0, 6.0):
        logger.experiment.log({"val/fid": fid})
    assert dict(logger.experiment.summary["val/fid"]) == {"min": 4}
    logger.experiment.finish()


def test_resuming_with_other_values_names_them(
    tmp_path: Path, mnist_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ckpt_path= with a config that differs from the run's own (a multirun job resumed without its
    overrides): the keys and both values are named; what a resume is expected to change is not."""
    train(compose_cfg(tmp_path, mnist_dir, ["model=vae", *TINY, "trainer.max_epochs=1", "model.beta=1e-2"]))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with caplog.at_level("WARNING"):
        train(compose_cfg(tmp_path, mnist_dir, ["model=vae", *TINY, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert "Resuming with a config that differs from the run's own" in caplog.text
    assert "model.beta: 0.01 -> 0.001" in caplog.text
    assert "max_epochs" not in caplog.text.split("differs")[1]
