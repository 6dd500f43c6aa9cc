"""FID and conditional accuracy against the guidance scale w, from a guidance sweep's metrics.

    python experiments/plot_guidance.py OUT/w*/metrics.json --out guidance.png

Each metrics.json is evaluate.py's output in a folder named w<scale> (as experiments/guidance.sh
writes them). The floor (real train digits, same sample count) is drawn as a dashed line.
Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def load(paths: list[Path]) -> tuple[list[tuple[float, dict]], dict, int]:
    """[(w, metrics)] sorted by w, the floor's metrics, the sample count; all files must share N
    (then they share the floor too: real train digits vs the test set at that N)."""
    rows, floor, counts = [], {}, set()
    for path in paths:
        match = re.fullmatch(r"w(\d+(?:\.\d+)?)", path.parent.name)
        if match is None:
            raise SystemExit(f"{path}: its folder must be named w<scale>, e.g. w1.5 (guidance.sh's layout)")
        result = json.loads(path.read_text())
        if "cond_acc" not in result["metrics"]:
            raise SystemExit(f"{path}: no conditional accuracy; these are not samples of a conditional model")
        rows.append((float(match.group(1)), result["metrics"]))
        floor = result["floor"]
        counts.add(result["num_samples"])
    if len(counts) != 1:
        raise SystemExit(f"mixed sample counts {sorted(counts)}: FID is only comparable at one N")
    return sorted(rows, key=lambda row: row[0]), floor, counts.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("guidance.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, floor, n = load(args.metrics)
    ws = [w for w, _ in rows]
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_fid.plot(ws, [m["fid"] for _, m in rows], "o-", label="samples")
    ax_fid.axhline(floor["fid"], ls="--", c="gray", label="floor (real train digits)")
    ax_fid.set(xlabel="guidance w", ylabel="FID (classifier features)", yscale="log", title=f"FID, N = {n}")
    ax_fid.legend()
    ax_acc.plot(ws, [100 * m["cond_acc"] for _, m in rows], "o-", c="C1")
    ax_acc.axhline(99, ls="--", c="gray", label="99 %")
    ax_acc.set(xlabel="guidance w", ylabel="conditional accuracy (%)", title="digit asked for = digit shown")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
