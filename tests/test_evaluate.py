"""evaluate.py end to end on tiny data: table + JSON with the documented keys; one-line errors for
bad samples files, labels, k and an unwritable JSON path (the table is printed first)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldm.checkpoints import CheckpointError
from ldm.errors import ConfigError
from ldm.io import WriteError
from ldm.samples import SamplesError

from conftest import ROOT, fake_digits, save_vae_checkpoint
from test_classifier import save_classifier_checkpoint

KEYS = {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall"}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ldm.cli.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _base(tmp_path: Path, mnist_dir: Path) -> list[str]:
    classifier = save_classifier_checkpoint(tmp_path / "classifier.ckpt")
    return [
        f"classifier_ckpt={classifier}",
        f"paths.data_dir={mnist_dir}",
        "data.val_size=64",
        f"cache_dir={tmp_path / 'cache'}",
        "device=cpu",
    ]


def test_evaluate_saved_samples_with_labels(tmp_path: Path, mnist_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ldm.cli.evaluate import evaluate

    images, labels = fake_digits(50, seed=3)
    np.savez(tmp_path / "samples.npz", images=images, labels=labels.astype(np.int64))
    with caplog.at_level("INFO", logger="evaluate"):
        result = evaluate(_compose([f"samples={tmp_path / 'samples.npz'}", *_base(tmp_path, mnist_dir)]))
    for step in ("features of the 64 real test digits", "scoring 50 samples: ", "the floor: 50 real train digits"):
        assert step in caplog.text  # each step of the scoring says when it starts and how long it took
    assert set(result["metrics"]) == KEYS | {"cond_acc"} and set(result["floor"]) == KEYS
    assert result["num_samples"] == 50
    written = (tmp_path / "metrics.json").read_text()
    assert '"fid"' in written and '"floor"' in written


def test_evaluate_samples_a_checkpoint_first(tmp_path: Path, mnist_dir: Path) -> None:
    from ldm.cli.evaluate import evaluate

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    out = tmp_path / "vae_samples"
    result = evaluate(
        _compose([f"ckpt={vae}", "num_samples=20", f"out={out}", "floor=false", *_base(tmp_path, mnist_dir)])
    )
    assert (out / "samples.npz").is_file() and (out / "metrics.json").is_file()
    assert set(result["metrics"]) == KEYS and "floor" not in result


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["num_samples=3", "k=3"], "k=3 must be >= 1 and < the number of samples (3)"),
        (["num_samples=400"], "floor=true scores as many real train digits as there are samples (400)"),
        (["classifier_ckpt=/nonexistent.ckpt"], "classifier_ckpt=/nonexistent.ckpt does not exist"),
    ],
)
def test_counts_and_the_judge_are_checked_before_any_drawing(
    tmp_path: Path, mnist_dir: Path, overrides: list[str], says: str
) -> None:
    """A k, a sample count or a judge that cannot work is found before the (long) drawing, not after."""
    from ldm.cli.evaluate import evaluate

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    cfg = _compose([f"ckpt={vae}", f"out={tmp_path / 'out'}", *_base(tmp_path, mnist_dir), *overrides])
    with pytest.raises(ConfigError, match=re.escape(says)):
        evaluate(cfg)
    assert not (tmp_path / "out" / "samples.npz").exists()


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["prior=fitted"], "prior="),
        (["sampler=ddpm", "steps=10"], "steps=, sampler="),
        (["guidance=2"], "guidance="),
        (["num_samples=5", "trajectory=true", "grid_size=4"], "num_samples=, trajectory=, grid_size="),
        (["num_samples=64", "steps=null"], "num_samples=, steps="),  # at their defaults: still not honoured
    ],
)
def test_sampling_options_with_saved_samples_are_refused_not_ignored(
    tmp_path: Path, mnist_dir: Path, overrides: list[str], named: str
) -> None:
    from ldm.cli.evaluate import evaluate

    images, _ = fake_digits(8, seed=3)
    np.savez(tmp_path / "samples.npz", images=images)
    cfg = _compose([f"samples={tmp_path / 'samples.npz'}", *overrides, *_base(tmp_path, mnist_dir)])
    with pytest.raises(ConfigError, match=f"so {named} would be ignored: drop them, or leave samples= unset"):
        evaluate(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_a_misspelt_key_added_with_plus_is_refused_with_the_right_name(tmp_path: Path, mnist_dir: Path) -> None:
    """Hydra's own advice for a typo (+key=...) would add a key the run ignores."""
    from ldm.cli.evaluate import evaluate

    with pytest.raises(ConfigError, match="clasifier_ckpt= is not a setting here: did you mean classifier_ckpt="):
        evaluate(_compose(["+clasifier_ckpt=x.ckpt", *_base(tmp_path, mnist_dir)]))


