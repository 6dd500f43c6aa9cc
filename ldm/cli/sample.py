"""Draw samples from a trained LDM (or a VAE's prior) and save them.

    python sample.py num_samples=10000 out=samples/ldm              # the latest LDM run
    python sample.py ckpt=PATH sampler=dpmpp steps=10 out=DIR seed=1
    python sample.py ckpt=logs/vae/.../last.ckpt out=samples/vae    # the VAE-only baseline

Writes DIR/samples.npz: `images`, uint8 in 0..255 of shape (N, H, W) for one-channel data
(N, C, H, W otherwise), and `labels` (int64, (N,)) for conditional models; then DIR/grid.png and
DIR/sampling.json (checkpoint, sampler, seconds). Each batch is kept in DIR/.parts/ as soon as it
is drawn, so memory stays at one batch, and a run that was stopped (a signal, a full disk)
continues when the same command runs again, with the samples an uninterrupted run draws
(`ldm.sampling`). A bad value, a missing checkpoint or a full disk is one line, exit status 1.

    python sample.py prompt="one nine two 3 five 0" guidance=3   # a class-conditional LDM
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ldm.cli import CONF_DIR, handler, resolvers
from ldm.cli.sampling import draw_from_config

log = logging.getLogger("sample")
resolvers.register()


def run(cfg: DictConfig) -> Path:
    """Sample as `cfg` (conf/sample.yaml) asks; returns the path of samples.npz."""
    return draw_from_config(cfg)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def _hydra_main(cfg: DictConfig) -> None:
    handler.run_task(run, cfg, log)


def main() -> None:
    """`python sample.py ...`: one-line user errors (exit 1), exit status 128 + signal when stopped."""
    handler.main(_hydra_main)


if __name__ == "__main__":
    main()
