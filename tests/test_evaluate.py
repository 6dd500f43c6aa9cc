"""evaluate.py end to end on tiny data: table + JSON with the documented keys; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, fake_digits, save_vae_checkpoint
from test_classifier import save_classifier_checkpoint

KEYS = {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall"}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import train  # noqa: F401  (registers resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _base(tmp_path: Path, mnist_dir: Path) -> list[str]:
    classifier = save_classifier_checkpoint(tmp_path / "classifier.ckpt")
    return [f"classifier_ckpt={classifier}", f"paths.data_dir={mnist_dir}", "data.val_size=64",
            f"cache_dir={tmp_path / 'cache'}", "device=cpu"]


def test_evaluate_saved_samples_with_labels(tmp_path: Path, mnist_dir: Path) -> None:
    from evaluate import evaluate

    images, labels = fake_digits(50, seed=3)
    np.savez(tmp_path / "samples.npz", images=images, labels=labels.astype(np.int64))
    result = evaluate(_compose([f"samples={tmp_path / 'samples.npz'}", *_base(tmp_path, mnist_dir)]))
    assert set(result["metrics"]) == KEYS | {"cond_acc"} and set(result["floor"]) == KEYS
    assert result["num_samples"] == 50
    written = (tmp_path / "metrics.json").read_text()
    assert '"fid"' in written and '"floor"' in written


def test_evaluate_samples_a_checkpoint_first(tmp_path: Path, mnist_dir: Path) -> None:
    from evaluate import evaluate

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    out = tmp_path / "vae_samples"
    result = evaluate(_compose([f"ckpt={vae}", "num_samples=20", f"out={out}", "floor=false", *_base(tmp_path, mnist_dir)]))
    assert (out / "samples.npz").is_file() and (out / "metrics.json").is_file()
    assert set(result["metrics"]) == KEYS and "floor" not in result


def test_bad_samples_file_is_a_clear_error(tmp_path: Path, mnist_dir: Path) -> None:
    from evaluate import evaluate

    np.savez(tmp_path / "wrong.npz", pictures=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(KeyError, match="no `images` array"):
        evaluate(_compose([f"samples={tmp_path / 'wrong.npz'}", *_base(tmp_path, mnist_dir)]))
    with pytest.raises(FileNotFoundError, match="python sample.py"):
        evaluate(_compose([f"samples={tmp_path / 'missing.npz'}", *_base(tmp_path, mnist_dir)]))
