"""Finding and loading the checkpoints one stage hands to the next.

Every run records its best checkpoint under a registry folder (`paths.registry_dir`) as
`<stage>.json`, so `python train.py model=ldm` finds the latest VAE without being told.
Loading always uses `torch.load(weights_only=True)`: a checkpoint holds tensors and plain values
only, and one carrying arbitrary pickled objects is refused.
"""

from __future__ import annotations

import json
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ldm.io import atomic_write_json
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.classifier import MNISTClassifier


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe, or of the wrong kind."""


def record_latest(registry_dir: str | Path, stage: str, ckpt_path: str | Path, **info: Any) -> Path:
    """Point `<registry_dir>/<stage>.json` at `ckpt_path` (atomically; concurrent runs are safe)."""
    entry = {"ckpt_path": str(Path(ckpt_path).resolve()), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    return atomic_write_json(Path(registry_dir) / f"{stage}.json", entry)


def find_latest(registry_dir: str | Path, stage: str) -> Path:
    """The checkpoint the last finished `stage` run recorded, or a clear error."""
    entry_path = Path(registry_dir) / f"{stage}.json"
    if not entry_path.is_file():
        raise CheckpointError(
            f"No {stage} checkpoint recorded in {entry_path}: train one first "
            f"(python train.py model={stage}) or pass its path explicitly ({stage}_ckpt=PATH)"
        )
    try:
        ckpt = Path(json.loads(entry_path.read_text())["ckpt_path"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{entry_path} is corrupt ({e}): delete it and retrain, or pass {stage}_ckpt=PATH") from e
    if not ckpt.is_file():
        raise CheckpointError(f"{entry_path} points at {ckpt}, which no longer exists: pass {stage}_ckpt=PATH")
    return ckpt


def load_checkpoint(path: str | Path, kind: str | None) -> dict[str, Any]:
    """Load a Lightning checkpoint written by an ldm system of `kind` ("vae", ...; None: any), safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        raise CheckpointError(
            f"Refusing to load {path}: it holds objects other than tensors and plain values, "
            f"which could run code when unpickled. {culprit}"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({e}); use another checkpoint") from e
    found = checkpoint.get("ldm", {}).get("kind") if isinstance(checkpoint, dict) else None
    if found is None or (kind is not None and found != kind):
        raise CheckpointError(f"{path} is a {found or 'non-ldm'} checkpoint, but a {kind or 'ldm'} checkpoint is needed")
    return checkpoint


def checkpoint_kind(path: str | Path) -> str:
    """Which ldm system wrote the checkpoint: "vae", "ldm", "classifier"."""
    return load_checkpoint(path, None)["ldm"]["kind"]


def _load_network(path: str | Path, kind: str, build: Callable[..., nn.Module]) -> nn.Module:
    """Rebuild the network `kind` from its recorded config and its `<kind>.` weights (eval mode)."""
    checkpoint = load_checkpoint(path, kind)
    network = build(**checkpoint["ldm"][f"{kind}_config"])
    prefix = f"{kind}."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the {kind} weights do not match its recorded config ({e})") from e
    return network.eval()


def load_vae(path: str | Path) -> AutoencoderKL:
    """Rebuild the VAE a `VAEModule` checkpoint was trained with, weights included (eval mode)."""
    return _load_network(path, "vae", AutoencoderKL)


def load_classifier(path: str | Path) -> MNISTClassifier:
    """Rebuild the classifier a `ClassifierModule` checkpoint was trained with (eval mode)."""
    return _load_network(path, "classifier", MNISTClassifier)
