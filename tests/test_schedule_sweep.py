"""experiments/schedule_sweep.sh (issue 16 item 6) end to end on tiny data: one multirun, every job
scored, one table and one figure."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, save_vae_checkpoint
from test_classifier import save_classifier_checkpoint


@pytest.mark.slow
def test_the_sweep_trains_every_point_and_scores_each_job(tmp_path: Path, mnist_dir: Path) -> None:
    env = {
        **os.environ,
        "LDM_DATA_DIR": str(mnist_dir),
        "VAE_CKPT": str(save_vae_checkpoint(tmp_path / "vae.ckpt")),
        "CLASSIFIER_CKPT": str(save_classifier_checkpoint(tmp_path / "classifier.ckpt")),
        "GRID": "schedule=linear,sigmoid parameterization=eps,v seed=0",
        "SWEEP": "data.images.val_size=64",
        "EVAL_EXTRA": "data.val_size=64 device=cpu",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "experiments/schedule_sweep.sh"), "tiny", str(tmp_path / "root"), "24"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (sweep,) = (tmp_path / "root" / "logs" / "ldm" / "multiruns").iterdir()
    rows = json.loads((sweep / "sweep.json").read_text())
    assert sorted((r["schedule"], r["parameterization"]) for r in rows) == [
        ("linear", "eps"), ("linear", "v"), ("sigmoid", "eps"), ("sigmoid", "v")
    ]  # fmt: skip
    for row in rows:
        samples = np.load(sweep.parent / row["job"] / "eval_24" / "samples.npz")["images"]
        assert samples.shape == (24, 28, 28)
    assert (sweep / "fid.png").stat().st_size > 0
    assert "| linear | eps |" in done.stdout and "| sigmoid | v |" in done.stdout


@pytest.mark.parametrize(
    "script, args, env, says",
    [
        ("schedule_sweep.sh", ["gpu", "ROOT"], {}, "unknown profile gpu (cpu | tiny)"),
        ("schedule_sweep.sh", ["cpu", "ROOT", "many"], {}, "N=many must be a positive number of samples"),
        ("schedule_sweep.sh", ["cpu", "ROOT"], {}, "logs/latest/vae.json: train that stage first"),
        ("baselines.sh", ["ROOT", "0"], {}, "N=0 must be a positive number of samples"),
        (
            "baselines.sh",
            ["ROOT"],
            {"CLASSIFIER_CKPT": "/nonexistent.ckpt"},
            "CLASSIFIER_CKPT=/nonexistent.ckpt does not",
        ),
        ("baselines.sh", ["ROOT"], {}, "logs/latest/classifier.json: train that stage first"),
        ("objectives.sh", ["tiny", "ROOT", "-3"], {}, "N=-3 must be a positive number of samples"),
        ("objectives.sh", ["tiny", "ROOT"], {}, "logs/latest/vae.json: train that stage first"),
        (
            "objectives.sh",
            ["cpu", "ROOT"],
            {"VAE_CKPT": "/nonexistent.ckpt", "CLASSIFIER_CKPT": "/nonexistent.ckpt"},
            "VAE_CKPT=/nonexistent.ckpt does not exist",
        ),
        ("compare.sh", ["ROOT"], {"REGISTRY": "ROOT/logs/latest"}, "logs/latest/vae.json: train that stage first"),
    ],
)
def test_the_report_scripts_refuse_bad_arguments_before_any_training(
    tmp_path: Path, script: str, args: list[str], env: dict[str, str], says: str
) -> None:
    args = [str(tmp_path / "root") if a == "ROOT" else a for a in args]
    env = {k: v.replace("ROOT", str(tmp_path / "root")) for k, v in env.items()}
    done = subprocess.run(
        ["bash", str(ROOT / "experiments" / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "root" / "logs").exists()


@pytest.mark.parametrize("script", ["schedule_sweep.sh", "objectives.sh", "baselines.sh", "compare.sh"])
def test_checkpoints_given_relative_to_the_caller_are_found_and_their_kind_checked_first(
    tmp_path: Path, script: str
) -> None:
    """Started from another folder with relative paths: the scripts cd to the repository, so they must
    resolve the caller's paths first; a VAE given as the judge is refused before any training."""
    save_vae_checkpoint(tmp_path / "vae.ckpt")
    args = {"schedule_sweep.sh": ["cpu", "root"], "objectives.sh": ["cpu", "root"]}.get(script, ["root"])
    env = {"VAE_CKPT": "vae.ckpt", "LDM_CKPT": "vae.ckpt", "CLASSIFIER_CKPT": "vae.ckpt"}
    if script == "compare.sh":
        env["VAE_CKPT"] = env["LDM_CKPT"] = str(save_classifier_checkpoint(tmp_path / "judge.ckpt"))
    done = subprocess.run(
        ["bash", str(ROOT / "experiments" / script), *args],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wrong = "VAE_CKPT" if script == "compare.sh" else "CLASSIFIER_CKPT"
    says = f"is a {'classifier' if script == 'compare.sh' else 'vae'} checkpoint; it must be a"
    assert done.returncode == 2 and says in done.stderr and wrong in done.stderr, done.stderr
    assert str(tmp_path) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "root" / "logs").exists()


