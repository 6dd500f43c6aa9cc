"""Score generated digits: FID, KID, IS, precision/recall (and conditional accuracy) on the
features of our MNIST classifier, next to the floor that real digits reach with the same count.

    python evaluate.py samples=samples/ldm/samples.npz
    python evaluate.py ckpt=PATH num_samples=10000 sampler=dpmpp steps=20 out=samples/dpmpp20

Prints a table and writes it as JSON (default: metrics.json beside the samples).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ldm.checkpoints import find_latest, load_classifier
from ldm.io import atomic_write_json
from ldm.metrics import ClassifierFeatures, cached_reference_features, real_floor, sample_metrics
from sample import _device
from sample import run as run_sampling

log = logging.getLogger("evaluate")


def load_samples(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`images` as uint8 (N, C, H, W) and `labels` (N,) if present, from a samples.npz."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: make it with python sample.py out=DIR")
    with np.load(path) as data:
        if "images" not in data.files:
            raise KeyError(f"{path} has no `images` array (keys: {data.files}); it is not a sample.py output")
        images = torch.from_numpy(data["images"])
        labels = torch.from_numpy(data["labels"]).long() if "labels" in data.files else None
    if images.dtype != torch.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{path}: images must be uint8 (N, H, W) or (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    return (images[:, None] if images.ndim == 3 else images), labels


def real_images(cfg: DictConfig) -> dict[str, torch.Tensor]:
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return {s: datamodule.splits[s].batch(torch.arange(len(datamodule.splits[s])))["image"] for s in ("train", "test")}


def evaluate(cfg: DictConfig) -> dict:
    samples = Path(cfg.samples) if cfg.samples else run_sampling(cfg)
    images, labels = load_samples(samples)
    classifier_ckpt = Path(cfg.classifier_ckpt) if cfg.classifier_ckpt else find_latest(cfg.registry_dir, "classifier")
    extractor = ClassifierFeatures(load_classifier(classifier_ckpt)).to(_device(cfg.device))
    real = real_images(cfg)
    reference = cached_reference_features(real["test"], extractor, cfg.cache_dir)
    result = {
        "samples": str(samples), "num_samples": len(images), "classifier": str(classifier_ckpt),
        "reference": f"{len(reference)} test images",
        "metrics": sample_metrics(images, reference, extractor, labels=labels, k=cfg.k, seed=cfg.seed),
    }
    if (samples.parent / "sampling.json").is_file():  # written by sample.py: which sampler, how long
        result["sampling"] = json.loads((samples.parent / "sampling.json").read_text())
    if cfg.floor:
        result["floor"] = real_floor(real["train"], reference, extractor, num_samples=len(images), k=cfg.k, seed=cfg.seed)
    atomic_write_json(Path(cfg.json) if cfg.json else samples.parent / "metrics.json", result)
    _print(result)
    return result


def _print(result: dict) -> None:
    table = Table(title=f"{result['samples']} ({result['num_samples']} samples)")
    columns = ["samples"] + (["floor (real train)"] if "floor" in result else [])
    for column in ["metric", *columns]:
        table.add_column(column, justify="right")
    for key, value in result["metrics"].items():
        row = [f"{value:.4g}"] + ([f"{result['floor'][key]:.4g}" if key in result["floor"] else "-"] if "floor" in result else [])
        table.add_row(key, *row)
    Console().print(table)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    import train  # noqa: F401  (registers the ${cwd:} resolver)

    main()
