"""AnalyticDDIMSampler: DDIM whose stochastic step adds back the x0 error (ldm.diffusion.analytic)."""

from __future__ import annotations

import pytest
import torch

from ldm.diffusion.analytic import AnalyticDDIMSampler, x0_errors
from ldm.diffusion.loop import sample
from ldm.diffusion.samplers import DDIMSampler
from ldm.diffusion.schedules import NoiseSchedule, linear, sigmoid
from ldm.serialize import build, spec


def exact_denoiser(schedule: NoiseSchedule):
    """E[x0 | x_t] for x0 ~ N(0, I): the perfect denoiser of Gaussian data."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        x0 = alpha / (alpha**2 + sigma**2) * x_t
        return x0, (x_t - alpha * x0) / sigma

    return denoise


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("make", [linear, sigmoid])
def test_with_a_perfect_denoiser_the_x0_error_is_the_posterior_variance(make) -> None:
    schedule = NoiseSchedule(make(1000))
    steps = [999, 700, 400, 100, 10]
    errors = x0_errors(exact_denoiser(schedule), schedule, torch.randn(4000, 16, generator=_g(0)), steps, _g(1))
    for t, error in zip(steps, errors):
        alpha, sigma = schedule.at(t)
        posterior_var = float(sigma**2 / (alpha**2 + sigma**2))  # Var[x0 | x_t] of N(0, I) data
        assert error == pytest.approx(posterior_var, rel=0.05, abs=1e-4), t


@pytest.mark.parametrize("make", [linear, sigmoid])
@pytest.mark.parametrize("per_dimension", [False, True])
def test_few_steps_keep_the_data_variance_where_plain_ddim_loses_it(make, per_dimension: bool) -> None:
    schedule = NoiseSchedule(make(1000))
    denoiser, data = exact_denoiser(schedule), torch.randn(2000, 64, generator=_g(2))
    for steps in (5, 10, 20):
        plain = sample(denoiser, schedule, DDIMSampler(steps, eta=1.0), (2000, 64), generator=_g(3)).var()
        analytic = AnalyticDDIMSampler(steps, per_dimension=per_dimension).calibrated(denoiser, schedule, data, _g(4))
        kept = sample(denoiser, schedule, analytic, (2000, 64), generator=_g(3)).var()
        assert plain < 0.85 and abs(kept - 1) < 0.06, (steps, float(plain), float(kept))


def test_an_imperfect_denoiser_gets_its_own_error_added() -> None:
    """A denoiser that predicts x0_hat = 0 everywhere: its x0 error is the data variance at every t."""
    schedule = NoiseSchedule(linear(1000))

    def zero(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        return torch.zeros_like(x_t), x_t / sigma

    errors = x0_errors(zero, schedule, 2 * torch.randn(3000, 8, generator=_g(5)), [900, 50], _g(6))
    assert errors == pytest.approx([4.0, 4.0], rel=0.05)
    # Per dimension: one dimension of spread 1, one of spread 3 -> errors 1 and 9 (averaged: 5).
    data = torch.randn(4000, 2, generator=_g(7)) * torch.tensor([1.0, 3.0])
    (per_dim,) = x0_errors(zero, schedule, data, [500], _g(8), per_dimension=True)
    assert per_dim == pytest.approx([1.0, 9.0], rel=0.06)
    assert x0_errors(zero, schedule, data, [500], _g(8)) == pytest.approx([sum(per_dim) / 2], rel=1e-6)


def test_calibration_is_required_serialised_and_checked() -> None:
    schedule = NoiseSchedule(linear(100))
    uncalibrated = AnalyticDDIMSampler(4)
    with pytest.raises(RuntimeError, match="calibrate it on training data first"):
        sample(exact_denoiser(schedule), schedule, uncalibrated, (2, 3), generator=_g(0))
    calibrated = uncalibrated.calibrated(exact_denoiser(schedule), schedule, torch.randn(50, 3, generator=_g(1)))
    rebuilt = build(spec(calibrated))  # class path + plain values, as checkpoints store samplers
    assert isinstance(rebuilt, AnalyticDDIMSampler) and rebuilt.x0_error == calibrated.x0_error
    assert "calibrated" in repr(rebuilt) and len(rebuilt.x0_error) == 4
    per_dim = AnalyticDDIMSampler(4, per_dimension=True).calibrated(
        exact_denoiser(schedule), schedule, torch.randn(50, 3, generator=_g(1))
    )
    rebuilt_per_dim = build(spec(per_dim))
    assert rebuilt_per_dim.x0_error == per_dim.x0_error and len(per_dim.x0_error[0]) == 3
    assert rebuilt_per_dim.per_dimension
    from ldm.pipeline import make_sampler

    assert make_sampler(rebuilt, steps=6).x0_error is None  # other steps: measured again before sampling
    assert make_sampler(rebuilt, eta=0.5).x0_error == calibrated.x0_error
    with pytest.raises(ValueError, match=r"x0_error must be 4 numbers \(one per step\), finite and >= 0"):
        AnalyticDDIMSampler(4, x0_error=[0.1, 0.2])
    with pytest.raises(ValueError, match="x0_error must be 2 numbers"):
        AnalyticDDIMSampler(2, x0_error=[0.1, float("nan")])
    with pytest.raises(ValueError, match="x0_error must be 2 lists of numbers of one shape"):
        AnalyticDDIMSampler(2, x0_error=[[0.1, 0.2], [0.1]], per_dimension=True)
    with pytest.raises(ValueError, match="x0_error must be 2 numbers"):
        AnalyticDDIMSampler(2, x0_error=[[0.1, 0.2], [0.1, 0.3]])  # per-dimension values, but not asked for
    with pytest.raises(ValueError, match="calibration_samples must be a positive int"):
        AnalyticDDIMSampler(2, calibration_samples=0)


def test_sample_py_calibrates_on_training_digits_then_samples(tmp_path, mnist_dir, caplog) -> None:
    import json

    import lightning as L
    import numpy as np

    from ldm.cli.sample import run

    from conftest import make_ldm, save_vae_checkpoint
    from test_baselines import _sample_cfg

    ldm = tmp_path / "ldm.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(make_ldm(save_vae_checkpoint(tmp_path / "vae.ckpt")))
    trainer.save_checkpoint(ldm)
    overrides = [f"ckpt={ldm}", "sampler=ddim_analytic", "steps=3", "num_samples=5", "sampler.calibration_samples=40"]
    with caplog.at_level("INFO", logger="ldm.sampling"):
        path = run(_sample_cfg([*overrides, f"out={tmp_path / 'a'}"], mnist_dir, tmp_path))
    assert "AnalyticDDIMSampler calibrated on 40 training digits" in caplog.text
    assert "calibrated" in json.loads((tmp_path / "a" / "sampling.json").read_text())["generator"]
    again = run(_sample_cfg([*overrides, f"out={tmp_path / 'b'}"], mnist_dir, tmp_path))  # seeded: the same samples
    assert np.array_equal(np.load(path)["images"], np.load(again)["images"])


def test_a_conditional_pipeline_calibrates_in_batches_each_with_its_labels(tmp_path) -> None:
    """Guided calibration on more images than one batch (the default 2000 > 1000 per batch)."""
    from ldm.diffusion.guidance import ClassConditioning
    from ldm.models.unet import UNet

    from conftest import make_ldm, save_vae_checkpoint

    unet = UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=10)
    model = make_ldm(save_vae_checkpoint(tmp_path / "vae.ckpt"), unet=unet, conditioning=ClassConditioning())
    pipe = model.pipeline()
    images, labels = torch.rand(25, 1, 28, 28), torch.arange(25) % 10
    whole = pipe.calibrated(AnalyticDDIMSampler(3), images, labels, guidance=2.0, generator=_g(0), batch_size=25)
    batched = pipe.calibrated(AnalyticDDIMSampler(3), images, labels, guidance=2.0, generator=_g(0), batch_size=10)
    assert len(batched.x0_error) == 3 and all(v > 0 for v in batched.x0_error)
    assert batched.x0_error == pytest.approx(whole.x0_error, rel=0.5)  # other noise draws, the same error scale
    with pytest.raises(ValueError, match="24 labels for 25 calibration images"):
        pipe.calibrated(AnalyticDDIMSampler(3), images, labels[:24])
    drawn = pipe.sample(4, sampler=batched, labels=torch.tensor([1, 2, 3, 4]), guidance=2.0, seed=0)
    assert drawn.shape == (4, 1, 28, 28) and torch.isfinite(drawn).all()