def test_a_job_short_of_the_sweeps_steps_is_left_out_not_scored(tmp_path: Path, capsys) -> None:
    """An interrupted job keeps a last.ckpt from an earlier epoch: scoring it would compare unequal steps."""
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    import schedule_sweep

    sweep = tmp_path / "sweep"
    for job, (schedule, step) in enumerate([("linear", 8), ("sigmoid", 4), ("cosine", None)]):
        folder = sweep / str(job)
        (folder / ".hydra" / "t").mkdir(parents=True)
        (folder / ".hydra" / "t" / "overrides.yaml").write_text(
            f"- schedule={schedule}\n- parameterization=eps\n- seed=0\n"
        )
        (folder / "checkpoints").mkdir()
        if step is not None:
            torch.save({"global_step": step}, folder / "checkpoints" / "last.ckpt")
        (folder / "eval_4").mkdir()  # already scored: collect reads it instead of running evaluate.py
        (folder / "eval_4" / "metrics.json").write_text(
            json.dumps({"metrics": {"fid": float(job)}, "classifier_sha256": "the judge"})
        )
    (sweep / "2" / "checkpoints" / "last.ckpt").write_bytes(b"cut")  # a job killed while saving
    rows = schedule_sweep.collect([sweep], schedule_sweep.Judge(Path("unused.ckpt"), "the judge"), 4, [], report=sweep)
    assert [r["schedule"] for r in rows] == ["linear"] and rows[0]["steps"] == 8
    said = capsys.readouterr().out
    assert "1 stopped at step 4 of 8; rerun it (schedule=sigmoid parameterization=eps seed=0)" in said
    assert "2 has no readable checkpoints/last.ckpt" in said


def _report(folder: Path, judge: str, points: list[tuple[str, str]]) -> Path:
    """An earlier report folder: sweep.json and, per row, samples.npz + metrics.json by `judge`."""
    rows = []
    for i, (schedule, param) in enumerate(points):
        name = f"{schedule}.{param}.seed0"
        (folder / name).mkdir(parents=True)
        images = np.random.default_rng(i).integers(0, 256, (16, 28, 28), dtype=np.uint8)
        np.savez_compressed(folder / name / "samples.npz", images=images)
        metrics = {"metrics": {"fid": 9.0}, "classifier_sha256": judge, "sampling": {"seconds": 1.5}}
        (folder / name / "metrics.json").write_text(json.dumps(metrics))
        rows.append({"folder": name, "steps": 8, "schedule": schedule, "parameterization": param, "seed": "0"})
    (folder / "sweep.json").write_text(json.dumps(rows))
    return folder / "sweep.json"


def test_an_earlier_report_is_rescored_in_its_copy_when_its_judge_differs(
    tmp_path: Path, mnist_dir: Path, monkeypatch, capsys
) -> None:
    """Rows of a committed report join the table only as scored by this run's judge: a retrained
    classifier (another feature space) re-scores their saved samples, in the new report's copy (the
    earlier report is not written; its numbers are kept as earlier_judge); the same judge reads them."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import schedule_sweep

    monkeypatch.setenv("LDM_DATA_DIR", str(mnist_dir))
    judge = schedule_sweep.Judge.load(save_classifier_checkpoint(tmp_path / "judge.ckpt", seed=1))
    scored = _report(tmp_path / "old", "another judge", [("linear", "eps"), ("sigmoid", "v")])
    (tmp_path / "old" / "sigmoid.v.seed0" / "metrics.json").write_text('{"trunc')  # unreadable: re-scored too
    before = {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    extra, new = ["data.val_size=64", "device=cpu"], tmp_path / "new"
    rows = schedule_sweep.collect([], judge, 16, extra, [scored], report=new, copy=True)
    said = capsys.readouterr().out
    assert "linear.eps.seed0/samples.npz: its metrics.json is another judge's" in said
    assert "sigmoid.v.seed0/samples.npz: its metrics.json is unreadable" in said
    assert {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()} == before
    assert [r["folder"] for r in rows] == ["linear.eps.seed0", "sigmoid.v.seed0"]
    for row in rows:
        metrics = json.loads((new / row["folder"] / "metrics.json").read_text())
        assert metrics["classifier_sha256"] == judge.digest and row["metrics"] == metrics["metrics"]
        assert metrics["metrics"]["fid"] != 9.0 and row["floor_fid"] == metrics["floor"]["fid"]
    first = json.loads((new / "linear.eps.seed0" / "metrics.json").read_text())
    assert first["earlier_judge"]["metrics"] == {"fid": 9.0} and first["sampling"] == {"seconds": 1.5}
    assert (new / "linear.eps.seed0" / "samples.npz").read_bytes() == before[
        tmp_path / "old" / "linear.eps.seed0" / "samples.npz"
    ]
    (new / "sweep.json").write_text(json.dumps(rows))  # what main writes

    again = schedule_sweep.collect([], judge, 16, extra, [new / "sweep.json"], report=new)  # the same judge
    assert "re-scoring" not in capsys.readouterr().out and again == rows


@pytest.mark.parametrize(
    "rows, says",
    [
        ([], "holds no rows"),
        ({"folder": "x"}, "holds no rows"),
        ([{"folder": "x", "steps": 8, "schedule": "linear", "parameterization": "eps"}], "KeyError: 'seed'"),
        ([{"folder": "/abs", "steps": 8, "schedule": "linear", "parameterization": "eps", "seed": 0}], "relative"),
        (
            [
                {"folder": "a", "steps": 8, "schedule": "linear", "parameterization": "eps", "seed": "0"},
                {"folder": "b", "steps": 8, "schedule": "linear", "parameterization": "eps", "seed": 0},
            ],
            "linear/eps/0 appears twice",
        ),
    ],
)
def test_a_bad_earlier_report_is_refused_in_one_line_before_any_scoring(tmp_path: Path, rows, says: str) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import schedule_sweep

    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    judge = schedule_sweep.Judge(Path("unused.ckpt"), "the judge")  # nothing may be scored
    with pytest.raises(SystemExit, match=says):
        schedule_sweep.collect([], judge, 16, [], [tmp_path / "sweep.json"], report=tmp_path / "new", copy=True)
    assert not (tmp_path / "new").exists()
