"""What `python sample.py` runs (and `python evaluate.py` when it samples first): the config's
plain values checked, the checkpoint found, the sampler built, then `ldm.sampling.draw`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ldm.checkpoints import find_latest
from ldm.cli.typecheck import check_config, check_known, check_values
from ldm.sample_request import Request, config_hints
from ldm.sampling import draw

GROUPS = ("sampler", "paths", "data")  # conf/sample.yaml's config groups


def plain(cfg: DictConfig, keys: Iterable[str]) -> dict[str, Any]:
    """The values of `keys` in `cfg` as plain Python values (lists, not ListConfigs)."""
    return {
        key: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v := cfg.get(key)) else v for key in keys
    }


def draw_from_config(cfg: DictConfig, values: dict[str, Any] | None = None) -> Path:
    """Sample as `cfg` (conf/sample.yaml) asks; returns the path of samples.npz. `values`: its keys, already checked."""
    if values is None:
        hints = config_hints()
        check_known(cfg.keys(), hints, GROUPS)
        values = plain(cfg, hints)
        check_values(values, hints)
    ckpt = Path(values["ckpt"]) if values["ckpt"] else find_latest(values["registry_dir"], "ldm", key="ckpt")
    node = OmegaConf.to_container(cfg.sampler, resolve=True) if "sampler" in cfg and cfg.sampler is not None else None
    if node is not None:
        check_config(node, "sampler")
    request = Request.from_values(values)
    data = hydra.utils.instantiate(cfg.data) if "data" in cfg else None  # prior=fitted and calibrated samplers
    sampler = None if node is None else hydra.utils.instantiate(node)
    return draw(request, ckpt, sampler, data, values["cache_dir"])
