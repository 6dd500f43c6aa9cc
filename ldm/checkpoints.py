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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.errors import UserError, one_line
from ldm.io import atomic_write_json, safe_load
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.classifier import MNISTClassifier
from ldm.serialize import SpecError, build


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe, or of the wrong kind."""


def record_latest(registry_dir: str | Path, stage: str, ckpt_path: str | Path, **info: Any) -> Path:
    """Point `<registry_dir>/<stage>.json` at `ckpt_path` (atomically; concurrent runs are safe)."""
    entry = {"ckpt_path": str(Path(ckpt_path).resolve()), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    return atomic_write_json(Path(registry_dir) / f"{stage}.json", entry)


def find_latest(registry_dir: str | Path, stage: str, key: str | None = None) -> Path:
    """The checkpoint the last finished `stage` run recorded, or a clear error naming the config
    `key` that takes a path instead (default `<stage>_ckpt`)."""
    key = key or f"{stage}_ckpt"
    entry_path = Path(registry_dir) / f"{stage}.json"
    if not entry_path.is_file():
        raise CheckpointError(
            f"No {stage} checkpoint recorded in {entry_path}: train one first "
            f"(python train.py model={stage}) or pass its path explicitly ({key}=PATH)"
        )
    try:
        ckpt = Path(json.loads(entry_path.read_text())["ckpt_path"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"{entry_path} is corrupt ({e}): delete it and retrain, or pass {key}=PATH") from e
    if not ckpt.is_file():
        raise CheckpointError(f"{entry_path} points at {ckpt}, which no longer exists: pass {key}=PATH")
    return ckpt


def load_checkpoint(path: str | Path, kind: str | None) -> dict[str, Any]:
    """Load a Lightning checkpoint written by an ldm system of `kind` ("vae", ...; None: any), safely."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint: pass a .ckpt file in it (e.g. <run>/checkpoints/last.ckpt)"
        )
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        checkpoint = safe_load(path)
    except pickle.UnpicklingError as e:
        # An object to import ("Unsupported global: GLOBAL os.system"): unsafe. Anything else that
        # fails to unpickle (random bytes, text) is simply not a checkpoint.
        culprit = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), "")
        if not culprit:
            raise CheckpointError(f"{path} {_unreadable(path)}; use another checkpoint") from e
        raise CheckpointError(
            f"Refusing to load {path}: it holds objects other than tensors and plain values, "
            f"which could run code when unpickled. {culprit}"
        ) from e
    except Exception as e:  # zero bytes, text, random bytes, a truncated zip: torch raises almost anything
        raise CheckpointError(f"{path} {_unreadable(path)}; use another checkpoint") from e
    info = checkpoint.get("ldm") if isinstance(checkpoint, dict) else None
    found = info.get("kind") if isinstance(info, dict) else None
    if found is None:
        raise CheckpointError(
            f"{path} was not written by an ldm training run (no ldm record); use a checkpoint from "
            f"logs/<stage>/runs/*/checkpoints/"
        )
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} is a {found} checkpoint, but a {kind} checkpoint is needed")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no weights (state_dict); use another checkpoint")
    return checkpoint


def _unreadable(path: Path) -> str:
    """Say what an unreadable checkpoint file is, in the user's terms (not the unpickler's)."""
    head = path.read_bytes()[:4] if path.stat().st_size else b""
    if not head:
        return "is empty (0 bytes): truncated or not a checkpoint"
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        return f"is truncated or not a checkpoint (a damaged archive of {path.stat().st_size} bytes)"
    return "is truncated or not a checkpoint (not a PyTorch checkpoint file)"


def checkpoint_kind(path: str | Path) -> str:
    """Which ldm system wrote the checkpoint: "vae", "ldm", "classifier"."""
    return load_checkpoint(path, None)["ldm"]["kind"]


