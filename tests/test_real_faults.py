"""Real faults (issue 13): real signals to real processes, a filesystem that really fills up,
processes that really race, resumes that really go wrong. Nothing here patches an exception:
each fault is produced the way it happens to a user, and what was written before it must
survive intact. (Small filesystems need `mount`, i.e. root; those tests skip cleanly elsewhere.)
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldm.checkpoints import CheckpointError, find_latest, load_vae, record_latest
from ldm.cli.handler import user_error
from ldm.cli.train import train
from ldm.data.latents import LatentDataModule
from ldm.data.mnist import MNISTDataModule
from ldm.io import WriteError

from conftest import ROOT, compose_cfg, save_vae_checkpoint
from mounts import remount, tmpfs

VAE_TINY = [
    "model=vae",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "data.val_size=64",
    "data.batch_size=32",
    "model.vae.hidden_channels=[8,8,8]",
    "callbacks.images=null",
    "callbacks.progress_bar=null",
    "test=false",
]
# 256 train images / 32 = 8 steps per epoch


def _env(mnist_dir: Path) -> dict[str, str]:
    return {**os.environ, "LDM_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "offline"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- kills and signals -----------------------------------------------------------------------

_WRITER = """
import sys, torch
from ldm.cli import handler
from ldm.resume import AtomicCheckpointIO
handler.install_signal_handlers()
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"step": 1}, path)
print("saved", flush=True)
handler.run_task(lambda _: io.save_checkpoint({"step": 2, "w": torch.zeros(64_000_000)}, path), None)  # 256 MB
print("done", flush=True)
"""


def _signal_mid_write(tmp_path: Path, signum: int) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saved"
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".last.ckpt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signum)  # the 256 MB write has started: its temp file exists
    process.wait(timeout=120)
    if "done" in process.stdout.read():
        pytest.skip("the write finished before the signal arrived")
    return process, path


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    process, path = _signal_mid_write(tmp_path, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=True) == {"step": 1}  # the rename never happened
    # SIGKILL allows no cleanup: the hidden temp file stays, and nothing ever reads it as a checkpoint.
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]


def test_sigterm_while_writing_removes_the_partial_file(tmp_path: Path) -> None:
    process, path = _signal_mid_write(tmp_path, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temp file was removed


_SIGNALLED_WRITER = """
import os, signal, sys, time
from pathlib import Path
from ldm.io import atomic_write_json
class Stop(BaseException): pass  # what our SIGTERM/SIGINT handlers raise: not an Exception
armed = False
def stop(*_):
    global armed
    if armed:  # only inside the try below
        armed = False
        raise Stop
