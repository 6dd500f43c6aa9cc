"""Draw samples from a trained LDM (or a VAE's prior) and save them.

    python sample.py num_samples=10000 out=samples/ldm              # the latest LDM run
    python sample.py ckpt=PATH sampler=dpmpp steps=10 out=DIR seed=1
    python sample.py ckpt=logs/vae/.../last.ckpt out=samples/vae    # the VAE-only baseline

Writes DIR/grid.png, DIR/sampling.json (checkpoint, sampler, seconds) and DIR/samples.npz: `images`, uint8 in 0..255 of shape (N, H, W) for
one-channel data (N, C, H, W otherwise), and `labels` (int64, (N,)) for conditional models.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import track
from torchvision.utils import save_image

from ldm.checkpoints import CheckpointError, checkpoint_kind, find_latest, load_vae
from ldm.io import atomic_write, atomic_write_json
from ldm.systems.latent_diffusion import LatentDiffusionModule

log = logging.getLogger("sample")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_generator(ckpt: Path, cfg: DictConfig, device: torch.device):
    """(n, generator) -> n images in [0, 1] for the checkpoint's kind; its name; the LDM if any."""
    kind = checkpoint_kind(ckpt)
    if kind == "vae":
        vae = load_vae(ckpt).to(device)
        shape = vae.latent_shape
        return (lambda n, g: vae.decode(torch.randn((n, *shape), generator=g, device=device))), "vae prior", None
    if kind == "ldm":
        sampler_cfg = cfg.sampler.copy()
        for key, value in (("num_steps", cfg.steps), ("eta", cfg.eta)):
            if value is not None:
                sampler_cfg[key] = value
        model = LatentDiffusionModule.from_checkpoint(ckpt, hydra.utils.instantiate(sampler_cfg)).to(device)
        return (lambda n, g: model.sample(n, generator=g)), repr(model.sampler), model
    raise CheckpointError(f"{ckpt} is a {kind} checkpoint; sample.py needs an ldm or vae checkpoint")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> uint8 (N, H, W) for one channel, else (N, C, H, W)."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else array


@torch.no_grad()
def run(cfg: DictConfig) -> Path:
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    ckpt = Path(cfg.ckpt) if cfg.ckpt else find_latest(cfg.registry_dir, "ldm")
    device = _device(cfg.device)
    generate, name, model = build_generator(ckpt, cfg, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    batches, start = [], time.perf_counter()
    sizes = [min(cfg.batch_size, cfg.num_samples - i) for i in range(0, cfg.num_samples, cfg.batch_size)]
    for n in track(sizes, description=f"sampling ({name})"):
        batches.append(generate(n, generator).float().cpu())
    seconds = time.perf_counter() - start
    images = torch.cat(batches)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = images[: cfg.grid_size]
    save_image(grid, out / "grid.png", nrow=math.ceil(math.sqrt(len(grid))))
    if cfg.trajectory and model is not None:
        frames, per_row = model.trajectory(8, generator)["denoising_trajectory"]
        save_image(frames, out / "trajectory.png", nrow=per_row)
    arrays = {"images": to_uint8(images)}
    atomic_write(out / "samples.npz", lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    info = {"ckpt": str(ckpt), "generator": name, "num_samples": len(images), "seconds": seconds,
            "device": str(device), "seed": cfg.seed, "batch_size": cfg.batch_size}
    atomic_write_json(out / "sampling.json", info)
    log.info("%d samples from %s (%s) in %.2f s (%.0f samples/s) -> %s",
             len(images), ckpt, name, seconds, len(images) / seconds, out / "samples.npz")
    return out / "samples.npz"


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    import train  # noqa: F401  (registers the ${cwd:} resolver)

    main()
