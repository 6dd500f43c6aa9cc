"""experiments/plot_metrics.py on real CSV files as runs and sweeps write them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
CSV = (
    "epoch,step,train/loss_step,train/loss_epoch,val/loss,val/fid\n0,9,1.0,,,\n0,10,,0.9,0.8,12.0\n1,20,,0.6,0.5,6.0\n"
)


def test_plots_a_sweep_and_reads_each_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import plot_metrics

    for job, override in (("0", "schedule=linear"), ("1", "schedule=cosine")):
        (tmp_path / "sweep" / job / "csv").mkdir(parents=True)
        (tmp_path / "sweep" / job / "csv" / "metrics.csv").write_text(CSV)
        (tmp_path / "sweep" / job / ".hydra" / "t0").mkdir(parents=True)
        (tmp_path / "sweep" / job / ".hydra" / "t0" / "overrides.yaml").write_text(f"- model=ldm\n- {override}\n")
    files = plot_metrics.find_runs([tmp_path / "sweep"])
    assert [f.parents[1].name for f in files] == ["0", "1"]
    assert plot_metrics.label_of(files[1]) == "1: model=ldm schedule=cosine"
    series = plot_metrics.read_series(files[0], ("val/fid", "train/loss_epoch", "missing"), "epoch")
    assert series == {"val/fid": ([0.0, 1.0], [12.0, 6.0]), "train/loss_epoch": ([0.0, 1.0], [0.9, 0.6])}
    out = plot_metrics.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "m.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no csv/metrics.csv"):
        plot_metrics.main([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="none of"):
        plot_metrics.main([str(tmp_path / "sweep"), "--keys", "val/xyz", "--out", str(tmp_path / "n.png")])


def test_tabulate_prints_each_row_against_the_floor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    import results_table

    for name, fid in (("ddim_10", 0.6), ("ddim_20", 0.3)):
        (tmp_path / name).mkdir()
        result = {
            "num_samples": 100,
            "metrics": {"fid": fid, "kid": 0.01},
            "floor": {"fid": 0.2, "kid": 0.0},
            "sampling": {"seconds": 12.5},
        }
        (tmp_path / name / "metrics.json").write_text(json.dumps(result))
    results_table.main([str(tmp_path / "ddim_10" / "metrics.json"), str(tmp_path / "ddim_20" / "metrics.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| ddim_10 | 100 | 0.6 | 0.01 | 3.00x | 12.5 |"
    assert lines[3].startswith("| ddim_20 | 100 | 0.3 | 0.01 | 1.50x |")
    assert lines[4] == "| floor (real train, N=100) | 100 | 0.2 | 0 | 1.00x |  |"
