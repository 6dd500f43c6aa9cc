"""What `sample.py` is asked to draw: the plain values of conf/sample.yaml (`Request`), checked
as they arrive, the device they name, and the class labels of each batch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import torch
from torch import Tensor

from ldm.errors import ConfigError
from ldm.prompts import parse_digits

PRIORS = ("standard", "fitted")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA if there is a GPU, else the CPU), or a device that exists here; else a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name}, but {torch.cuda.device_count()} CUDA GPU(s) are visible: use device=auto or device=cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name}: use auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class Request:
    """What to draw: conf/sample.yaml's keys but `ckpt` and the sampler, as plain values."""

    out: Path
    num_samples: int = 64
    prompt: str | int | None = None  # "one nine 2" -> one sample per token (a bare digit arrives as an int)
    labels: list[int] | None = None  # or the classes themselves; neither: 0..9 in turn on a conditional model
    guidance: float | None = None
    seed: int = 0
    batch_size: int | None = None  # None: 10000 on CUDA, 1000 on the CPU
    device: str = "auto"
    bf16: bool = True
    compile: bool | str = False
    trajectory: bool = False
    grid_size: int = 100
    grid_columns: int | None = None  # None: a prompt in one row (up to 20), balanced classes 10 per row
    steps: int | None = None  # overrides the sampler's num_steps
    eta: float | None = None  # overrides the sampler's eta (ddim, flow_ancestral)
    prior: str = "standard"  # VAE checkpoints: N(0, I), or "fitted": a Gaussian fitted to the training codes

    def __post_init__(self) -> None:
        checks = [
            ("num_samples", self.num_samples >= 1, "must be >= 1"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "must be >= 1 (or null: automatic)"),
            ("seed", 0 <= self.seed < 2**63, "must be in 0 .. 2**63 - 1"),
            (
                "guidance",
                self.guidance is None or 0 <= self.guidance < math.inf,
                "must be a finite number >= 0 (0: unconditional, 1: conditional, > 1: guided), or null for the "
                "model's default",
            ),
            ("grid_size", self.grid_size >= 0, "must be >= 0 (0: no grid.png)"),
            (
                "prior",
                self.prior in PRIORS,
                "must be standard (a VAE's N(0, I)) or fitted (a Gaussian fitted to its training codes)",
            ),
            ("grid_columns", self.grid_columns is None or self.grid_columns >= 1, "must be >= 1 (or null)"),
            (
                "labels",
                self.labels is None or (len(self.labels) > 0 and all(_is_int(v) for v in self.labels)),
                "must be a non-empty list of class ids, e.g. labels=[1,9,2]",
            ),
            (
                "compile",
                isinstance(self.compile, bool) or self.compile in COMPILE_MODES,
                f"must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)})",
            ),
        ]
        for key, ok, fix in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} {fix}")
        if self.prompt is not None and self.labels is not None:
            raise ConfigError("give prompt= or labels=, not both")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Request:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def config_hints() -> dict[str, Any]:
    """Type hints of conf/sample.yaml's keys (the sampler group is checked against its class)."""
    return {**get_type_hints(Request), "ckpt": str | None, "registry_dir": str, "cache_dir": str | None}


def given_labels(request: Request, num_classes: int | None) -> list[int] | None:
    """The classes asked for by `prompt` or `labels` (None: none asked for), checked against the model."""
    if request.prompt is not None:
        try:
            given = parse_digits(str(request.prompt))
        except ValueError as e:
            raise ConfigError(f"prompt={request.prompt!r}: {e}") from None
    else:
        given = request.labels
    if num_classes is None:
        if given is not None:
            raise ConfigError("prompt= / labels= need a class-conditional LDM (train one with conditioning=class)")
        if request.guidance is not None:
            raise ConfigError("guidance= applies to class-conditional LDMs (trained with conditioning=class)")
        return None
    if given is not None and not all(0 <= v < num_classes for v in given):
        key = "prompt" if request.prompt is not None else "labels"
        raise ConfigError(f"{key}: labels must be class ids in 0..{num_classes - 1}, got {list(given)}")
    return None if given is None else list(given)


def batch_labels(given: list[int] | None, num_classes: int | None, first: int, n: int) -> Tensor | None:
    """Classes of samples first .. first+n-1: the given ones, else 0..K-1 in turn (balanced grids)."""
    if given is not None:
        return torch.tensor(given[first : first + n], dtype=torch.long)
    if num_classes is not None:
        return torch.arange(first, first + n) % num_classes
    return None
