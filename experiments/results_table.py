"""Print evaluate.py results (metrics.json files) as one Markdown table, with the floor rows.

python experiments/results_table.py out/*/metrics.json

FID / floor: the row's FID over the FID real train digits reach against the same reference with
the same count (the `floor` evaluate.py computes); 1.0 would be indistinguishable from real data
for this judge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ["fid", "kid", "is", "precision", "recall", "cond_acc"]


def main(paths: list[str]) -> None:
    rows, floors = [], {}
    for path in map(Path, paths):
        result = json.loads(path.read_text())
        seconds = result.get("sampling", {}).get("seconds")
        rows.append((path.parent.name, result["num_samples"], result["metrics"], seconds))
        if "floor" in result:
            floors[result["num_samples"]] = result["floor"]
    keys = [k for k in KEYS if any(k in m for _, _, m, _ in rows)]
    print("| samples | N | " + " | ".join(keys) + " | FID / floor | sampling s (incl. decode) |")
    print("|---" * (len(keys) + 4) + "|")
    floor_rows = [(f"floor (real train, N={n})", n, f, None) for n, f in sorted(floors.items())]
    for name, n, metrics, seconds in rows + floor_rows:
        cells = [f"{metrics[k]:.4g}" if k in metrics else "" for k in keys]
        floor = floors.get(n, {}).get("fid")
        ratio = f"{metrics['fid'] / floor:.2f}x" if floor and "fid" in metrics else ""
        print(f"| {name} | {n} | " + " | ".join(cells) + f" | {ratio} | " + (f"{seconds:.1f} |" if seconds else " |"))


if __name__ == "__main__":
    main(sys.argv[1:])
