"""experiments/sampler_variance.py: with the exact denoiser of Gaussian data, the long samplers
keep the data variance and few-step DDIM (eta = 1) loses a known share of it."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))


def test_variance_ratios_on_gaussian_data(tmp_path: Path) -> None:
    import sampler_variance

    results = sampler_variance.main(["--out", str(tmp_path), "--num", "500", "--dim", "8"])
    assert (tmp_path / "variance.json").is_file() and (tmp_path / "variance.png").is_file()
    for schedule in ("linear", "cosine", "sigmoid"):
        assert abs(results[schedule]["DDPM (all 1000 steps)"][1000] - 1) < 0.06  # exact posterior, all steps
        assert abs(results[schedule]["DDIM eta=0"][250] - 1) < 0.06  # the ODE, finely discretised
        assert results[schedule]["DDIM eta=1 (default)"][5] < 0.75  # few ancestral steps lose variance
        for n in (5, 10, 20):  # ... and the analytic variance gives it back
            assert abs(results[schedule]["DDIM eta=1 analytic variance"][n] - 1) < 0.08, (schedule, n)
    assert abs(results["flow"]["flow Heun"][20] - 1) < 0.06
