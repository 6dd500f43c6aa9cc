"""One serialization convention for every built object: a class path and plain keyword values.

    spec(obj)   -> {"class": "ldm.diffusion.samplers.DDIMSampler", "kwargs": {"num_steps": 50, ...}}
    build(spec) -> DDIMSampler(num_steps=50, ...)

An object takes part by exposing `config`: its constructor arguments as plain values (numbers,
strings, lists, dicts, tensors) or as other objects that expose `config` (nested specs). No Hydra,
no pickle, no class-name switches: a spec is what a checkpoint stores (`torch.load(weights_only=True)`
reads it) and what `LatentDiffusionModule.load_from_checkpoint` rebuilds from.

Only classes *defined* in an allowed package are built (`ldm` by default; `allow_package` adds one;
a class merely imported into an ldm module, such as torchvision's MNIST, is not), each a subclass of
the type the caller expects, and nested specs a subclass of a component base (`COMPONENTS`), so a
checkpoint cannot name an arbitrary callable to run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Any, TypeVar

from torch import Tensor, nn

from ldm.diffusion.guidance import ClassConditioning
from ldm.diffusion.parameterization import Parameterization
from ldm.diffusion.weighting import LossWeight
from ldm.errors import UserError
from ldm.io import update_hash

T = TypeVar("T")
_PACKAGES = {"ldm"}
_PLAIN = (bool, int, float, str, type(None), Tensor)


class SpecError(UserError, ValueError):
    """A spec that names an unknown or disallowed class, or that does not build."""


#: What a nested spec may build: the components a model is made of.
COMPONENTS: tuple[type, ...] = (nn.Module, Parameterization, LossWeight, ClassConditioning)


def allow_package(name: str) -> None:
    """Let `build` import classes from the top-level package `name` (e.g. your own extensions)."""
    _PACKAGES.add(name.split(".")[0])


def is_spec(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"class", "kwargs"} and isinstance(value["class"], str)


def spec(obj: Any) -> dict[str, Any]:
    """The spec of an object exposing `config` (see the module docstring)."""
    config = getattr(obj, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(obj).__name__} has no `config` dict, so it cannot be serialised")
    cls = type(obj)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": {k: _value(v) for k, v in config.items()}}


def _value(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    return spec(value)


def _resolve(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    if not module_name or module_name.split(".")[0] not in _PACKAGES:
        raise SpecError(
            f"refusing to build {path!r}: only classes from {sorted(_PACKAGES)} are built "
            "(ldm.serialize.allow_package adds a package)"
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise SpecError(f"{path!r} does not exist in this version of the code ({e})") from e
    if not isinstance(cls, type):
        raise SpecError(f"{path!r} is not a class")
    if cls.__module__.split(".")[0] not in _PACKAGES:  # imported into an ldm module from elsewhere
        raise SpecError(
            f"refusing to build {path!r}: it is {cls.__module__}.{cls.__qualname__}, and only classes "
            f"defined in {sorted(_PACKAGES)} are built"
        )
    return cls


def build(value: Any, expected: type[T] | tuple[type, ...] | None = None) -> T:
    """Rebuild an object from its spec (nested specs first); `expected` is the base (or bases) it must have."""
    if not is_spec(value):
        raise SpecError(f"not a spec ({{'class': ..., 'kwargs': ...}}): {str(value)[:100]}")
    cls = _resolve(value["class"])
    if expected is not None and not issubclass(cls, expected):
        raise SpecError(f"{value['class']} is not a {_names(expected)}")
    kwargs = {k: _built(v) for k, v in value["kwargs"].items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"cannot build {value['class']} from {sorted(kwargs)}: {e}") from e


def _names(expected: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))


def _built(value: Any) -> Any:
    if is_spec(value):
        return build(value, COMPONENTS)
    if isinstance(value, list):
        return [_built(v) for v in value]
    if isinstance(value, dict):
        return {k: _built(v) for k, v in value.items()}
    return value


def built(value: Any, expected: type[T] | tuple[type, ...]) -> T:
    """`value` built from its spec, or `value` itself if it is already an `expected`."""
    if is_spec(value):
        return build(value, expected)
    if not isinstance(value, expected):
        raise SpecError(f"expected a {_names(expected)} or its spec, got {type(value).__name__}")
    return value


def digest(node: Any) -> str:
    """sha256 of a spec (or any plain value): equal for equal classes and values, tensors by content."""

    def plain(value: Any) -> Any:
        if isinstance(value, Tensor):  # by content, as the caches hash tensors
            return ["tensor", update_hash(hashlib.sha256(), {"t": value}).hexdigest()]
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return hashlib.sha256(json.dumps(plain(node), sort_keys=True).encode()).hexdigest()
