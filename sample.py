"""Draw samples from a trained LDM (or a VAE's prior) and save them.

    python sample.py num_samples=10000 out=samples/ldm              # the latest LDM run
    python sample.py ckpt=PATH sampler=dpmpp steps=10 out=DIR seed=1
    python sample.py ckpt=logs/vae/.../last.ckpt out=samples/vae    # the VAE-only baseline

Writes DIR/grid.png, DIR/sampling.json (checkpoint, sampler, seconds) and DIR/samples.npz: `images`, uint8 in 0..255 of shape (N, H, W) for
one-channel data (N, C, H, W otherwise), and `labels` (int64, (N,)) for conditional models.

    python sample.py prompt="one nine two 3 five 0" guidance=3   # a class-conditional LDM
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
from PIL import Image, ImageDraw
from rich.progress import track
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import save_image

from ldm.checkpoints import CheckpointError, checkpoint_kind, find_latest, load_vae
from ldm.io import atomic_write, atomic_write_json
from ldm.prompts import parse_digits
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
        return (lambda n, g, y: vae.decode(torch.randn((n, *shape), generator=g, device=device))), "vae prior", None
    if kind == "ldm":
        sampler_cfg = cfg.sampler.copy()
        for key, value in (("num_steps", cfg.steps), ("eta", cfg.eta)):
            if value is not None:
                sampler_cfg[key] = value
        model = LatentDiffusionModule.from_checkpoint(ckpt, hydra.utils.instantiate(sampler_cfg), cfg.compile).to(device)
        name = repr(model.sampler) + (f", guidance {cfg.guidance}" if cfg.guidance is not None else "")
        return (lambda n, g, y: model.sample(n, generator=g, labels=y, guidance=cfg.guidance)), name, model
    raise CheckpointError(f"{ckpt} is a {kind} checkpoint; sample.py needs an ldm or vae checkpoint")


def resolve_labels(cfg: DictConfig, model: LatentDiffusionModule | None) -> torch.Tensor | None:
    """Per-sample classes: from `prompt` or `labels`, else 0..9 in turn for a conditional model."""
    if cfg.prompt is not None and cfg.labels is not None:
        raise ValueError("give prompt= or labels=, not both")
    given = parse_digits(cfg.prompt) if cfg.prompt is not None else cfg.labels
    conditional = model is not None and model.conditioning is not None
    if given is None:
        if cfg.guidance is not None and not conditional:
            raise ValueError("guidance= applies to class-conditional LDMs (trained with conditioning=class)")
        return model.default_labels(cfg.num_samples).cpu() if conditional else None
    if not conditional:
        raise ValueError("prompt= / labels= need a class-conditional LDM (train one with conditioning=class)")
    labels = torch.as_tensor(list(given), dtype=torch.long)
    bad = labels[(labels < 0) | (labels >= model.conditioning.num_classes)]
    if bad.numel() or labels.ndim != 1:
        raise ValueError(f"labels must be class ids in 0..{model.conditioning.num_classes - 1}, got {list(given)}")
    return labels


def labelled_grid(images: torch.Tensor, labels: torch.Tensor, nrow: int) -> Image.Image:
    """A grid with each image's class written in a strip above it."""
    cell, strip = images.shape[-1] + 2, 12
    rows = math.ceil(len(images) / nrow)
    canvas = Image.new("L", (nrow * cell, rows * (cell + strip)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        x, y = (i % nrow) * cell, (i // nrow) * (cell + strip)
        draw.text((x + cell // 2 - 3, y), str(label), fill=255)
        canvas.paste(to_pil_image(image.clamp(0, 1)).convert("L"), (x + 1, y + strip))
    return canvas


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> uint8 (N, H, W) for one channel, else (N, C, H, W)."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else array


@torch.no_grad()
def run(cfg: DictConfig) -> Path:
    device = _device(cfg.device)
    batch_size = cfg.batch_size if cfg.batch_size is not None else (10_000 if device.type == "cuda" else 1000)
    if cfg.num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={batch_size} must be >= 1")
    ckpt = Path(cfg.ckpt) if cfg.ckpt else find_latest(cfg.registry_dir, "ldm")
    generate, name, model = build_generator(ckpt, cfg, device)
    labels = resolve_labels(cfg, model)
    num_samples = len(labels) if labels is not None else cfg.num_samples  # one sample per prompt token
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    batches, start = [], time.perf_counter()
    for i in track(range(0, num_samples, batch_size), description=f"sampling ({name})"):
        n = min(batch_size, num_samples - i)
        y = labels[i : i + n].to(device) if labels is not None else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16):
            batches.append(generate(n, generator, y).float().cpu())
    seconds = time.perf_counter() - start
    images = torch.cat(batches)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = images[: cfg.grid_size]
    if labels is not None:  # prompts read left to right; balanced grids show 0..9 per row
        nrow = len(grid) if cfg.prompt is not None or cfg.labels is not None else model.conditioning.num_classes
        labelled_grid(grid, labels[: cfg.grid_size], min(nrow, 20)).save(out / "grid.png")
    else:
        save_image(grid, out / "grid.png", nrow=math.ceil(math.sqrt(len(grid))))
    if cfg.trajectory and model is not None:
        frames, per_row = model.trajectory(8, generator)["denoising_trajectory"]
        save_image(frames, out / "trajectory.png", nrow=per_row)
    arrays = {"images": to_uint8(images)}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.int64)
    atomic_write(out / "samples.npz", lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    info = {"ckpt": str(ckpt), "generator": name, "num_samples": len(images), "seconds": seconds,
            "device": str(device), "seed": cfg.seed, "batch_size": batch_size}
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
