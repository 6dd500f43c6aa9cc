"""experiments/post_figures.py on tiny data: every figure is drawn and the forward process is right."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, save_vae_checkpoint

sys.path.insert(0, str(ROOT / "experiments"))


@pytest.fixture(autouse=True)
def _data(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("LDM_DATA_DIR", str(mnist_dir))


def test_every_figure_is_written(tmp_path: Path) -> None:
    import post_figures

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    for args in (["schedules"], ["forward", "--schedule", "linear"], ["latents", "--vae", str(vae), "--num", "64"]):
        out = post_figures.main([*args, "--out", str(tmp_path / f"{args[0]}.png")])
        assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="is not one of"):
        post_figures.main(["forward", "--schedule", "nope", "--out", str(tmp_path / "x.png")])


def test_forward_grid_is_x0_then_q_sample() -> None:
    import post_figures

    schedule = post_figures.schedules()["interpolation"]
    x0 = torch.rand(2, 1, 28, 28)
    grid = post_figures.forward_grid(x0, schedule, columns=5).reshape(2, 6, 1, 28, 28)
    assert torch.allclose(grid[:, 0], x0, atol=1e-6)  # the clean digit first
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    alpha, sigma = schedule.at(999)  # interpolation: the last column is (almost) pure noise
    expected = ((alpha * (x0 * 2 - 1) + sigma * eps + 1) / 2).clamp(0, 1)
    assert torch.allclose(grid[:, -1], expected, atol=1e-5)
