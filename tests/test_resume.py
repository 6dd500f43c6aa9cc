"""Exact resume after `kill -9` and SIGTERM (issues 7, 13): a run stopped mid-epoch and resumed
with ckpt_path=last ends with the same weights, EMA and optimizer state as a run that was never
interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import ROOT, save_vae_checkpoint

RUN = [
    "model=ldm",
    "conditioning=class",
    "trainer=cpu",
    "trainer.deterministic=true",
    "trainer.max_epochs=2",
    "+trainer.limit_val_batches=1",
    "data.batch_size=32",
    "data.images.val_size=64",
    "model.unet.base_channels=8",
    "model.unet.channel_mults=[1]",
    "model.unet.num_res_blocks=1",
    "model.unet.attention=false",
    "model.scheduler.warmup_steps=4",
    "sampler.num_steps=2",
    "callbacks.images=null",
    "callbacks.progress_bar=null",
    "callbacks.sample_quality=null",
    "callbacks.step_checkpoint.every_n_train_steps=3",
    "test=false",
]  # 256 train images / 32 = 8 steps per epoch; checkpoints at steps 3, 6, 8 (epoch end), 9, 12, ...


# The same run for flow matching in pixel space (no VAE): 8x28x28 digits make the same 8 steps per epoch.
PIXEL_FLOW = [
    "objective=flow",
    "first_stage=pixel",
    "data.val_size=64",
    *[o for o in RUN if not o.startswith("data.images.")],
]


def _train(
    root: Path, vae: Path | None, mnist_dir: Path, *extra: str, run: list[str] = RUN
) -> subprocess.CompletedProcess:
    env = {**os.environ, "LDM_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT / "tests")}
    first_stage = [f"vae_ckpt={vae}"] if vae is not None else []
    cmd = [sys.executable, str(ROOT / "train.py"), *run, *first_stage, f"paths.root_dir={root}", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # the denoiser, its EMA, the normaliser: bit-for-bit on CPU
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-6, msg=key)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=0, atol=1e-9)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]


def _last(root: Path) -> Path:
    (path,) = root.glob("logs/ldm/runs/*/checkpoints/last.ckpt")
    return path


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, mnist_dir: Path) -> None:
    """kill -9 at step 11 loses steps 10-11 (the newest checkpoint is step 9); a SIGTERM at step 11
    (a scheduler's preemption) loses nothing: last.ckpt is saved at step 11 and the exit status
    is 143. Either way the resumed run ends bit-for-bit where an uninterrupted one does."""
    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    straight = _train(tmp_path / "straight", vae, mnist_dir)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = torch.load(_last(tmp_path / "straight"), weights_only=True)
    assert a["global_step"] == 16

    for fault, status, saved_step in (("faults.KillAtStep", -9, 9), ("faults.SignalAtStep", 128 + 15, 11)):
        root = tmp_path / fault
        killed = _train(root, vae, mnist_dir, f"+callbacks.kill._target_={fault}", "+callbacks.kill.step=11")
        assert killed.returncode == status, killed.stderr[-3000:]
        at_kill = torch.load(_last(root), weights_only=True)
        assert at_kill["global_step"] == saved_step
        run_id = at_kill.get("wandb_run_id")

        resumed = _train(root, vae, mnist_dir, "ckpt_path=last")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from a checkpoint that ended before the epoch ended" not in resumed.stderr
        b = torch.load(_last(root), weights_only=True)
        _assert_same_state(a, b)
        assert b.get("wandb_run_id") == run_id  # None with the CSV logger; the W&B test checks the id


def test_flow_matching_in_pixel_space_resumes_exactly(tmp_path: Path, mnist_dir: Path) -> None:
    """The continuous-time objective draws t and eps from the same per-step seeds: a SIGTERM at step 11
    and a resume end exactly where the uninterrupted run does."""
    straight = _train(tmp_path / "straight", None, mnist_dir, run=PIXEL_FLOW)
    assert straight.returncode == 0, straight.stderr[-3000:]
    root = tmp_path / "stopped"
    stopped = _train(
        root, None, mnist_dir, "+callbacks.kill._target_=faults.SignalAtStep", "+callbacks.kill.step=11", run=PIXEL_FLOW
    )
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]
    resumed = _train(root, None, mnist_dir, "ckpt_path=last", run=PIXEL_FLOW)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (torch.load(_last(r), weights_only=True) for r in (tmp_path / "straight", root))
    assert a["global_step"] == 16 and any(k.startswith("first_stage.normalizer") for k in a["state_dict"])
    _assert_same_state(a, b)


def test_last_checkpoint_is_the_final_state_even_when_the_best_is_older(tmp_path: Path, mnist_dir: Path) -> None:
    """Lightning's own save_last skips epochs without a new best; ours must not (monitor=step, mode=min:
    only epoch 0 is ever 'best')."""
    from ldm.cli.train import train

    from conftest import compose_cfg

    cfg = compose_cfg(
        tmp_path,
        mnist_dir,
        [
            "model=vae",
            "trainer=cpu",
            "trainer.max_epochs=3",
            "data.val_size=64",
            "data.batch_size=32",
            "model.vae.hidden_channels=[8,8,8]",
            "callbacks.images=null",
            "callbacks.progress_bar=null",
            "test=false",
            "callbacks.model_checkpoint.monitor=step",
            "callbacks.model_checkpoint.mode=min",
        ],
    )
    train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["epoch000.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 24)  # 256 train images / 32 = 8 steps per epoch
