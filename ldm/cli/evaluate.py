"""Score generated digits: FID, KID, IS, precision/recall (and conditional accuracy) on the
features of our MNIST classifier, next to the floor that real digits reach with the same count.

    python evaluate.py samples=samples/ldm/samples.npz
    python evaluate.py ckpt=PATH num_samples=10000 sampler=dpmpp steps=20 out=samples/dpmpp20

Prints a table, then writes it as JSON (default: metrics.json beside the samples; if that write
fails, the numbers are still on screen). The samples file is checked first (what sample.py writes:
uint8 images, one integer label per image in the classifier's classes), and so is `k`
(1 <= k < the number of samples). A bad value or file is one line, exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ldm.checkpoints import find_latest, load_classifier
from ldm.cli import CONF_DIR, handler, resolvers
from ldm.cli.sampling import GROUPS, draw_from_config, plain
from ldm.cli.typecheck import check_known, check_values
from ldm.data.source import all_images
from ldm.errors import ConfigError
from ldm.io import atomic_write
from ldm.metrics import ClassifierFeatures, cached_reference_features, judge_digest, real_floor, sample_metrics
from ldm.models.classifier import MNISTClassifier
from ldm.sample_request import Request, config_hints, pick_device
from ldm.samples import SamplesError, load_samples

log = logging.getLogger("evaluate")
resolvers.register()

# evaluate.py's own keys; conf/sample.yaml's (through its defaults) are `config_hints()`.
KEYS = {
    "samples": str | None,
    "classifier_ckpt": str | None,
    "k": int,
    "floor": bool,
    "json": str | None,
}


SCORING = ("out", "seed", "device")  # the sampling keys scoring saved samples uses too (out: its log folder)


def _given_keys() -> set[str]:
    """The top-level keys of this run's command-line overrides (none outside a Hydra run)."""
    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] for o in HydraConfig.get().overrides.task}


def check_samples(
    path: Path, images: torch.Tensor, labels: torch.Tensor | None, classifier: MNISTClassifier, real: torch.Tensor
) -> None:
    """Samples the classifier can score against `real` (N, C, H, W), with labels among its classes."""
    if images.shape[-2:] != real.shape[-2:] or images.shape[1] not in (1, classifier.in_channels):
        raise SamplesError(
            f"samples={path}: images of shape {tuple(images.shape[1:])} (C, H, W), but the classifier "
            f"and the real data take {tuple(real.shape[1:])}; sample from a model of this data"
        )
    if labels is not None and not ((labels >= 0) & (labels < classifier.num_classes)).all():
        raise SamplesError(
            f"samples={path}: `labels` must be class ids in 0..{classifier.num_classes - 1}, got "
            f"values in {int(labels.min())}..{int(labels.max())}"
        )


def check_k(k: int, **counts: int) -> None:
    """Precision / recall look at each point's k-th nearest neighbour among the others of its set."""
    name, fewest = min(counts.items(), key=lambda item: item[1], default=("samples", None))
    if k < 1 or (fewest is not None and k >= fewest):
        bound = f" and < the number of {name} ({fewest})" if fewest is not None else ""
        raise ConfigError(
            f"k={k} must be >= 1{bound}: precision/recall use each point's k-th nearest neighbour (default k=3)"
        )


def check_counts(k: int, num_samples: int, real: dict[str, torch.Tensor], floor: bool) -> None:
    """k below every set's size; with floor=true, as many real train digits as samples."""
    counts = {"samples": num_samples, "real test images": len(real["test"])}
    check_k(k, **counts, **({"real train images": len(real["train"])} if floor else {}))
    if floor and num_samples > len(real["train"]):  # before any scoring: the floor needs as many
        raise ConfigError(
            f"floor=true scores as many real train digits as there are samples ({num_samples}), but the data has "
            f"{len(real['train'])}: score fewer samples, or pass floor=false"
        )


