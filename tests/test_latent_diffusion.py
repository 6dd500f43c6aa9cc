"""LatentDiffusionModule: frozen first stage, loss, EMA, sampling, checkpoints (ours and Lightning's)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from ldm.checkpoints import CheckpointError, load_checkpoint
from ldm.diffusion import (
    DDIMSampler,
    DPMSolverPP2M,
    EpsilonPrediction,
    MinSNRWeight,
    NoiseSchedule,
    VPrediction,
    cosine,
    linear,
)
from ldm.diffusion.flow import EulerSampler, FlowMatching, HeunSampler
from ldm.diffusion.objectives import DiffusionObjective
from ldm.errors import ConfigError
from ldm.models.first_stage import IdentityFirstStage
from ldm.models.unet import UNet
from ldm.systems.latent_diffusion import LatentDiffusionModule

from conftest import save_vae_checkpoint


def _objective(parameterization=None, schedule=None, weighting=None) -> DiffusionObjective:
    return DiffusionObjective(
        schedule or NoiseSchedule(linear(100)), parameterization or EpsilonPrediction(), weighting
    )


def _module(vae_ckpt: Path, fitted: bool = True, **kwargs) -> LatentDiffusionModule:
    torch.manual_seed(0)  # the same initial weights in every test
    args = dict(
        unet=UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1),
        objective=_objective(),
        sampler=DDIMSampler(num_steps=10),
        first_stage=vae_ckpt,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    module = LatentDiffusionModule(**{**args, **kwargs})
    if fitted:  # what the latent cache does in setup()
        module.first_stage.normalizer.set(1.0)
    return module


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt")


def test_vae_is_frozen_out_of_the_optimizer_and_stays_in_eval(vae_ckpt: Path) -> None:
    module = _module(vae_ckpt)
    assert not any(p.requires_grad for p in module.first_stage.parameters())
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.unet.parameters()}
    module.train()
    assert module.unet.training and not module.first_stage.training and not module.ema.model.training


def test_incompatible_vae_and_sampler_fail_before_training(vae_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="model.unet.in_channels=4"):
        _module(vae_ckpt, unet=UNet(in_channels=3, base_channels=16, channel_mults=(1,), num_res_blocks=1))
    with pytest.raises(ValueError, match="num_steps=200"):
        _module(vae_ckpt, sampler=DDIMSampler(num_steps=200))
    with pytest.raises(ValueError, match="cannot sample a FlowMatching model"):
        _module(vae_ckpt, objective=FlowMatching())


def test_an_unfitted_latent_scale_is_an_error_not_a_silent_one(vae_ckpt: Path) -> None:
    module = _module(vae_ckpt, fitted=False)
    assert not module.first_stage.normalizer.fitted
    with pytest.raises(ConfigError, match="latent scale is not set"):
        module.setup("fit")
    with pytest.raises(ValueError, match="latent scale is not set"):
        module.sample(2)


@pytest.mark.parametrize("parameterization", [EpsilonPrediction(), VPrediction()])
def test_training_steps_reduce_the_loss(vae_ckpt: Path, parameterization) -> None:
    module = _module(vae_ckpt, objective=_objective(parameterization, NoiseSchedule(cosine(100)), MinSNRWeight(5.0)))
    _assert_training_reduces_the_loss(module, torch.randint(0, 100, (32,)))


def test_flow_matching_training_reduces_the_loss(vae_ckpt: Path) -> None:
    module = _module(vae_ckpt, objective=FlowMatching(), sampler=HeunSampler(3))
    _assert_training_reduces_the_loss(module, torch.rand(32))


def _assert_training_reduces_the_loss(module: LatentDiffusionModule, t: torch.Tensor) -> None:
    optimizer = module.configure_optimizers()
    z0 = torch.randn(1, 4, 7, 7).repeat(32, 1, 1, 1)  # one point: easy to learn
    eps = torch.randn(32, 4, 7, 7)
    before = module.objective.loss(module.unet, z0, t, eps).mean().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        for _ in range(60):
            loss = module.training_step({"latent": z0}, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert module.objective.loss(module.unet, z0, t, eps).mean().item() < 0.7 * before


def test_ema_tracks_the_network(vae_ckpt: Path) -> None:
    module = _module(vae_ckpt, ema_decay=0.5)
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(1.0)
    ema_before = [p.clone() for p in module.ema.model.parameters()]
    module.ema.update(module.unet, num_updates=1000)  # warm-up over: decay 0.5
    for e0, e1, p in zip(ema_before, module.ema.model.parameters(), module.unet.parameters()):
        torch.testing.assert_close(e1, 0.5 * e0 + 0.5 * p)
    assert module.ema.current_decay(0) == pytest.approx(0.1)


def test_sampling_is_seeded_and_decodes_to_images(vae_ckpt: Path) -> None:
    module = _module(vae_ckpt).eval()
    a = module.sample(3, generator=torch.Generator().manual_seed(0))
    b = module.sample(3, generator=torch.Generator().manual_seed(0), sampler=DDIMSampler(num_steps=10))
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)
    assert module.sample(2, sampler=DPMSolverPP2M(num_steps=5)).shape == (2, 1, 28, 28)
    grids = module.log_images({"latent": torch.randn(4, 4, 7, 7)}, num_images=4)
    assert set(grids) == {"samples", "forward_corruption", "denoising_trajectory"}
    images, per_row = grids["forward_corruption"]
    assert per_row == 9 and images.shape == (36, 1, 28, 28)


def test_checkpoint_holds_first_stage_ema_and_normalizer(vae_ckpt: Path, tmp_path: Path) -> None:
    module = _module(vae_ckpt)
    module.first_stage.normalizer.set(0.25)
    with torch.no_grad():
        next(module.ema.model.parameters()).add_(3.0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "ldm.ckpt")
    checkpoint = load_checkpoint(tmp_path / "ldm.ckpt", "ldm")
    assert len(checkpoint["ldm"]["first_stage_sha256"]) == 64 and checkpoint["ldm"]["format"] == 2
    assert any(k.startswith("first_stage.encoder.") for k in checkpoint["state_dict"])
    restored = _module(vae_ckpt, fitted=False)
    restored.load_state_dict(checkpoint["state_dict"])
    assert restored.first_stage.normalizer.scale.item() == 0.25
    torch.testing.assert_close(next(restored.ema.model.parameters()), next(module.ema.model.parameters()))


def test_from_checkpoint_rebuilds_an_identical_sampler(vae_ckpt: Path, tmp_path: Path) -> None:
    module = _module(
        vae_ckpt,
        objective=_objective(VPrediction(), NoiseSchedule(cosine(100)), MinSNRWeight(3.0)),
        sampler=DDIMSampler(num_steps=7, eta=0.5),
    )
    _perturb(module)
    module.first_stage.normalizer.set(0.5)
    _save(module, tmp_path / "ldm.ckpt")
    for restored in (
        LatentDiffusionModule.from_checkpoint(tmp_path / "ldm.ckpt"),
        LatentDiffusionModule.load_from_checkpoint(tmp_path / "ldm.ckpt").eval(),
    ):
        assert repr(restored.objective) == repr(module.objective) and isinstance(
            restored.objective.parameterization, VPrediction
        )
        assert repr(restored.sampler) == repr(module.sampler)  # the stored default, not a code default
        torch.testing.assert_close(restored.objective.schedule.alpha, module.objective.schedule.alpha, rtol=0, atol=0)
        seed = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        torch.testing.assert_close(restored.sample(2, generator=seed()), module.eval().sample(2, generator=seed()))
    restored = LatentDiffusionModule.from_checkpoint(tmp_path / "ldm.ckpt", sampler=DDIMSampler(num_steps=10))
    assert restored.sampler.num_steps == 10
    with pytest.raises(RuntimeError, match="without an optimizer"):
        restored.configure_optimizers()


@pytest.mark.parametrize("sampler", [EulerSampler(4), HeunSampler(3, shift=2.0)], ids=repr)
def test_pixel_space_flow_model_round_trips_through_both_loaders(sampler, tmp_path: Path) -> None:
    module = LatentDiffusionModule(
        unet=UNet(in_channels=1, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1),
        objective=FlowMatching(),
        sampler=sampler,
        first_stage=IdentityFirstStage(channels=1, image_size=28),
    )
    module.setup("fit")  # the identity's scale is fixed: nothing to fit
    _perturb(module)
    _save(module, tmp_path / "pixel.ckpt")
    images = module.eval().sample(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    for restored in (
        LatentDiffusionModule.from_checkpoint(tmp_path / "pixel.ckpt"),
        LatentDiffusionModule.load_from_checkpoint(tmp_path / "pixel.ckpt").eval(),
    ):
        assert isinstance(restored.first_stage, IdentityFirstStage) and repr(restored.sampler) == repr(sampler)
        torch.testing.assert_close(restored.sample(3, generator=torch.Generator().manual_seed(0)), images)
    batch = {"image": torch.rand(4, 1, 28, 28)}
    torch.testing.assert_close(module.clean(batch), batch["image"] * 2 - 1)


def _perturb(module: LatentDiffusionModule) -> None:
    with torch.no_grad():
        for p in module.ema.model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a non-trivial denoiser


def _save(module: LatentDiffusionModule, path: Path) -> None:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def test_compiled_modules_save_plain_keys_that_load_anywhere(vae_ckpt: Path, tmp_path: Path) -> None:
    """torch.compile's wrapper lives outside the module tree: no `_orig_mod.` keys, and an eager
    model loads a compiled run's checkpoint (and the other way round) with strict loading."""
    compiled = _module(vae_ckpt, compile="reduce-overhead")
    wrapper = compiled.compiled(compiled.unet)
    assert wrapper is not compiled.unet and wrapper is compiled.compiled(compiled.unet)  # built once
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    assert compiled.state_dict().keys() == _module(vae_ckpt).state_dict().keys()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(compiled)
    trainer.save_checkpoint(tmp_path / "ldm.ckpt")
    eager = LatentDiffusionModule.from_checkpoint(tmp_path / "ldm.ckpt")
    assert eager.compiled(eager.unet) is eager.unet
    assert LatentDiffusionModule.from_checkpoint(tmp_path / "ldm.ckpt", compile=True).compiled.mode is True
    with pytest.raises(ValueError, match="model.compile='fast' is not valid"):
        _module(vae_ckpt, compile="fast")