def test_bad_samples_file_is_a_clear_error(tmp_path: Path, mnist_dir: Path) -> None:
    from ldm.cli.evaluate import evaluate

    np.savez(tmp_path / "wrong.npz", pictures=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(SamplesError, match="no `images` array"):
        evaluate(_compose([f"samples={tmp_path / 'wrong.npz'}", *_base(tmp_path, mnist_dir)]))
    with pytest.raises(SamplesError, match="python sample.py"):
        evaluate(_compose([f"samples={tmp_path / 'missing.npz'}", *_base(tmp_path, mnist_dir)]))
    np.savez(tmp_path / "ok.npz", images=fake_digits(8, seed=3)[0])
    with pytest.raises(CheckpointError, match=r"\(classifier_ckpt=PATH\)"):
        evaluate(
            _compose(
                [
                    f"samples={tmp_path / 'ok.npz'}",
                    *_base(tmp_path, mnist_dir),
                    "classifier_ckpt=null",
                    f"registry_dir={tmp_path / 'empty'}",
                ]
            )
        )


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((50, 1), np.int64), r"shape \(50,\)"),  # used to broadcast into a (50, 50) comparison
        (np.zeros(1, np.int64), r"shape \(50,\)"),
        (np.full(50, 10, np.int64), r"class ids in 0\.\.9"),
    ],
)
def test_labels_must_be_one_class_id_per_sample(tmp_path: Path, mnist_dir: Path, labels, message: str) -> None:
    from ldm.cli.evaluate import evaluate

    np.savez(tmp_path / "samples.npz", images=fake_digits(50, seed=3)[0], labels=labels)
    with pytest.raises(SamplesError, match=message):
        evaluate(_compose([f"samples={tmp_path / 'samples.npz'}", *_base(tmp_path, mnist_dir)]))
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("k", [0, -1, 50])
def test_k_must_be_between_1_and_the_number_of_samples(tmp_path: Path, mnist_dir: Path, k: int) -> None:
    from ldm.cli.evaluate import evaluate

    np.savez(tmp_path / "samples.npz", images=fake_digits(50, seed=3)[0])  # k=0 gave precision = recall = 0
    with pytest.raises(ConfigError, match=f"k={k} must be >= 1"):
        evaluate(_compose([f"samples={tmp_path / 'samples.npz'}", f"k={k}", *_base(tmp_path, mnist_dir)]))


def test_a_failed_json_write_keeps_the_numbers_on_screen(tmp_path: Path, mnist_dir: Path, capsys) -> None:
    from ldm.cli.evaluate import evaluate

    np.savez(tmp_path / "samples.npz", images=fake_digits(20, seed=3)[0])
    base = [f"samples={tmp_path / 'samples.npz'}", "floor=false", *_base(tmp_path, mnist_dir)]
    with pytest.raises(ConfigError, match="json=.* is a folder"):  # known before any work
        evaluate(_compose([*base, f"json={tmp_path}"]))
    (tmp_path / "a_file").write_text("")  # a real write failure: a folder that cannot be made
    with pytest.raises(WriteError, match="Pass json=PATH") as error:
        evaluate(_compose([*base, f"json={tmp_path / 'a_file' / 'metrics.json'}"]))
    assert "\n" not in str(error.value)
    printed = capsys.readouterr().out
    assert "fid" in printed and "precision" in printed  # the table came before the failed write


def test_one_line_error_and_exit_status_from_the_command_line(tmp_path: Path) -> None:
    """The wiring of `python evaluate.py`: real garbage bytes as samples are one log line, exit status 1."""
    (tmp_path / "samples.npz").write_bytes(np.random.default_rng(0).bytes(1000))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"samples={tmp_path / 'samples.npz'}", "device=cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and f"samples={tmp_path / 'samples.npz'} is not an .npz" in output


def test_the_floor_needs_as_many_real_digits_as_samples(tmp_path: Path, mnist_dir: Path) -> None:
    """300 samples but 256 training digits (320 minus the 64 of validation): the floor would silently
    be scored with fewer, so it is refused before any scoring; floor=false still scores."""
    from ldm.cli.evaluate import evaluate

    images, _ = fake_digits(300, seed=3)
    np.savez(tmp_path / "samples.npz", images=images)
    with pytest.raises(ConfigError, match=r"as many real train digits as there are samples \(300\).*has 256"):
        evaluate(_compose([f"samples={tmp_path / 'samples.npz'}", *_base(tmp_path, mnist_dir)]))
    assert evaluate(_compose([f"samples={tmp_path / 'samples.npz'}", "floor=false", *_base(tmp_path, mnist_dir)]))
