"""Edit real digits with a trained LDM: DDIM inversion, interpolation, SDEdit, inpainting (`ldm.edits`).

    python edit.py mode=invert                         # the round trip of test digits 0..7, and its error
    python edit.py mode=interpolate frames=10          # digits 0->1, 2->3, ...: slerp between their inversions
    python edit.py mode=sdedit strength=0.6            # re-noised to 60 % of the way, then denoised
    python edit.py mode=inpaint fill=lower             # the lower half regenerated, the upper kept
    python edit.py ckpt=PATH indices=[3,14,15] split=train out=DIR

Writes DIR/<mode>.png (each digit, then its edits, one row per digit or pair), DIR/<mode>.npz
(`images`: uint8 (rows, columns, H, W), `indices`) and DIR/<mode>.json (the settings, and for invert
the round-trip error of each digit). A class-conditional model edits each digit under its own label
(the data's), with the model's guidance unless `guidance=` is given. Needs objective=diffusion.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from ldm import edits
from ldm.api import load
from ldm.checkpoints import checkpoint_kind, checkpoint_of, find_latest
from ldm.cli import CONF_DIR, handler, resolvers
from ldm.cli.sampling import plain
from ldm.cli.typecheck import check_known, check_values
from ldm.diffusion.objectives import DiffusionObjective
from ldm.errors import ConfigError
from ldm.grids import grid_image, save_png
from ldm.io import atomic_write, atomic_write_json
from ldm.samples import to_uint8

log = logging.getLogger("edit")
resolvers.register()

KEYS = {
    "mode": Literal["invert", "interpolate", "sdedit", "inpaint"],
    "ckpt": str | None,
    "registry_dir": str,
    "split": Literal["train", "val", "test"],
    "indices": list[int],
    "steps": int,
    "frames": int,
    "strength": float,
    "fill": Literal["lower", "upper", "left", "right"],
    "guidance": float | None,
    "seed": int,
    "device": str,
    "out": str,
}


def _digits(cfg: DictConfig, split: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen digits (N, C, H, W) in [0, 1] and their labels."""
    source = hydra.utils.instantiate(cfg.data)
    source.prepare_data()
    dataset = source.split(split)
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise ConfigError(f"indices={bad}: the {split} split has {len(dataset)} digits (0..{len(dataset) - 1})")
    batch = dataset.batch(torch.tensor(indices))
    return batch["image"], batch["label"]


def _mask(fill: str, size: tuple[int, int]) -> torch.Tensor:
    """1 where the digit is kept, 0 on the half `fill` names."""
    known = torch.ones(size)
    h, w = size
    region = {"lower": (slice(h // 2, None), slice(None)), "upper": (slice(None, h // 2), slice(None))}
    region |= {"right": (slice(None), slice(w // 2, None)), "left": (slice(None), slice(None, w // 2))}
    known[region[fill]] = 0
    return known


def run(cfg: DictConfig) -> Path:
    """Edit as `cfg` (conf/edit.yaml) asks; returns the path of <out>/<mode>.png."""
    check_known(cfg.keys(), KEYS, ("paths", "data"))
    values = plain(cfg, KEYS)
    check_values(values, KEYS)
    mode, indices = values["mode"], values["indices"]
    if not indices or (mode == "interpolate" and len(indices) % 2):
        raise ConfigError(f"indices={indices}: give at least one digit (interpolate: pairs, an even number)")
    for key, ok, what in (
        ("steps", values["steps"] >= 1, ">= 1"),
        ("frames", values["frames"] >= 2, ">= 2 (the two ends)"),
        ("strength", 0 < values["strength"] <= 1, "in (0, 1]"),
    ):
        if not ok:
            raise ConfigError(f"{key}={values[key]} must be {what}")
    ckpt = checkpoint_of(values["ckpt"] or find_latest(values["registry_dir"], "ldm", key="ckpt"))
    if (kind := checkpoint_kind(ckpt)) != "ldm":
        raise ConfigError(f"ckpt={ckpt} is a {kind} checkpoint: pass an LDM's (ckpt=logs/ldm/runs/<time>)")
    pipe = load(ckpt, device=values["device"])
    if not isinstance(pipe.objective, DiffusionObjective):
        raise ConfigError(f"{ckpt}: edits need a model trained with objective=diffusion (DDIM inversion)")
    images, labels = _digits(cfg, values["split"], indices)
    labels = labels.tolist() if pipe.conditioning is not None else None
    guidance, seed, steps = values["guidance"], values["seed"], values["steps"]
    info: dict[str, Any] = {**values, "ckpt": str(ckpt)}  # the checkpoint used, also when found in the registry
    if mode == "invert":
        noise, error = edits.invert(pipe, images, steps=steps, labels=labels, guidance=guidance)
        again = edits.from_noise(pipe, noise, steps=steps, labels=labels, guidance=guidance)
        rows = torch.stack([images, pipe.decode(edits.encode(pipe, images)), again.cpu()], 1)
        info["round_trip_error"] = [round(float(e), 6) for e in error]  # ||z - z'|| / ||z|| per digit
        log.info("DDIM inversion, %d steps: latent round-trip error %.4f (mean of %d)", steps, error.mean(), len(error))
    elif mode == "interpolate":
        rows = torch.stack(
            [
                edits.interpolate(
                    pipe, images[i : i + 1], images[i + 1 : i + 2], values["frames"], steps,
                    None if labels is None else labels[i], guidance,
                ).cpu()
                for i in range(0, len(indices), 2)
            ]
        )  # fmt: skip
    elif mode == "sdedit":
        edited = edits.sdedit(pipe, images, values["strength"], seed=seed, labels=labels, guidance=guidance)
        rows = torch.stack([images, edited.cpu()], 1)
    else:
        known = _mask(values["fill"], tuple(images.shape[-2:]))
        filled = edits.inpaint(pipe, images, known, seed=seed, labels=labels, guidance=guidance)
        rows = torch.stack([images, images * known + 0.5 * (1 - known), filled.cpu()], 1)
    out = Path(values["out"])
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(rows.flatten(0, 1))
    pixels = pixels.reshape(*rows.shape[:2], *pixels.shape[1:])  # (rows, columns, H, W) for one channel

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=pixels, indices=np.array(indices))

    atomic_write(out / f"{mode}.npz", write)
    atomic_write_json(out / f"{mode}.json", info)
    path = save_png(out / f"{mode}.png", grid_image(rows.flatten(0, 1), rows.shape[1]))
    log.info("%s of %d %s digits -> %s", mode, len(indices), values["split"], path.resolve())
    return path


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="edit")
def _hydra_main(cfg: DictConfig) -> None:
    handler.run_task(run, cfg, log)


def main() -> None:
    """`python edit.py ...`: one-line user errors (exit 1), exit status 128 + signal when stopped."""
    handler.main(_hydra_main)


if __name__ == "__main__":
    main()