def _weights(checkpoint: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def _load_into(path: str | Path, built: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load `state` into `built` strictly, except that a VAE saved before it carried a latent
    normaliser loads without one (left unfitted)."""
    result = built.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("normalizer.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: its {what} weights do not match its recorded config (missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return built.eval()


def _load_network(path: str | Path, network: str, build: Callable[..., nn.Module], kinds: tuple[str, ...]) -> nn.Module:
    """Rebuild `network` ("vae", ...) from its recorded config and its `<network>.` weights (eval
    mode), from a checkpoint written by one of the systems `kinds`."""
    checkpoint = load_checkpoint(path, None)
    kind = checkpoint["ldm"]["kind"]
    if kind not in kinds:
        raise CheckpointError(f"{path} is a {kind} checkpoint, but a {' or '.join(kinds)} checkpoint is needed")
    if kind == "ldm":
        return _ldm_first_stage(path, checkpoint)
    try:
        built = build(**checkpoint["ldm"][f"{network}_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its recorded {network} config does not build ({e})") from e
    return _load_into(path, built, _weights(checkpoint, f"{network}."), network)


def _ldm_first_stage(path: str | Path, checkpoint: dict[str, Any]) -> nn.Module:
    try:
        first_stage = build(checkpoint["hyper_parameters"]["first_stage"], nn.Module)
    except (KeyError, TypeError, SpecError) as e:
        raise CheckpointError(
            f"{path}: no first stage can be rebuilt from it ({one_line(str(e))[:200]}); an LDM "
            "checkpoint from an older version of ldm: train it again"
        ) from e
    return _load_into(path, first_stage, _weights(checkpoint, "first_stage."), "first stage")


def load_first_stage(path: str | Path) -> nn.Module:
    """The first stage of a VAE checkpoint (the VAE; its latent scale unfitted), or the one an LDM
    checkpoint holds (its VAE, or the identity of a pixel-space model, with the fitted scale)."""
    return _load_network(path, "vae", AutoencoderKL, ("vae", "ldm"))


def load_vae(path: str | Path) -> AutoencoderKL:
    """Rebuild the VAE a `VAEModule` checkpoint was trained with, or the one an LDM checkpoint holds
    (the VAE its latents came from), weights included (eval mode)."""
    first_stage = load_first_stage(path)
    if not isinstance(first_stage, AutoencoderKL):
        raise CheckpointError(
            f"{path} is a pixel-space model ({type(first_stage).__name__} first stage): it holds no VAE"
        )
    return first_stage


def load_classifier(path: str | Path) -> MNISTClassifier:
    """Rebuild the classifier a `ClassifierModule` checkpoint was trained with (eval mode)."""
    return _load_network(path, "classifier", MNISTClassifier, ("classifier",))


def checkpoint_of(source: str | Path | None = None, registry: str | Path = "logs/latest") -> Path:
    """The checkpoint `source` names: a .ckpt file; a run folder (its best checkpoint, else its
    last.ckpt); a registry folder holding ldm.json (its LDM); or None for the latest LDM in `registry`."""
    if source is None:
        if not (Path(registry) / "ldm.json").is_file():
            raise CheckpointError(
                f"No LDM run recorded in {Path(registry) / 'ldm.json'}: train one (python train.py "
                "model=ldm), or name a checkpoint, run folder or registry folder"
            )
        return find_latest(registry, "ldm")
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if (path / "ldm.json").is_file():
        return find_latest(path, "ldm")
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir():
        best = sorted(p for p in checkpoints.glob("*.ckpt") if not p.name.startswith("last"))
        if best or (checkpoints / "last.ckpt").is_file():
            return best[-1] if best else checkpoints / "last.ckpt"
    raise CheckpointError(
        f"{path} is neither a checkpoint, a run folder with checkpoints/ nor a registry folder "
        "with ldm.json: pass e.g. logs/ldm/runs/<time> or logs/ldm/runs/<time>/checkpoints/last.ckpt"
    )
