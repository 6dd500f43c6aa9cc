"""The private APIs of Lightning and torch that ldm relies on: one list, each checked where it is used.

An upstream rename must fail loudly (a RuntimeError naming the API, and `tests/test_compat.py`),
never silently change what ldm does. Each use is here because no public API does the same:

* `ModelCheckpoint._should_skip_saving_checkpoint / _save_last_checkpoint / _monitor_candidates`:
  `ldm.resume.LastCheckpoint` writes last.ckpt at times Lightning's callback does not (every
  epoch, and on SIGTERM), through Lightning's own saving path;
* `subprocess_script._hydra_subprocess_cmd`: how Lightning relaunches DDP ranks under Hydra
  (`ldm.cli.multirun` starts them from the job's config instead of the whole sweep);
* `torch._foreach_lerp_`, `torch._foreach_norm`: one kernel for the EMA update and one for the
  gradient norms of the NaN guard, instead of one per tensor;
* the optimizer's `found_inf` attribute (torch's fused Adam/AdamW skip a step on the device when it
  is 1, as GradScaler uses it): the NaN guard skips a step with no host sync. Its behaviour, not its
  name, is what `tests/test_compat.py` checks.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

PRIVATE: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.callbacks.ModelCheckpoint": (
        "_should_skip_saving_checkpoint",
        "_save_last_checkpoint",
        "_monitor_candidates",
    ),
    "lightning.pytorch.strategies.launchers.subprocess_script": ("_hydra_subprocess_cmd",),
    "torch": ("_foreach_lerp_", "_foreach_norm"),
}


def require(owner: Any, *names: str) -> None:
    """Raise a RuntimeError naming each of `names` that `owner` (a module or class) no longer has."""
    missing = [name for name in names if not callable(getattr(owner, name, None))]
    if missing:
        module = owner.__name__ if isinstance(owner, types.ModuleType) else owner.__module__
        where = module if isinstance(owner, types.ModuleType) else f"{module}.{owner.__qualname__}"
        raise RuntimeError(
            f"{where}.{', '.join(missing)} is gone in this version of {module.split('.')[0]}: ldm "
            "relies on it (see ldm/compat.py); use the versions pyproject.toml allows, or update ldm"
        )


def missing_private_apis() -> list[str]:
    """Every entry of PRIVATE that the installed Lightning / torch do not have."""
    missing = []
    for path, names in PRIVATE.items():
        module_name, _, attr = path.rpartition(".")
        try:
            owner = importlib.import_module(path)
        except ImportError:
            owner = getattr(importlib.import_module(module_name), attr, None)
        missing += [f"{path}.{name}" for name in names if not callable(getattr(owner, name, None))]
    return missing
