"""sample.py end to end on tiny checkpoints: files, keys, shapes, dtypes, seeds, wrong kinds."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import ROOT, save_vae_checkpoint
from ldm.checkpoints import CheckpointError, record_latest
from ldm.diffusion import DDIMSampler, EpsilonPrediction, NoiseSchedule, linear
from ldm.models.unet import UNet
from ldm.systems.latent_diffusion import LatentDiffusionModule


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import train  # noqa: F401  (registers resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=overrides)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    vae = save_vae_checkpoint(root / "vae.ckpt")
    module = LatentDiffusionModule(
        unet=UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1),
        schedule=NoiseSchedule(linear(100)), parameterization=EpsilonPrediction(),
        sampler=DDIMSampler(num_steps=10), vae=vae, optimizer=functools.partial(torch.optim.Adam),
    )
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(root / "ldm.ckpt")
    return {"vae": vae, "ldm": root / "ldm.ckpt", "root": root}


@pytest.mark.parametrize("kind, extra", [("ldm", ["sampler=ddim", "steps=5"]), ("ldm", ["sampler=dpmpp", "steps=4"]), ("vae", [])])
def test_sample_writes_grid_and_npz(checkpoints, tmp_path: Path, kind: str, extra: list[str]) -> None:
    from sample import run

    out = tmp_path / "out"
    cfg = _compose([f"ckpt={checkpoints[kind]}", "num_samples=7", "batch_size=3", f"out={out}", "device=cpu", *extra])
    path = run(cfg)
    assert (out / "grid.png").is_file() and path == out / "samples.npz"
    assert json.loads((out / "sampling.json").read_text())["num_samples"] == 7
    data = np.load(path)
    assert set(data.files) == {"images"}
    assert data["images"].shape == (7, 28, 28) and data["images"].dtype == np.uint8
    again = np.load(run(cfg))["images"]
    assert np.array_equal(again, data["images"])  # same seed, same samples


def test_defaults_to_the_latest_ldm_and_draws_a_trajectory(checkpoints, tmp_path: Path) -> None:
    from sample import run

    record_latest(tmp_path / "registry", "ldm", checkpoints["ldm"])
    cfg = _compose([f"registry_dir={tmp_path / 'registry'}", "num_samples=2", f"out={tmp_path}", "device=cpu",
                    "trajectory=true", "sampler.num_steps=5"])
    run(cfg)
    assert (tmp_path / "trajectory.png").is_file()


def test_wrong_checkpoint_kind_and_bad_values(checkpoints, tmp_path: Path) -> None:
    from sample import run

    not_a_model = tmp_path / "x.ckpt"
    torch.save({"ldm": {"kind": "classifier"}, "state_dict": {}}, not_a_model)
    with pytest.raises(CheckpointError, match="needs an ldm or vae checkpoint"):
        run(_compose([f"ckpt={not_a_model}", f"out={tmp_path}"]))
    with pytest.raises(ValueError, match="num_samples=0"):
        run(_compose([f"ckpt={checkpoints['vae']}", "num_samples=0", f"out={tmp_path}"]))
    with pytest.raises(ValueError, match="num_steps=500"):
        run(_compose([f"ckpt={checkpoints['ldm']}", "steps=500", f"out={tmp_path}", "device=cpu"]))
