"""Loss and FID against epoch (or step) from the metrics.csv of runs and sweeps: one PNG.

    python experiments/plot_metrics.py logs/ldm/runs/2026-12-03_10-00-00
    python experiments/plot_metrics.py logs/ldm/multiruns/2026-12-03_11-00-00 --out sweep.png   # every job
    python experiments/plot_metrics.py RUN_A RUN_B --keys val/fid val/loss --x step

Each folder is a run (it holds csv/metrics.csv) or a sweep (its jobs do); each run is one line per
panel, labelled by its folder name (a sweep's jobs: their overrides from .hydra, if recorded).
Needs matplotlib: pip install -e ".[plot]".
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ldm.io import atomic_write  # noqa: E402

DEFAULT_KEYS = ("train/loss_epoch", "val/loss", "val/fid")


def find_runs(folders: list[Path]) -> list[Path]:
    """The metrics.csv files under each folder (a run, or a sweep of runs), in folder order."""
    found = []
    for folder in folders:
        if folder.is_file() and folder.name == "metrics.csv":
            found.append(folder)
            continue
        files = sorted(folder.glob("csv/metrics.csv")) or sorted(
            folder.glob("*/csv/metrics.csv"), key=lambda p: _job_order(p.parents[1].name)
        )
        if not files:
            raise SystemExit(
                f"plot_metrics.py: no csv/metrics.csv in {folder} or its job folders: pass a run "
                "folder (logs/<model>/runs/<time>) or a sweep folder (logs/<model>/multiruns/<time>)"
            )
        found += files
    return found


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (math.inf, name)  # type: ignore[return-value]


def read_series(path: Path, keys: tuple[str, ...], x: str) -> dict[str, tuple[list[float], list[float]]]:
    """{key: (xs, ys)} for each key present in the CSV (rows where both x and the key have values)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for key in keys:
                value, at = row.get(key, ""), row.get(x, "")
                if value not in ("", None) and at not in ("", None):
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(float(at))
                    ys.append(float(value))
    return series


def label_of(path: Path) -> str:
    run = path.parents[1]
    records = sorted(run.glob(".hydra/**/overrides.yaml"))  # .hydra/<launch time>/overrides.yaml
    if run.name.isdigit() and records:
        lines = [line[2:].strip() for line in records[0].read_text().splitlines() if line.startswith("- ")]
        return f"{run.name}: " + " ".join(lines)[:60]
    return run.name


def plot(files: list[Path], keys: tuple[str, ...], x: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(label_of(f), read_series(f, keys, x)) for f in files]
    present = [k for k in keys if any(k in series for _, series in data)]
    if not present:
        raise SystemExit(f"plot_metrics.py: none of {list(keys)} is in {[str(f) for f in files]}")
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.4), squeeze=False)
    for ax, key in zip(axes[0], present):
        for label, series in data:
            if key in series:
                ax.plot(*series[key], marker="o" if len(series[key][0]) < 30 else None, ms=3, label=label)
        ax.set(title=key, xlabel=x)
        if key.startswith("val/fid"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if len(data) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders (or metrics.csv files)")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="metrics to plot, one panel each")
    parser.add_argument("--x", default="epoch", choices=["epoch", "step"])
    parser.add_argument("--out", type=Path, default=Path("metrics.png"))
    args = parser.parse_args(argv)
    out = plot(find_runs(args.folders), tuple(args.keys), args.x, args.out)
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
