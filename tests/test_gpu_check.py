"""experiments/gpu_check.sh, the one prepared device check (issue 17), runs end to end in its quick
CPU mode, so no GPU minute is ever spent on a typo in it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.parametrize(
    "compile", [pytest.param(False, id="eager"), pytest.param(True, id="compiled", marks=pytest.mark.slow)]
)
def test_gpu_check_quick_runs_end_to_end(tmp_path: Path, mnist_dir: Path, compile: bool) -> None:
    """The eager variant runs by default; with torch.compile (minutes of CPU inductor) it is `slow`."""
    env = {
        **os.environ,
        "LDM_DATA_DIR": str(mnist_dir),
        "VAE_EXTRA": "data.val_size=64",
        "LDM_EXTRA": "data.images.val_size=64",
        "COMPILE": "1" if compile else "0",
    }
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", str(ROOT / "experiments" / "gpu_check.sh"), str(out), "quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for name in ("bench_eager.json", "bench_compiled.json")[: 2 if compile else 1]:
        rows = {row["name"] for row in json.loads((out / name).read_text())["rows"]}
        assert {"ldm_train", "vae_train", "sample_ddim50"} <= rows, rows
    times = (out / "pipeline" / "pipeline_times.txt").read_text()
    assert all(stage in times for stage in ("vae", "ldm", "samples", "total"))
    assert (out / "pipeline" / "samples" / "grid.png").is_file() and "done in" in (out / "environment.txt").read_text()