def classifier_from(values: dict[str, Any]) -> tuple[Path, MNISTClassifier]:
    """`classifier_ckpt`, or the latest classifier run's, loaded."""
    path = (
        Path(values["classifier_ckpt"])
        if values["classifier_ckpt"]
        else find_latest(values["registry_dir"], "classifier", key="classifier_ckpt")
    )
    if not path.is_file():
        raise ConfigError(
            f"classifier_ckpt={path} does not exist: pass a checkpoint of "
            "python train.py model=classifier, or leave it unset for the latest classifier run"
        )
    return path, load_classifier(path)


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """One line when a step of the scoring starts and one with its time when it ends."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s: %.1f s", what, time.perf_counter() - start)


def real_images(cfg: DictConfig) -> dict[str, torch.Tensor]:
    source = hydra.utils.instantiate(cfg.data)  # an image source (ldm.data.source)
    return {split: all_images(source, split) for split in ("train", "test")}


def evaluate(cfg: DictConfig) -> dict:
    hints = {**config_hints(), **KEYS}
    check_known(cfg.keys(), hints, GROUPS)
    values = plain(cfg, hints)
    check_values(values, hints)
    check_k(values["k"])  # before anything is sampled
    if values["json"] and Path(values["json"]).is_dir():
        raise ConfigError(
            f"json={values['json']} is a folder: give a file, e.g. json={Path(values['json']) / 'metrics.json'}"
        )
    if values["samples"] and values["ckpt"]:
        raise ConfigError("give samples= (score saved samples) or ckpt= (sample, then score), not both")
    # What only drawing uses (conf/sample.yaml's defaults are Request's): a saved file ignores them.
    given = _given_keys()  # on the command line, even at their default value (num_samples=64)
    drawing = [f for f in fields(Request) if f.name not in SCORING]
    sampling = [f.name for f in drawing if values[f.name] != f.default or f.name in given]
    sampling += ["sampler"] * (cfg.get("sampler") is not None or "sampler" in given)
    if values["samples"] and sampling:
        raise ConfigError(
            f"samples= scores a saved file as it is, so {', '.join(f'{k}=' for k in sampling)} would be ignored: "
            "drop them, or leave samples= unset and give ckpt= to sample with them first"
        )
    device = pick_device(values["device"])
    if values["samples"]:
        samples = Path(values["samples"])
        images, labels = load_samples(samples)
    classifier_ckpt, classifier = classifier_from(values)  # the judge, the data and the counts before any drawing
    real = real_images(cfg)
    if not values["samples"]:
        check_counts(values["k"], values["num_samples"], real, values["floor"])
        samples = draw_from_config(cfg, values)
        images, labels = load_samples(samples)
    check_samples(samples, images, labels, classifier, real["test"])
    check_counts(values["k"], len(images), real, values["floor"])
    extractor = ClassifierFeatures(classifier).to(device)
    with phase(f"features of the {len(real['test'])} real test digits (cached after the first run)"):
        reference = cached_reference_features(real["test"], extractor, values["cache_dir"])
    k, seed = values["k"], values["seed"]
    with phase(f"scoring {len(images)} samples"):
        result = {
            "samples": str(samples),
            "num_samples": len(images),
            "classifier": str(classifier_ckpt),
            "classifier_sha256": judge_digest(classifier),
            "reference": f"{len(reference)} test images",
            "metrics": sample_metrics(images, reference, extractor, labels=labels, k=k, seed=seed),
        }
    result.update(_sampling_record(samples.parent / "sampling.json"))
    if values["floor"]:
        with phase(f"the floor: {len(images)} real train digits scored the same way"):
            result["floor"] = real_floor(real["train"], reference, extractor, num_samples=len(images), k=k, seed=seed)
    _print(result)  # first: a JSON file that cannot be written must not take the numbers with it
    path = Path(values["json"]) if values["json"] else samples.parent / "metrics.json"
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    atomic_write(
        path,
        lambda tmp: tmp.write_text(text),
        hint="pass json=PATH to write them elsewhere (the numbers are in the table above)",
    )
    return result


def _sampling_record(path: Path) -> dict[str, Any]:
    """sample.py's sampling.json beside the samples (which sampler, how long), if there is a readable one."""
    if not path.is_file():
        return {}
    try:
        return {"sampling": json.loads(path.read_text())}
    except (OSError, ValueError) as e:
        log.warning("Ignoring %s: unreadable (%s)", path, e)
        return {}


def _print(result: dict) -> None:
    table = Table(title=f"{result['samples']} ({result['num_samples']} samples)")
    columns = ["samples"] + (["floor (real train)"] if "floor" in result else [])
    for column in ["metric", *columns]:
        table.add_column(column, justify="right")
    for key, value in result["metrics"].items():
        row = [f"{value:.4g}"] + (
            [f"{result['floor'][key]:.4g}" if key in result["floor"] else "-"] if "floor" in result else []
        )
        table.add_row(key, *row)
    Console().print(table)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    handler.run_task(evaluate, cfg, log)


def main() -> None:
    """`python evaluate.py ...`: one-line user errors (exit 1), exit status 128 + signal when stopped."""
    handler.main(_hydra_main)


if __name__ == "__main__":
    main()
