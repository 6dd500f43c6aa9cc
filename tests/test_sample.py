"""sample.py end to end on tiny checkpoints: files, keys, shapes, dtypes, seeds, wrong kinds; bad
values as one-line errors; sampling in parts that survive SIGTERM and a full disk (ldm/sampling.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ldm.checkpoints import CheckpointError, record_latest
from ldm.errors import ConfigError
from ldm.io import WriteError

from conftest import ROOT, make_ldm, save_vae_checkpoint
from mounts import remount, tmpfs


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ldm.cli.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=overrides)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    vae = save_vae_checkpoint(root / "vae.ckpt")
    module = make_ldm(vae)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(root / "ldm.ckpt")
    return {"vae": vae, "ldm": root / "ldm.ckpt", "root": root}


@pytest.mark.parametrize(
    "kind, extra, steps",
    [("ldm", ["sampler=ddim", "steps=5"], "15/15"), ("ldm", ["sampler=dpmpp", "steps=4"], "12/12"), ("vae", [], "3/3")],
)
def test_sample_writes_grid_and_npz(
    checkpoints, tmp_path: Path, kind: str, extra: list[str], steps: str, capsys: pytest.CaptureFixture
) -> None:
    from ldm.cli.sample import run

    out = tmp_path / "out"
    cfg = _compose([f"ckpt={checkpoints[kind]}", "num_samples=7", "batch_size=3", f"out={out}", "device=cpu", *extra])
    path = run(cfg)
    assert steps in capsys.readouterr().out  # the bar counts sampler steps over all 3 batches (one per batch: VAE)
    assert (out / "grid.png").is_file() and path == out / "samples.npz"
    assert json.loads((out / "sampling.json").read_text())["num_samples"] == 7
    data = np.load(path)
    assert set(data.files) == {"images"}
    assert data["images"].shape == (7, 28, 28) and data["images"].dtype == np.uint8
    again = np.load(run(cfg))["images"]
    assert np.array_equal(again, data["images"])  # same seed, same samples


def test_defaults_to_the_latest_ldm_and_draws_a_trajectory(checkpoints, tmp_path: Path) -> None:
    from ldm.cli.sample import run

    record_latest(tmp_path / "registry", "ldm", checkpoints["ldm"])
    cfg = _compose(
        [
            f"registry_dir={tmp_path / 'registry'}",
            "num_samples=2",
            f"out={tmp_path}",
            "device=cpu",
            "trajectory=true",
            "steps=5",
        ]
    )
    run(cfg)
    assert (tmp_path / "trajectory.png").is_file()


def test_wrong_checkpoint_kind_and_bad_values(checkpoints, tmp_path: Path) -> None:
    from ldm.cli.sample import run

    not_a_model = tmp_path / "x.ckpt"
    torch.save({"ldm": {"kind": "classifier"}, "state_dict": {}}, not_a_model)
    with pytest.raises(CheckpointError, match="needs an ldm or vae checkpoint"):
        run(_compose([f"ckpt={not_a_model}", f"out={tmp_path}"]))
    with pytest.raises(ValueError, match="num_samples=0"):
        run(_compose([f"ckpt={checkpoints['vae']}", "num_samples=0", f"out={tmp_path}"]))
    with pytest.raises(ValueError, match="num_steps=500"):
        run(_compose([f"ckpt={checkpoints['ldm']}", "steps=500", f"out={tmp_path}", "device=cpu"]))


def _cli(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "sample.py"), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


@pytest.mark.parametrize(
    "override, key",
    [
        ("num_samples=0", "num_samples"),
        ("seed=abc", "seed"),
        ("seed=-1", "seed"),
        ("batch_size=0", "batch_size"),
        ("labels=[1.7,2.9]", "labels"),  # was truncated to [1, 2]
        ("labels=[]", "labels"),
        ("bf16=1", "bf16"),
        ("trajectory=yes", "trajectory"),
        ("grid_size=-1", "grid_size"),
        ("guidance=-1", "guidance"),
        ("compile=fast", "compile"),
        ("device=gpu0", "device"),
        ("steps=500", "steps"),
        ("steps=2.5", "steps"),
        ("eta=-1", "eta"),
        ("ckpt=missing.ckpt", "ckpt"),
        ("out=[a]", "out"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(checkpoints, tmp_path: Path, override: str, key: str) -> None:
    from ldm.cli.handler import user_error
    from ldm.cli.sample import run

    with pytest.raises(Exception) as error:  # a ConfigError, or Hydra's around a sampler's ValueError
        run(_compose([f"ckpt={checkpoints['ldm']}", f"out={tmp_path}", "device=cpu", override]))
    found = user_error(error.value)  # what `python sample.py` prints, as one line (exit status 1)
    assert found is not None and key in str(found) and "\n" not in str(found), error.value
    assert not (tmp_path / "samples.npz").exists()


def test_no_recorded_ldm_says_ckpt_and_registry_follows_paths(tmp_path: Path) -> None:
    from ldm.cli.sample import run

    cfg = _compose([f"paths.root_dir={tmp_path}", f"out={tmp_path / 'out'}"])
    assert cfg.registry_dir == f"{tmp_path}/logs/latest"  # was ${cwd:}/logs/latest whatever paths said
    with pytest.raises(CheckpointError, match=r"\(ckpt=PATH\)"):
        run(cfg)


def test_one_line_error_and_exit_status_from_the_command_line(checkpoints, tmp_path: Path) -> None:
    """The wiring of `python sample.py`: a user error is one log line naming the key, exit status 1."""
    proc = _cli([f"ckpt={checkpoints['ldm']}", "labels=[1.7,2.9]", f"out={tmp_path / 'out'}"], tmp_path)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "Traceback" not in output and "labels=[1.7, 2.9] must be a list of ints" in output


def test_each_batch_is_on_disk_before_the_next_is_drawn(checkpoints, tmp_path: Path, monkeypatch) -> None:
    """Bounded memory: batches go to <out>/.parts as they are made; labels are made per batch too."""
    from ldm import sampling
    from ldm.cli.sample import run

    on_disk, write = [], sampling.Parts.write
    monkeypatch.setattr(
        sampling.Parts,
        "write",
        lambda self, i, *a: on_disk.append(len(list(self.folder.glob("part-*.npz")))) or write(self, i, *a),
    )
    out = tmp_path / "out"
    run(
        _compose([f"ckpt={checkpoints['ldm']}", "num_samples=7", "batch_size=3", f"out={out}", "device=cpu", "steps=2"])
    )
    assert on_disk == [0, 1, 2] and not (out / ".parts").exists()
    assert sampling.batch_labels(None, 10, 12, 4).tolist() == [2, 3, 4, 5]
    assert (
        sampling.batch_labels([1, 9, 2], 10, 1, 5).tolist() == [9, 2]
        and sampling.batch_labels(None, None, 0, 3) is None
    )


def test_sigterm_mid_run_then_the_same_command_continues(checkpoints, tmp_path: Path, caplog) -> None:
    """A real SIGTERM to a real `python sample.py`: one line, exit 143, the finished batches kept; the
    same command then draws only the rest, and the result equals an uninterrupted run's."""
    from ldm.cli.sample import run

    args = [f"ckpt={checkpoints['ldm']}", "num_samples=24", "batch_size=4", "steps=20", "device=cpu", "grid_size=8"]
    out = tmp_path / "out"
    proc = _cli([*args, f"out={out}"], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".parts" / "part-000001.npz").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output and "Stopped by SIGTERM" in output and "the same command continues" in output
    kept = len(list((out / ".parts").glob("part-*.npz")))
    assert 2 <= kept < 6 and not (out / "samples.npz").exists() and not list((out / ".parts").glob(".*.tmp"))

    with caplog.at_level(logging.INFO, logger="ldm.sampling"):
        resumed = np.load(run(_compose([*args, f"out={out}"])))
    assert f"Continuing: {kept} of 6 batches" in caplog.text
    assert json.loads((out / "sampling.json").read_text())["resumed_batches"] == kept
    reference = np.load(run(_compose([*args, f"out={tmp_path / 'reference'}"])))
    assert np.array_equal(resumed["images"], reference["images"]) and resumed["images"].shape == (24, 28, 28)
    assert (out / "grid.png").stat().st_size > 0 and not (out / ".parts").exists()