@pytest.mark.slow
def test_compiled_training_step_matches_eager(vae_ckpt: Path) -> None:
    """One real torch.compile of the UNet (CPU inductor: slow, hence `slow`)."""
    eager, compiled = _module(vae_ckpt), _module(vae_ckpt, compile=True)
    compiled.load_state_dict(eager.state_dict())
    batch = {"latent": torch.randn(8, 4, 7, 7), "label": torch.zeros(8, dtype=torch.long)}
    t, eps = torch.randint(0, 100, (8,)), torch.randn(8, 4, 7, 7)
    expected = eager.objective.loss(eager.unet, batch["latent"], t, eps)
    got = compiled.objective.loss(compiled.compiled(compiled.unet), batch["latent"], t, eps)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_cuda_graph_modes_hand_out_copies() -> None:
    """CUDA graphs overwrite their outputs on the next call; samplers keep them across steps."""
    from ldm.systems.compile import _cloning

    buffer = torch.zeros(3)
    fn = _cloning(lambda x: buffer.add_(x))  # a callable that returns its own reused storage
    first = fn(torch.ones(3))
    fn(torch.ones(3))
    assert torch.equal(first, torch.ones(3)) and torch.equal(buffer, torch.full((3,), 2.0))


def test_resuming_or_testing_with_another_recipe_is_refused(vae_ckpt: Path, tmp_path: Path) -> None:
    """A flow checkpoint resumed (or tested) by a config that builds the DDPM objective, another
    schedule, another conditioning or another kind of first stage is refused with one line, not
    silently trained or scored as something else. The default sampling guidance may change."""
    from ldm.diffusion.guidance import ClassConditioning

    unet = lambda: UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=10)  # noqa: E731
    flow = _module(
        vae_ckpt, unet=unet(), objective=FlowMatching(), sampler=EulerSampler(3), conditioning=ClassConditioning()
    )
    _save(flow, tmp_path / "flow.ckpt")
    checkpoint = torch.load(tmp_path / "flow.ckpt", weights_only=True)
    same = _module(
        vae_ckpt,
        unet=unet(),
        objective=FlowMatching(),
        sampler=HeunSampler(2),
        conditioning=ClassConditioning(guidance=4.0),
    )
    same.on_load_checkpoint(checkpoint)  # another sampler and default guidance: fine
    for other, message in (
        (
            dict(objective=_objective(), sampler=DDIMSampler(5), conditioning=ClassConditioning()),
            "FlowMatching, not the objective",
        ),
        (
            dict(
                objective=FlowMatching(time_distribution="uniform"),
                sampler=EulerSampler(3),
                conditioning=ClassConditioning(),
            ),
            "other settings of the objective",
        ),
        (
            dict(objective=FlowMatching(), sampler=EulerSampler(3), conditioning=ClassConditioning(p_uncond=0.5)),
            "other settings of the conditioning",
        ),
    ):
        with pytest.raises(CheckpointError, match=message):
            _module(vae_ckpt, unet=unet(), **other).on_load_checkpoint(checkpoint)
    pixel = LatentDiffusionModule(
        unet=UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, num_classes=10),
        objective=FlowMatching(),
        sampler=EulerSampler(3),
        first_stage=IdentityFirstStage(),
        conditioning=ClassConditioning(),
    )
    with pytest.raises(CheckpointError, match="AutoencoderKL, not the first_stage"):
        pixel.on_load_checkpoint(checkpoint)