signal.signal(signal.SIGUSR1, stop)
folder, writes, signalled = Path(sys.argv[1]), 0, 0
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        armed = True
        atomic_write_json(folder / "state.json", {"writes": writes})
        armed = False
        writes += 1
    except Stop:
        signalled += 1
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the parent may still be signalling
print(writes, signalled, flush=True)
"""


def test_a_signal_at_any_moment_of_a_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """Thousands of signals land at random points of small atomic writes (including the instant
    between creating the temp file and the code that cleans it up): none leaves a temp file."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SIGNALLED_WRITER, str(tmp_path), "4"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    while process.poll() is None:
        process.send_signal(signal.SIGUSR1)
        # a write takes ~0.3 ms here (more where fsync is slow): most are cut, the long pauses let some finish
        time.sleep(0.02 if random.random() < 0.1 else random.uniform(0, 0.002))
    writes, signalled = map(int, process.stdout.read().split())
    assert process.returncode == 0 and signalled > 200 and writes > 10, (writes, signalled)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_sigint_to_a_training_process_saves_the_step_and_exits_130(tmp_path: Path, mnist_dir: Path) -> None:
    """Ctrl-C from outside, as a user at a terminal would: the step finishes, last.ckpt holds it,
    one line says how to resume, exit status 130; the resumed run finishes."""
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        *VAE_TINY,
        "trainer.max_epochs=1000",
        f"paths.root_dir={tmp_path}",
        "callbacks.step_checkpoint.every_n_train_steps=4",
    ]
    process = subprocess.Popen(args, env=_env(mnist_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("logs/vae/runs/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    (last,) = tmp_path.glob("logs/vae/runs/*/checkpoints/last.ckpt")
    step = torch.load(last, weights_only=True)["global_step"]
    assert step >= 4 and f"Stopped by SIGINT at step {step}; {last} holds that step" in output, output[-2000:]
    resumed = subprocess.run(
        [*args[:-2], "trainer.max_epochs=2", "ckpt_path=last", f"paths.root_dir={tmp_path}"],
        env=_env(mnist_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if step < 16:
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert torch.load(last, weights_only=True)["global_step"] == 16


# --- a full disk -------------------------------------------------------------------------------


def _latents(mnist_dir: Path, vae: Path, cache_dir: Path) -> LatentDataModule:
    dm = LatentDataModule(MNISTDataModule(data_dir=mnist_dir, val_size=64), vae, cache_dir)
    dm.prepare_data()
    return dm


def test_full_disk_while_writing_the_cache_keeps_the_old_cache(tmp_path: Path, mnist_dir: Path, small_fs) -> None:
    cache = small_fs("1m") / "cache"  # holds one cache of the fake data (~0.6 MB), not two
    _latents(mnist_dir, save_vae_checkpoint(tmp_path / "a.ckpt", seed=0), cache)
    (old,) = cache.glob("latents-*.pt")
    old_bytes = old.read_bytes()
    with pytest.raises(WriteError) as raised:
        _latents(mnist_dir, save_vae_checkpoint(tmp_path / "b.ckpt", seed=1), cache)  # needs a second cache
    message = str(user_error(raised.value))
    assert "is full" in message and "nothing was written" in message and "paths.cache_dir" in message, message
    assert "\n" not in message
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [old.name]
    assert old.read_bytes() == old_bytes


def _train_until_the_disk_fills(tmp_path: Path, mnist_dir: Path, disk: Path, overrides: list[str], step: int) -> str:
    """Train into `disk`, filled for real after `step` steps; the one-line message of the WriteError."""
    fill = [
        "+callbacks.fill._target_=faults.FillDiskAt",
        f"+callbacks.fill.step={step}",
        f"+callbacks.fill.folder={disk}",
    ]
    cfg = compose_cfg(tmp_path, mnist_dir, [*overrides, *fill])
    cfg.paths.output_dir = str(disk / "run")
    with pytest.raises(WriteError) as raised:
        train(cfg)
    return str(user_error(raised.value))


def test_full_disk_when_the_image_grid_is_written_is_one_line_and_leaves_no_partial_png(
    tmp_path: Path, mnist_dir: Path, small_fs
) -> None:
    """The grids of the first validation are the first write after the disk fills (no step checkpoints)."""
    disk = small_fs("4m")
    overrides = [*[o for o in VAE_TINY if o != "callbacks.images=null"], "callbacks.images.every_n_epochs=1"]
    message = _train_until_the_disk_fills(tmp_path, mnist_dir, disk, overrides, step=2)
    assert "is full" in message and ".png" in message and "\n" not in message, message
    assert not list(disk.rglob("*.tmp")) and not list(disk.rglob("*.png"))


def test_full_disk_during_training_is_one_line_and_loses_only_the_steps_since_the_checkpoint(
    tmp_path: Path, mnist_dir: Path, small_fs
) -> None:
    disk = small_fs("4m")
    overrides = [*VAE_TINY, "callbacks.step_checkpoint.every_n_train_steps=4"]
    message = _train_until_the_disk_fills(tmp_path, mnist_dir, disk, overrides, step=5)
    assert "is full" in message and "\n" not in message, message
    last = disk / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the step-8 save failed; step 4 is intact
    assert not list(disk.rglob("*.tmp"))
    (disk / "ballast").unlink()  # space freed: resume
    resumed = compose_cfg(tmp_path, mnist_dir, [*overrides, f"ckpt_path={last}"])
    train(resumed)
    assert torch.load(last, weights_only=True)["global_step"] == 16


# --- races -------------------------------------------------------------------------------------


def test_two_runs_started_together_get_their_own_folders(tmp_path: Path, mnist_dir: Path) -> None:
    """Both ask for the same folder name (as two runs started in the same second do): each claims
    its own, and each folder holds that run's config and metrics only."""
    base = tmp_path / "logs" / "vae" / "runs" / "same-second"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *VAE_TINY,
                "trainer.max_epochs=1",
                f"seed={seed}",
                f"paths.root_dir={tmp_path}",
                f"hydra.run.dir=${{unique_dir:{base}}}",
            ],
            env=_env(mnist_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    folders = sorted(base.parent.iterdir())
    assert [f.name for f in folders] == ["same-second", "same-second_1"]
    seeds = sorted(
        int(next(line for line in (f / "config.yaml").read_text().splitlines() if line.startswith("seed:"))[5:])
        for f in folders
    )
    assert seeds == [1, 2]
    for folder in folders:
        assert len(_rows(folder / "csv" / "metrics.csv")) >= 2 and (folder / "checkpoints" / "last.ckpt").is_file()
        assert str(folder) in (folder / "train.log").read_text()


def test_a_failing_multirun_job_does_not_stop_the_sweep(tmp_path: Path, mnist_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *VAE_TINY,
            "trainer.max_epochs=1",
            "data.batch_size=0,32",
            f"paths.root_dir={tmp_path}",
        ],
        env=_env(mnist_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "1 multirun job(s) failed" in output and "#0 (" in output and "data.batch_size=0 must be >= 1" in output
    assert "Traceback" not in output
    (sweep,) = (tmp_path / "logs" / "vae" / "multiruns").iterdir()
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()  # job 1 ran
    assert not (sweep / "0" / "checkpoints").exists()


# --- resumes that go wrong ----------------------------------------------------------------------


def test_resume_keeps_the_metrics_history_even_when_the_resume_fails(tmp_path: Path, mnist_dir: Path) -> None:
    tiny = [*VAE_TINY, "trainer.log_every_n_steps=1"]
    train(compose_cfg(tmp_path, mnist_dir, [*tiny, "trainer.max_epochs=1"]))
    run = tmp_path / "run"
    before = _rows(run / "csv" / "metrics.csv")
    hparams = (run / "csv" / "hparams.yaml").read_bytes()
    assert len(before) >= 8
    last = run / "checkpoints" / "last.ckpt"

    # A resume that fails (the model changed size): history and records untouched.
    with pytest.raises(Exception) as raised:
        train(
            compose_cfg(
                tmp_path, mnist_dir, [*tiny, f"ckpt_path={last}", "model.vae.hidden_channels=[16,16,16]"], run="x"
            )
        )
    assert "do not fit this model" in str(user_error(raised.value))
    assert _rows(run / "csv" / "metrics.csv") == before

    train(compose_cfg(tmp_path, mnist_dir, [*tiny, f"ckpt_path={last}"], run="x"))  # resumes in `run`
    after = _rows(run / "csv" / "metrics.csv")
    assert [{k: r.get(k, "") for k in before[0]} for r in after[: len(before)]] == before
    assert max(int(r["step"]) for r in after) > max(int(r["step"]) for r in before)
    assert (run / "csv" / "hparams.yaml").read_bytes() == hparams and (run / "csv" / "hparams-resumed-1.yaml").is_file()
    assert not (tmp_path / "x").exists()


def test_a_resume_target_of_another_stage_is_refused_before_anything_is_touched(
    tmp_path: Path, mnist_dir: Path
) -> None:
    train(compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, "trainer.max_epochs=1"], run="vae_run"))
    vae_run = tmp_path / "vae_run"
    before = _snapshot(vae_run)
    classifier = ["model=classifier", "trainer=cpu", "data.val_size=64", "data.batch_size=32", "callbacks.images=null"]
    with pytest.raises(CheckpointError, match=r"is a vae checkpoint, but this is a classifier run.*model=vae"):
        train(compose_cfg(tmp_path, mnist_dir, [*classifier, f"ckpt_path={vae_run / 'checkpoints' / 'last.ckpt'}"]))
    assert _snapshot(vae_run) == before


def test_ldm_resume_keeps_the_vae_it_was_trained_on(tmp_path: Path, mnist_dir: Path, caplog) -> None:
    """VAE A -> LDM -> VAE B recorded -> resume the LDM: it must go on with A (its weights, its
    latents, its normaliser), and the checkpoint's hash must describe the VAE it holds."""
    from ldm.systems.latent_diffusion import LatentDiffusionModule

    registry = tmp_path / "logs" / "latest"
    a, b = save_vae_checkpoint(tmp_path / "a.ckpt", seed=0), save_vae_checkpoint(tmp_path / "b.ckpt", seed=1)
    record_latest(registry, "vae", a)
    ldm = [
        "model=ldm",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "data.batch_size=64",
        "data.images.val_size=64",
        "model.unet.base_channels=8",
        "model.unet.channel_mults=[1]",
        "model.unet.num_res_blocks=1",
        "model.unet.attention=false",
        "sampler.num_steps=2",
        "callbacks.images=null",
        "callbacks.progress_bar=null",
        "callbacks.sample_quality=null",
        "test=false",
    ]
    train(compose_cfg(tmp_path, mnist_dir, ldm))
    record_latest(registry, "vae", b)  # a newer VAE: what model=ldm would pick for a new run
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train(compose_cfg(tmp_path, mnist_dir, [*ldm, "trainer.max_epochs=2", f"ckpt_path={last}"], run="x"))
    assert "is not the VAE this LDM was trained on" in caplog.text
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 8  # 256 latents / 64, two epochs
    vae_a = load_vae(a).state_dict()
    assert all(
        torch.equal(checkpoint["state_dict"][f"first_stage.{k}"], v)
        for k, v in vae_a.items()
        if not k.startswith("normalizer.")
    )
    model = LatentDiffusionModule.from_checkpoint(last)
    assert checkpoint["ldm"]["first_stage_sha256"] == model.first_stage_sha256
    assert len(list((tmp_path / ".cache" / "ldm").glob("latents-*.pt"))) == 1  # A's latents, never B's
    # Handing the module another VAE than its checkpoint's is refused, not mixed.
    other = LatentDiffusionModule(**{**checkpoint["hyper_parameters"], "first_stage": b})
    with pytest.raises(CheckpointError, match="trained on the latents of another VAE"):
        other.on_load_checkpoint(checkpoint)


def test_train_false_tests_the_given_checkpoint(tmp_path: Path, mnist_dir: Path) -> None:
    """`train=false ckpt_path=X` used to test freshly initialised weights instead of X."""
    first = train(compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, "trainer.max_epochs=1", "test=true"]))
    best = find_latest(tmp_path / "logs" / "latest", "vae")
    registry = (tmp_path / "logs" / "latest" / "vae.json").read_bytes()
    tested = train(
        compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, "train=false", "test=true", f"ckpt_path={best}"], run="test_only")
    )
    assert tested["test/loss"] == pytest.approx(first["test/loss"], rel=1e-6)
    assert (tmp_path / "logs" / "latest" / "vae.json").read_bytes() == registry  # a test is not a new best
    assert not (tmp_path / "test_only" / "checkpoints").exists()


def test_a_run_refused_in_another_runs_folder_changes_none_of_its_files(tmp_path: Path, mnist_dir: Path) -> None:
    """`hydra.run.dir=<a finished run>` without ckpt_path: one line, exit 1, and every file of that
    run is still there as it was (Hydra's records of each launch go to .hydra/<time>/, its log is appended to)."""
    run = tmp_path / "logs" / "vae" / "runs" / "finished"  # what a finished run leaves
    for name, content in {
        "checkpoints/last.ckpt": b"its weights",
        "config.yaml": b"seed: 0\n",
        "train.log": b"[...]\n",
        "csv/metrics.csv": b"epoch,step\n0,7\n",
        "csv/hparams.yaml": b"seed: 0\n",
        ".hydra/2026-01-01_00-00-00/config.yaml": b"seed: 0\n",
    }.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(content)
    before = _snapshot(run)
    second = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *VAE_TINY, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}"],
        env=_env(mnist_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 1 and "already holds another run's checkpoints" in output and "Traceback" not in output
    after = _snapshot(run)
    for name, content in before.items():
        assert after[name] == content or (name == "train.log" and after[name].startswith(content)), name
    assert len(list((run / ".hydra").iterdir())) == 2


HOLD_LOCK = "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)"


def hold_lock(path: Path) -> subprocess.Popen:
    """A second real process holding `path`'s lock, as a concurrent train.py / sample.py does while it works."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_same_run_resumed_twice_at_once_is_refused(tmp_path: Path, mnist_dir: Path) -> None:
    """While one process trains in a run folder (it holds the folder's OS lock), a second `ckpt_path=`
    resume of that run is refused before it writes anything (before: both trained, interleaving
    metrics.csv and overwriting each other's checkpoints). The holder is a real second process."""
    train(compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, "trainer.max_epochs=1"]))
    run = tmp_path / "run"
    before = _snapshot(run)
    holder = hold_lock(run / ".run.lock")
    try:
        with pytest.raises(Exception) as raised:
            train(
                compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run="x")
            )
        assert "is in use by another training process" in str(user_error(raised.value))
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    train(compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run="x"))


def test_an_unwritable_path_is_not_called_a_full_disk(tmp_path: Path) -> None:
    """A real read-only place (/proc): the message says what failed, not that the disk is full."""
    from ldm.io import atomic_write

    with pytest.raises(WriteError) as raised:
        atomic_write(Path("/proc/ldm-test/metrics.json"), lambda tmp: tmp.write_text("{}"))
    assert "full" not in str(raised.value) and "/proc/ldm-test/metrics.json" in str(raised.value)


def test_an_existing_read_only_output_folder_is_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    """out= naming a real read-only folder: Hydra fails to open its log file there; one line says so."""
    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    with tmpfs(tmp_path / "ro", "1m") as folder:
        remount(folder, "ro")
        done = subprocess.run(
            [sys.executable, str(ROOT / "sample.py"), f"ckpt={vae}", "num_samples=2", f"out={folder}", "device=cpu"],
            env=_env(mnist_dir),
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "Cannot create or write the output folder" in output and "Read-only file system" in output, output
