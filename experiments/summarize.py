"""Print the numbers of one or more training runs as a Markdown table.

    python experiments/summarize.py logs/vae/runs/<time> [more run dirs ...]

Reads each run's csv/metrics.csv (written by the CSV logger): per epoch the validation metrics,
the training throughput and the epoch time; then the test metrics. Prints one row per epoch and
run, ready to paste into an experiment README.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [
    "val/loss",
    "val/psnr",
    "val/ssim",
    "val/kl",
    "val/acc",
    "val/fid",
    "val/kid",
    "train/samples_per_sec",
    "train/epoch_seconds",
]


def epochs(run: Path) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """Per-epoch metrics (last value logged in each epoch) and the test metrics of one run."""
    per_epoch: dict[int, dict[str, float]] = defaultdict(dict)
    test: dict[str, float] = {}
    with open(run / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")}
            if any(k.startswith("test/") for k in values):
                test.update(values)
            elif row.get("epoch"):
                per_epoch[int(float(row["epoch"]))].update(values)
    return dict(per_epoch), test


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        per_epoch, test = epochs(run)
        present = [c for c in COLUMNS if any(c in m for m in per_epoch.values())]
        print(f"\n{run}\n")
        print("| epoch | " + " | ".join(present) + " |")
        print("|---" * (len(present) + 1) + "|")
        for epoch, metrics in sorted(per_epoch.items()):
            print(f"| {epoch} | " + " | ".join(f"{metrics[c]:.4g}" if c in metrics else "" for c in present) + " |")
        total = sum(m.get("train/epoch_seconds", 0.0) for m in per_epoch.values())
        print(f"\ntraining time {total:.0f} s; test: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(test.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
