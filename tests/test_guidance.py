"""Class conditioning: prompt parsing, label dropout, guidance limits, conditional sampling and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.diffusion import DDIMSampler, DDPMSampler, DPMSolverPP2M
from ldm.diffusion.guidance import ClassConditioning, guide
from ldm.guard import NonFiniteError
from ldm.models.unet import UNet
from ldm.prompts import parse_digits
from ldm.systems.latent_diffusion import LatentDiffusionModule

from conftest import compose_cfg, make_ldm, save_vae_checkpoint


def test_prompt_parsing() -> None:
    assert parse_digits("one nine two 3 five 0") == [1, 9, 2, 3, 5, 0]
    assert parse_digits("One,NINE ,  two,3") == [1, 9, 2, 3]
    assert parse_digits("7") == [7]
    with pytest.raises(ValueError, match=r"\['eleven'\]"):
        parse_digits("one eleven 2")
    with pytest.raises(ValueError, match="empty"):
        parse_digits(" , ")


def test_label_dropout_rate_and_bad_values() -> None:
    conditioning = ClassConditioning(num_classes=10, p_uncond=0.1)
    labels = torch.randint(0, 10, (200_000,))
    dropped = conditioning.drop_labels(labels, torch.Generator().manual_seed(0))
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.1) < 0.005
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    assert (ClassConditioning(p_uncond=0.0).drop_labels(labels) == labels).all()
    for kwargs, key in (
        ({"p_uncond": 1.5}, "p_uncond"),
        ({"guidance": -1.0}, "guidance"),
        ({"num_classes": 0}, "num_classes"),
    ):
        with pytest.raises(ValueError, match=key):
            ClassConditioning(**kwargs)


def _module(vae_ckpt: Path, conditional: bool = True) -> LatentDiffusionModule:
    torch.manual_seed(0)
    unet = UNet(
        in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=10 if conditional else None
    )
    with torch.no_grad():  # perturb the zero-initialised layers so labels reach the output
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return make_ldm(
        vae_ckpt,
        unet=unet,
        sampler=DDIMSampler(num_steps=5),
        conditioning=ClassConditioning(guidance=3.0) if conditional else None,
    ).eval()


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt")


def test_guidance_zero_and_one_are_exactly_the_plain_models(vae_ckpt: Path) -> None:
    module = _module(vae_ckpt)
    x, t, y = torch.randn(6, 4, 7, 7), torch.randint(0, 100, (6,)), torch.arange(6)
    net = module.ema.model
    with torch.no_grad():
        null = torch.full_like(y, 10)
        assert torch.equal(module.pipeline().guided_network(y, 0.0)(x, t), net(x, t, null))
        assert torch.equal(module.pipeline().guided_network(y, 1.0)(x, t), net(x, t, y))
        cond, uncond = net(x, t, y), net(x, t, null)
        torch.testing.assert_close(
            module.pipeline().guided_network(y, 3.0)(x, t), guide(cond, uncond, 3.0), rtol=1e-5, atol=1e-5
        )
        assert not torch.allclose(cond, uncond)  # the label matters


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(num_steps=5), DPMSolverPP2M(num_steps=4)])
def test_every_sampler_takes_labels_and_guidance(vae_ckpt: Path, sampler) -> None:
    module = _module(vae_ckpt)
    images = module.sample(
        4, sampler=sampler, labels=torch.tensor([1, 9, 2, 3]), guidance=2.0, generator=torch.Generator().manual_seed(0)
    )
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()


def test_labels_on_an_unconditional_model_and_bad_shapes(vae_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="unconditional"):
        _module(vae_ckpt, conditional=False).sample(2, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels must be 3 integer class ids"):
        _module(vae_ckpt).sample(3, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="guidance=-1"):
        _module(vae_ckpt).sample(2, labels=torch.tensor([1, 2]), guidance=-1.0)
    with pytest.raises(ValueError, match=r"class ids in 0..9"):  # 10 is the null class, not a digit
        _module(vae_ckpt).sample(2, labels=torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="integer class ids"):
        _module(vae_ckpt).sample(2, labels=torch.tensor([1.5, 2.0]))


def test_sample_py_prompt_writes_labels(vae_ckpt: Path, tmp_path: Path) -> None:
    import lightning as L
    from test_sample import _compose

    from ldm.cli.sample import run

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(_module(vae_ckpt))
    trainer.save_checkpoint(tmp_path / "cond.ckpt")
    run(
        _compose(
            [
                f"ckpt={tmp_path / 'cond.ckpt'}",
                'prompt="one nine two 3 five 0"',
                "guidance=2",
                f"out={tmp_path}",
                "device=cpu",
            ]
        )
    )
    data = np.load(tmp_path / "samples.npz")
    assert data["labels"].tolist() == [1, 9, 2, 3, 5, 0] and data["labels"].dtype == np.int64
    assert data["images"].shape == (6, 28, 28)
    # The lesson's 8 x 8 prompt grid: 64 digits, 8 per row (a row of 64 used to be cut at 20 columns).
    prompt = " ".join(str(i % 10) for i in range(64))
    run(
        _compose(
            [
                f"ckpt={tmp_path / 'cond.ckpt'}",
                f'prompt="{prompt}"',
                "grid_columns=8",
                f"out={tmp_path / 'g'}",
                "device=cpu",
                "steps=2",
            ]
        )
    )
    grid = Image.open(tmp_path / "g" / "grid.png")
    assert grid.size == (8 * 30, 8 * (30 + 12))  # 8 cells of 28 + 2 px across; 8 rows, each under a label strip
    run(_compose([f"ckpt={tmp_path / 'cond.ckpt'}", "num_samples=12", f"out={tmp_path}", "device=cpu"]))
    assert np.load(tmp_path / "samples.npz")["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    with pytest.raises(ValueError, match=r"\['twelve'\]"):
        run(_compose([f"ckpt={tmp_path / 'cond.ckpt'}", "prompt=twelve", f"out={tmp_path}"]))
    with pytest.raises(ValueError, match="class ids in 0..9"):
        run(_compose([f"ckpt={tmp_path / 'cond.ckpt'}", "labels=[1,10]", f"out={tmp_path}"]))
    # A guidance scale so large that the samples overflow: refused, never written as black digits.
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        run(
            _compose(
                [
                    f"ckpt={tmp_path / 'cond.ckpt'}",
                    "num_samples=4",
                    "guidance=1e300",
                    f"out={tmp_path / 'big'}",
                    "device=cpu",
                ]
            )
        )
    assert not (tmp_path / "big" / "samples.npz").exists()
    with pytest.raises(ValueError, match="guidance=inf must be a finite number"):
        run(_compose([f"ckpt={tmp_path / 'cond.ckpt'}", "guidance=inf", f"out={tmp_path / 'big'}"]))


def test_conditional_train_end_to_end(tmp_path: Path, mnist_dir: Path) -> None:
    from ldm.cli.train import train

    from test_train import LDM_TINY

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", "conditioning=class", f"vae_ckpt={vae}", *LDM_TINY])
    assert cfg.model.unet.num_classes == 10
    metrics = train(cfg)
    assert "val/loss" in metrics and "test/loss" in metrics
    restored = LatentDiffusionModule.from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert restored.conditioning.num_classes == 10 and restored.conditioning.guidance == 1.25
