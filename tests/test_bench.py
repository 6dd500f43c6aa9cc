"""experiments/bench.py: the quick profile runs end to end on CPU and reports what its README documents."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench.py"
TOP_KEYS = {
    "device",
    "device_name",
    "cpu_threads",
    "torch",
    "lightning",
    "diffusers",
    "config",
    "rows",
    "ratio_vs_diffusers",
}
ROW_KEYS = {
    "name",
    "unit",
    "throughput",
    "ms_per_step",
    "seconds_per_10k",
    "batch_size",
    "steps",
    "params",
    "peak_mem_mib",
    "note",
}
OUR_ROWS = ["ldm_train", "vae_train", "sample_ddim50", "sample_dpmpp20"]


@pytest.fixture(scope="module")
def bench():
    """experiments/bench.py as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench", None)


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def test_quick_profile_reports_every_row(bench, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = [
        "--quick",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--num-samples",
        "4",
        "--num-train",
        "24",
        "--out",
        str(out),
    ]
    report = bench.main(argv)
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == OUR_ROWS + ["diffusers_train"]
    for name in OUR_ROWS:
        assert _positive(rows[name]["throughput"]), rows[name]
    assert _positive(rows["ldm_train"]["ms_per_step"]) and _positive(rows["sample_ddim50"]["seconds_per_10k"])
    assert rows["ldm_train"]["batch_size"] == 8 and rows["sample_ddim50"]["steps"] == 50
    assert rows["sample_dpmpp20"]["steps"] == 20

    saved = json.loads(out.read_text())
    assert set(saved) == TOP_KEYS and saved["device"] in ("cpu", "cuda")
    assert all(set(row) == ROW_KEYS for row in saved["rows"])
    assert saved["rows"] == report["rows"]

    reference = rows["diffusers_train"]
    if importlib.util.find_spec("diffusers") is None:
        assert reference["throughput"] is None and "pip install -e .[bench]" in reference["note"]
        assert saved["ratio_vs_diffusers"] is None
    else:
        assert _positive(reference["throughput"])
        # Matched parameter count (the bench's promise: within 15 %).
        assert abs(reference["params"] / rows["ldm_train"]["params"] - 1) <= 0.15
        assert _positive(saved["ratio_vs_diffusers"])


def test_missing_diffusers_is_one_row_not_a_crash(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "diffusers" else real_find_spec(name, *args)

    monkeypatch.setattr(bench.importlib.util, "find_spec", find_spec)
    args = bench.parse_args(["--quick"])
    row = bench.diffusers_train_row(args, bench.torch.device("cpu"))
    assert row.throughput is None and row.note == bench.DIFFUSERS_MISSING
    assert bench.speed_ratio([row]) is None


def test_quick_defaults_and_compile_modes(bench) -> None:
    args = bench.parse_args(["--quick"])
    assert (args.batch_size, args.num_train, args.compile) == (64, 8 * 64, False)
    assert bench.parse_args(["--compile"]).compile is True
    assert bench.parse_args(["--compile", "reduce-overhead"]).compile == "reduce-overhead"
    full = bench.parse_args([])
    assert (full.batch_size, full.num_samples, full.num_train) == (1024, 10_000, 55_000)


def test_compile_reaches_the_systems(bench) -> None:
    module, note = bench.build_ldm("reduce-overhead")
    assert module.compiled.mode == "reduce-overhead" and note == "torch.compile(reduce-overhead)"
    assert bench.build_vae(False)[0].compiled.mode is False and bench.build_vae(False)[1] == ""
