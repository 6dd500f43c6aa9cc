"""ldm.serialize: every built object round-trips through a plain spec; a spec cannot name arbitrary code."""

from __future__ import annotations

import pytest
import torch

from ldm.diffusion import DDIMSampler, DDPMSampler, DPMSolverPP2M, MinSNRWeight, NoiseSchedule, VPrediction, sigmoid
from ldm.diffusion.flow import EulerSampler, FlowAncestralSampler, FlowMatching, HeunSampler
from ldm.diffusion.guidance import ClassConditioning
from ldm.diffusion.objectives import DiffusionObjective
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.first_stage import IdentityFirstStage
from ldm.models.unet import UNet
from ldm.serialize import SpecError, allow_package, build, built, spec

OBJECTS = [
    DDIMSampler(7, eta=0.3, spacing="trailing"),
    DDPMSampler(),
    DPMSolverPP2M(12),
    EulerSampler(9, shift=2.0),
    HeunSampler(4),
    FlowAncestralSampler(6, eta=0.5),
    FlowMatching("uniform", time_scale=10.0),
    DiffusionObjective(NoiseSchedule(sigmoid(50)), VPrediction(), MinSNRWeight(3.0)),
    ClassConditioning(4, 0.2, 2.0),
    UNet(in_channels=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1),
    AutoencoderKL(hidden_channels=(8, 8, 8)),
    IdentityFirstStage(3, 32),
]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
def test_round_trip(obj) -> None:
    node = spec(obj)
    torch.save(node, "/dev/null")  # plain: tensors, numbers, strings, lists, dicts
    again = build(node, type(obj))
    assert type(again) is type(obj) and spec(again).keys() == node.keys()
    if isinstance(obj, torch.nn.Module) and not isinstance(obj, DiffusionObjective):
        assert again.state_dict().keys() == obj.state_dict().keys()
    else:
        assert repr(again) == repr(obj)


def test_the_schedule_is_rebuilt_exactly() -> None:
    objective = DiffusionObjective(NoiseSchedule(sigmoid(1000)), VPrediction())
    again = build(spec(objective), DiffusionObjective)
    assert torch.equal(again.schedule.alpha, objective.schedule.alpha) and torch.equal(
        again.schedule.sigma, objective.schedule.sigma
    )


@pytest.mark.parametrize("path", ["os.system", "subprocess.Popen", "builtins.eval", "torch.nn.Linear"])
def test_a_spec_cannot_name_code_outside_ldm(path: str) -> None:
    with pytest.raises(SpecError, match="only classes from"):
        build({"class": path, "kwargs": {}})


def test_classes_imported_into_ldm_and_non_components_are_refused(tmp_path) -> None:
    """A class imported into an ldm module from elsewhere (torchvision's MNIST in ldm.data.mnist) is not
    ldm's; nested specs build model components only. Nothing is created on disk."""
    gadget = {"class": "ldm.data.mnist.MNIST", "kwargs": {"root": str(tmp_path / "pwn"), "download": True}}
    with pytest.raises(SpecError, match="only classes defined in"):
        build(gadget)
    nested = spec(UNet(in_channels=4, base_channels=8, channel_mults=(1,), num_res_blocks=1))
    nested["kwargs"]["channel_mults"] = [
        1,
        {"class": "ldm.sample_request.Request", "kwargs": {"out": str(tmp_path / "x")}},
    ]
    with pytest.raises(SpecError, match="is not a Module or Parameterization"):
        build(nested, UNet)
    assert not (tmp_path / "pwn").exists()


def test_wrong_base_missing_class_and_bad_kwargs_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="is not a DDIMSampler"):
        build(spec(DDPMSampler()), DDIMSampler)
    with pytest.raises(SpecError, match="does not exist in this version"):
        build({"class": "ldm.diffusion.samplers.NoSuchSampler", "kwargs": {}})
    with pytest.raises(SpecError, match="cannot build"):
        build({"class": "ldm.diffusion.samplers.DDIMSampler", "kwargs": {"num_steps": -1}})
    with pytest.raises(SpecError, match="expected a UNet"):
        built(DDPMSampler(), UNet)
    with pytest.raises(SpecError, match="not a spec"):
        build({"class": "ldm.diffusion.samplers.DDIMSampler"})


def test_an_allowed_package_can_be_built(tmp_path, monkeypatch) -> None:
    (tmp_path / "myext").mkdir()
    (tmp_path / "myext" / "__init__.py").write_text(
        "class Sampler:\n    def __init__(self, n=1):\n        self.n = n\n    @property\n    def config(self):\n        return {'n': self.n}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError, match="only classes from"):
        build({"class": "myext.Sampler", "kwargs": {"n": 3}})
    allow_package("myext")
    assert build({"class": "myext.Sampler", "kwargs": {"n": 3}}).n == 3
