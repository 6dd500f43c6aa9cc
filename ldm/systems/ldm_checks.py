"""What an LDM checkpoint must agree with before its weights are used: its format, the recipe it was
trained with (first stage kind, objective, conditioning), and sane loaded values (a fitted latent
scale, finite weights). Each failure is a CheckpointError naming the fix."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.checkpoints import CheckpointError
from ldm.serialize import digest

OLD_FORMAT = (
    "this LDM checkpoint was written by an older version of ldm (before objectives and first stages "
    "were saved as specs): train it again with this version"
)


def _recipe(key: str, node: Any) -> Any:
    """What of a stored spec training depends on: not the default sampling guidance of a conditioning."""
    if key == "conditioning" and isinstance(node, dict) and isinstance(node.get("kwargs"), dict):
        return {**node, "kwargs": {k: v for k, v in node["kwargs"].items() if k != "guidance"}}
    return node


def _class_name(node: dict | None) -> str:
    return node["class"].rsplit(".", 1)[-1] if isinstance(node, dict) and "class" in node else "none"


def check_same_recipe(stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A resumed or tested checkpoint (hyperparameters `stored`) must be trained and scored as it was
    trained (`current`: the config's): same first stage kind, same objective (schedule, parameterization,
    weighting, time distribution), same conditioning."""
    for key, groups in (
        ("first_stage", "first_stage="),
        ("objective", "objective=, schedule=, parameterization=, weighting="),
        ("conditioning", "conditioning="),
    ):
        theirs, ours = _recipe(key, stored.get(key)), _recipe(key, current.get(key))
        same = (_class_name(theirs) == _class_name(ours)) if key == "first_stage" else digest(theirs) == digest(ours)
        if not same:
            detail = "other settings of" if _class_name(theirs) == _class_name(ours) else f"{_class_name(theirs)}, not"
            raise CheckpointError(
                f"This LDM checkpoint was trained with {detail} the {key} the config builds ({_class_name(ours)}): "
                f"use the config it was trained with ({groups} as in its run folder's config.yaml)"
            )


def check_loaded(model: nn.Module, path: str | Path) -> None:
    """After loading `path` into `model`: a fitted latent scale and finite weights, else a CheckpointError."""
    if not model.first_stage.normalizer.fitted:
        raise CheckpointError(
            f"{path}: its latent scale is missing or invalid (scale "
            f"{model.first_stage.normalizer.scale.item()}): the file is damaged; use another checkpoint"
        )
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN/Inf weights ({bad[0]}, ...): sampling from it gives garbage; "
            "use an earlier checkpoint of the run"
        )