@pytest.mark.parametrize("size, fails_at", [("16k", "part-000001.npz"), ("128k", "grid.png")])
def test_a_full_disk_keeps_the_samples_and_the_same_command_continues(
    checkpoints, tmp_path: Path, caplog, size: str, fails_at: str
) -> None:
    """A real full disk (a small tmpfs): 16k fills up during the batches, 128k at grid.png, after samples.npz.
    Neither leaves a 0-byte file; once space is freed the same command finishes with the same samples."""
    from ldm.cli.sample import run

    args = [f"ckpt={checkpoints['vae']}", "num_samples=40", "batch_size=4", "device=cpu"]
    reference = np.load(run(_compose([*args, f"out={tmp_path / 'reference'}"])))["images"]
    with tmpfs(tmp_path / "disk", size) as disk:
        cfg = _compose([*args, f"out={disk / 'out'}"])
        with pytest.raises(WriteError, match=f"{fails_at}: the disk holding .* is full") as error:
            run(cfg)
        assert "\n" not in str(error.value) and "the same command continues" in str(error.value)
        assert not (disk / "out" / "grid.png").exists()  # old code: a 0-byte grid.png, and no samples
        kept = len(list((disk / "out" / ".parts").glob("part-*.npz")))
        assert kept >= 1
        if fails_at == "grid.png":  # the valuable part was written first
            assert np.array_equal(np.load(disk / "out" / "samples.npz")["images"], reference)
        remount(disk, "size=1m")
        with caplog.at_level(logging.INFO, logger="ldm.sampling"):
            again = np.load(run(cfg))["images"]
        assert f"Continuing: {kept} of 10 batches" in caplog.text
        assert np.array_equal(again, reference) and (disk / "out" / "grid.png").stat().st_size > 0


