"""Every config in conf/ composes, resolves, and builds its objects."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg, save_vae_checkpoint

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "debug", "experiment"]
LDM_GROUPS = ["objective", "first_stage", "schedule", "parameterization", "sampler", "weighting"]  # under model=ldm
FLOW_SAMPLERS = {"sampler=euler", "sampler=heun", "sampler=flow_ancestral"}  # need objective=flow


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


CASES = [f"{group}={option}" for group in GROUPS + LDM_GROUPS for option in _options(group)]


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt")


def test_every_group_has_options() -> None:
    assert all(_options(group) for group in GROUPS + LDM_GROUPS)


def test_flow_and_pixel_compose_together(tmp_path: Path, mnist_dir: Path) -> None:
    """objective=flow picks a flow sampler; first_stage=pixel trains on the images with a 1-channel UNet."""
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", "objective=flow", "first_stage=pixel"])
    assert cfg.vae_ckpt is None and cfg.data._target_ == "ldm.data.mnist.MNISTDataModule"
    model = hydra.utils.instantiate(cfg.model)
    assert type(model.objective).__name__ == "FlowMatching" and type(model.sampler).__name__ == "FlowAncestralSampler"
    assert type(model.first_stage).__name__ == "IdentityFirstStage" and model.unet.in_channels == 1


@pytest.mark.parametrize("override", CASES)
def test_config_composes_and_builds(override: str, tmp_path: Path, mnist_dir: Path, vae_ckpt: Path) -> None:
    ldm = (
        override.split("=")[0] in LDM_GROUPS
        or override in ("data=latents", "model=ldm")
        or override.startswith("experiment=ldm")
    )
    base = ["model=ldm", f"vae_ckpt={vae_ckpt}"] if ldm else []
    base += ["objective=flow"] if override in FLOW_SAMPLERS else []
    cfg = compose_cfg(tmp_path, mnist_dir, [*base, override])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if override == "sampler=ddim_analytic":  # a sampling-time sampler: built, but refused for training
        assert hydra.utils.instantiate(cfg.model.sampler).x0_error is None
        with pytest.raises(
            Exception, match="train with sampler=ddim, then sample or evaluate with sampler=ddim_analytic"
        ):
            hydra.utils.instantiate(cfg.model)
        return
    model = hydra.utils.instantiate(cfg.model)
    hydra.utils.instantiate(cfg.data, **({"first_stage": model.first_stage} if "first_stage" in cfg.data else {}))
    for name, node in (cfg.get("logger") or {}).items():
        if name == "tensorboard" and not (
            importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        ):
            continue  # optional dependency
        hydra.utils.instantiate(node)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        return  # composes and resolves (checked above); a Trainer needs the GPU
    hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False)


def test_data_dir_defaults_to_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ldm.cli.resolvers import register

    register()  # as train.py does on import (this test must not depend on another importing it first)
    monkeypatch.setenv("LDM_DATA_DIR", str(tmp_path / "elsewhere"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.paths.data_dir == str(tmp_path / "elsewhere")
    assert cfg.task_name == "vae" and cfg.model.vae.in_channels == 1
    monkeypatch.delenv("LDM_DATA_DIR")
    assert cfg.paths.data_dir.endswith("/data")


def test_default_precision_is_bf16_only_on_a_cuda_gpu(monkeypatch) -> None:
    import torch

    from ldm.cli.resolvers import auto_precision as _auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert _auto_precision("auto") == _auto_precision("gpu") == "bf16-mixed"
    assert _auto_precision("cpu") == "32-true"
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )  # a V100: emulated only
    assert _auto_precision("auto") == "32-true"


@pytest.mark.parametrize(("rule", "lr"), [("none", 1e-3), ("sqrt", 2e-3), ("linear", 4e-3)])
def test_lr_scaling_follows_the_effective_batch(rule: str, lr: float, tmp_path, mnist_dir) -> None:
    from ldm.cli.train import scale_lr

    cfg = compose_cfg(tmp_path, mnist_dir, ["model=vae", "model.optimizer.lr=1e-3", f"lr_scaling={rule}"])
    scale_lr(cfg, world_size=2, accumulate=2)  # 2 devices x 2 accumulated batches: 4x the batch
    assert cfg.model.optimizer.lr == pytest.approx(lr)
    with pytest.raises(ValueError, match="lr_scaling='cubic'"):
        scale_lr(compose_cfg(tmp_path, mnist_dir, ["model=vae", "lr_scaling=cubic"]), 2, 1)


@pytest.mark.parametrize("group", ["sampler", "weighting", "parameterization", "conditioning", "schedule"])
def test_code_defaults_equal_config_defaults(group: str) -> None:
    """Each option file sets every argument to the class's own default, so an object built in Python
    (or rebuilt by a loader) is the one the config builds."""
    import inspect

    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        if not node or "_target_" not in node:
            continue  # conditioning=none
        target = hydra.utils.get_object(node.pop("_target_"))
        if group == "schedule":  # NoiseSchedule(coefficients=<schedule function>(...))
            coefficients = node["coefficients"]
            target, node = hydra.utils.get_object(coefficients.pop("_target_")), coefficients
        defaults = {k: p.default for k, p in inspect.signature(target).parameters.items() if p.default is not p.empty}
        assert node == {k: v for k, v in defaults.items() if k in node} and set(node) == set(defaults), path.name