def test_from_checkpoint_refuses_edited_files(vae_ckpt: Path, tmp_path: Path) -> None:
    module = _module(vae_ckpt)
    _save(module, tmp_path / "ok.ckpt")
    for edit, message in (
        (lambda c: c["hyper_parameters"].update(evil=1), "does not take"),
        (lambda c: c["state_dict"]["first_stage.normalizer.scale"].fill_(0.0), "latent scale is missing or invalid"),
        (
            lambda c: c["hyper_parameters"].update(sampler={"class": "ldm.diffusion.flow.EulerSampler", "kwargs": {}}),
            "does not build",
        ),
        (
            lambda c: c["hyper_parameters"].update(sampler={"class": "ldm.data.mnist.MNIST", "kwargs": {"root": "x"}}),
            "only classes defined in",
        ),
    ):
        checkpoint = torch.load(tmp_path / "ok.ckpt", weights_only=True)
        edit(checkpoint)
        torch.save(checkpoint, tmp_path / "bad.ckpt")
        with pytest.raises(CheckpointError, match=message):
            LatentDiffusionModule.from_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="is a vae checkpoint, but a ldm checkpoint is needed"):
        LatentDiffusionModule.load_from_checkpoint(vae_ckpt)  # Lightning's loader checks the kind too
    checkpoint = torch.load(tmp_path / "ok.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="older version of ldm"):
        LatentDiffusionModule.load_from_checkpoint(tmp_path / "bad.ckpt")