def test_sampler_options_on_a_vae_checkpoint_are_refused(checkpoints, tmp_path: Path) -> None:
    from ldm.cli.sample import run

    for extra in (["steps=3"], ["sampler=ddim"], ["eta=0"]):
        with pytest.raises(ConfigError, match="is a VAE: it samples its prior in one decoder pass"):
            run(
                _compose([f"ckpt={checkpoints['vae']}", "num_samples=2", f"out={tmp_path / 'o'}", "device=cpu", *extra])
            )


def test_a_second_sampler_on_the_same_out_folder_is_refused(checkpoints, tmp_path: Path) -> None:
    """Two sample.py on one out= folder (before: one crashed with a traceback, parts were left): the
    second is refused while the first (here a real second process holding its lock) works."""
    from test_real_faults import hold_lock

    from ldm.cli.sample import run

    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out / ".sampling.lock")
    try:
        with pytest.raises(ConfigError, match="Another sample.py is writing to out="):
            run(_compose([f"ckpt={checkpoints['vae']}", "num_samples=2", f"out={out}", "device=cpu"]))
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "samples.npz").exists() and not (out / ".parts").exists()


@pytest.mark.parametrize(
    "damage, message", [("shape", "do not fit the model it records"), ("nan", "holds NaN/Inf weights")]
)
def test_damaged_or_nan_weights_are_one_line_not_black_samples(
    checkpoints, tmp_path: Path, damage: str, message: str
) -> None:
    from ldm.cli.sample import run

    checkpoint = torch.load(checkpoints["ldm"], weights_only=True)
    state = checkpoint["state_dict"]
    if damage == "shape":
        state["unet.input_conv.weight"] = torch.zeros(1)
    else:
        for key in state:
            if key.startswith(("unet.", "ema.")) and state[key].is_floating_point():
                state[key] = torch.full_like(state[key], float("nan"))
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=message):
        run(_compose([f"ckpt={tmp_path / 'bad.ckpt'}", "num_samples=2", f"out={tmp_path / 'out'}", "device=cpu"]))
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_ckpt_may_be_a_run_or_registry_folder(checkpoints, tmp_path: Path) -> None:
    import shutil

    from ldm.cli.sample import run

    run_dir = tmp_path / "logs" / "ldm" / "runs" / "t0"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoints["ldm"], run_dir / "checkpoints" / "last.ckpt")
    record_latest(tmp_path / "registry", "ldm", run_dir / "checkpoints" / "last.ckpt")
    for folder in (run_dir, tmp_path / "registry"):
        out = tmp_path / f"out_{folder.name}"
        run(_compose([f"ckpt={folder}", "num_samples=2", f"out={out}", "device=cpu", "steps=2"]))
        assert json.loads((out / "sampling.json").read_text())["ckpt"] == str(run_dir / "checkpoints" / "last.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a checkpoint, a run folder"):
        run(_compose([f"ckpt={tmp_path / 'empty'}", "num_samples=2", f"out={tmp_path}", "device=cpu"]))
