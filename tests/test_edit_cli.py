"""`python edit.py` (ldm/cli/edit.py) on small models and fake digits: every mode writes its figure,
its uint8 images and its settings; conditional models use the digits' labels; bad values are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from ldm.diffusion.flow import EulerSampler, FlowMatching
from ldm.diffusion.guidance import ClassConditioning
from ldm.errors import ConfigError
from ldm.models.unet import UNet

from conftest import ROOT, make_ldm, save_vae_checkpoint


def _save(module, path: Path) -> Path:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edit")
    vae = save_vae_checkpoint(root / "vae.ckpt")
    unet = UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=10)
    return {
        "uncond": _save(make_ldm(vae), root / "uncond.ckpt"),
        "cond": _save(make_ldm(vae, unet=unet, conditioning=ClassConditioning()), root / "cond.ckpt"),
        "flow": _save(make_ldm(vae, objective=FlowMatching(), sampler=EulerSampler(3)), root / "flow.ckpt"),
    }


def _compose(overrides: list[str], data_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ldm.cli.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("edit", overrides=[f"paths.data_dir={data_dir}", "data.val_size=32", "device=cpu", *overrides])


@pytest.mark.parametrize(
    "mode, extra, shape",
    [
        ("invert", ["steps=4"], (4, 3)),  # digit, VAE reconstruction, round trip
        ("interpolate", ["steps=4", "frames=5"], (2, 5)),  # two pairs, five frames each
        ("sdedit", ["strength=0.3"], (4, 2)),
        ("inpaint", ["fill=left"], (4, 3)),  # digit, the part kept, the completion
    ],
)
def test_each_mode_writes_figure_images_and_settings(ckpts, mnist_dir: Path, tmp_path: Path, mode, extra, shape):
    from ldm.cli.edit import run

    out = tmp_path / "out"
    cfg = _compose([f"mode={mode}", f"ckpt={ckpts['uncond']}", "indices=[0,1,2,3]", f"out={out}", *extra], mnist_dir)
    assert run(cfg) == out / f"{mode}.png" and (out / f"{mode}.png").stat().st_size > 0
    with np.load(out / f"{mode}.npz") as data:
        assert data["images"].shape == (*shape, 28, 28) and data["images"].dtype == np.uint8
        assert data["indices"].tolist() == [0, 1, 2, 3]
    settings = json.loads((out / f"{mode}.json").read_text())
    assert settings["mode"] == mode and settings["ckpt"] == str(ckpts["uncond"])
    if mode == "invert":
        assert len(settings["round_trip_error"]) == 4
    if mode == "inpaint":  # the middle column shows the kept right half, the left half grey
        with np.load(out / "inpaint.npz") as data:
            assert (data["images"][:, 1, :, :14] == 128).all()


def test_conditional_model_edits_each_digit_under_its_label(ckpts, mnist_dir: Path, tmp_path: Path) -> None:
    from ldm.cli.edit import run

    cfg = _compose(
        [f"ckpt={ckpts['cond']}", "mode=sdedit", "indices=[5,6]", "guidance=2", f"out={tmp_path}"], mnist_dir
    )
    run(cfg)
    assert json.loads((tmp_path / "sdedit.json").read_text())["guidance"] == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["indices=[0,9999]"], "indices=[9999]: the test split has 64 digits"),
        (["mode=interpolate", "indices=[0,1,2]"], "interpolate: pairs"),
        (["strength=0"], "strength=0"),
        (["frames=1"], "frames=1 must be >= 2"),
    ],
)
def test_bad_values_are_config_errors(ckpts, mnist_dir: Path, tmp_path: Path, overrides, message) -> None:
    from ldm.cli.edit import run

    cfg = _compose([f"ckpt={ckpts['uncond']}", "mode=sdedit", f"out={tmp_path}", *overrides], mnist_dir)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run(cfg)
    assert not list(tmp_path.glob("sdedit.*"))  # nothing written


def test_cli_refuses_a_flow_model_and_a_bad_mode_in_one_line(ckpts, mnist_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    common = [f"paths.data_dir={mnist_dir}", "data.val_size=32", f"out={tmp_path / 'out'}", "device=cpu"]
    for args, message in (
        ([f"ckpt={ckpts['flow']}"], "edits need a model trained with objective=diffusion"),
        ([f"ckpt={ckpts['uncond']}", "mode=blur"], "mode='blur' must be one of"),
    ):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "edit.py"), *args, *common],
            cwd=tmp_path,
            env=env,
            text=True,
            capture_output=True,
            timeout=180,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in output and message in output, output


def test_experiments_edits_script_writes_its_figures_and_numbers(ckpts, mnist_dir: Path, tmp_path: Path) -> None:
    """experiments/edits.py (the report's command) on tiny data: every figure and the round-trip table."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import edits as script

    report = script.main(
        ["--ckpt", str(ckpts["uncond"]), "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--num", "8"]
        + ["--steps", "2", "4"]
    )
    assert set(report) >= {"2", "4", "vae_reconstruction_psnr_db"} and report["4"]["latent_rel_error_mean"] >= 0
    assert json.loads((tmp_path / "roundtrip.json").read_text())["num"] == 8
    for name in ("inversion", "interpolation", "sdedit", "inpaint"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_a_vae_checkpoint_is_refused_with_the_fix(ckpts, mnist_dir: Path, tmp_path: Path) -> None:
    from ldm.cli.edit import run

    cfg = _compose([f"ckpt={ckpts['uncond'].parent / 'vae.ckpt'}", f"out={tmp_path}"], mnist_dir)
    with pytest.raises(ConfigError, match=r"is a vae checkpoint: pass an LDM's \(ckpt=logs/ldm/runs/<time>\)"):
        run(cfg)
