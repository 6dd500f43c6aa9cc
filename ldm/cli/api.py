"""Training from Python, as the command line does it: `ldm.compose` and `ldm.train`.

    import ldm
    cfg = ldm.compose(["model=vae", "trainer.max_epochs=2"])   # the config `ldm-train model=vae ...` runs
    cfg.model.beta = 1e-2                                       # edit it like any OmegaConf config
    metrics = ldm.train(cfg)                                    # a run folder under logs/, as from the CLI

One run per call (a sweep is `ldm-train -m ...`). The run folder, registry and loggers are the
command line's; Hydra's own logging setup (train.log) is not applied from Python.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm.cli import CONF_DIR, resolvers


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """conf/<config_name>.yaml with command-line style `overrides`, as the command would compose it
    (the `hydra` node included, so that `train` can claim the run folder)."""
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise TypeError(f"overrides must be a list of strings like ['model=vae'], got {overrides!r}")
    resolvers.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)


def train(cfg: DictConfig | Sequence[str]) -> dict[str, float]:
    """Run one training run of `cfg` (from `compose`, or its overrides); returns its final metrics."""
    from ldm.cli.train import train as train_task

    # A deep copy: the caller's config (and its cached run folder) stays as it was, so it can train again.
    cfg = compose(cfg) if not isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    if "hydra" not in cfg:
        raise ValueError("ldm.train needs a config from ldm.compose (it holds the run folder's recipe)")
    OmegaConf.set_readonly(cfg.hydra, False)
    OmegaConf.set_readonly(cfg.hydra.runtime, False)  # Hydra marks both read-only
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "."  # placeholder: the run folder is claimed below
        HydraConfig.instance().set_config(cfg)
        output_dir = str(Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute())  # claims it (ldm.cli.resolvers)
        cfg.hydra.runtime.output_dir = output_dir
        HydraConfig.instance().set_config(cfg)
        cfg.paths.output_dir = output_dir
        del cfg.hydra  # a task never sees it; the resolvers read HydraConfig
    return train_task(cfg)
