"""Print evaluate.py results (metrics.json files) as one Markdown table, with the floor rows.

python experiments/tabulate.py out/*/metrics.json
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
        rows.append(
            (path.parent.name, result["num_samples"], result["metrics"], result.get("sampling", {}).get("seconds"))
        )
        if "floor" in result:
            floors[result["num_samples"]] = result["floor"]
    keys = [k for k in KEYS if any(k in m for _, _, m, _ in rows)]
    print("| samples | N | " + " | ".join(keys) + " | sampling s (incl. decode) |")
    print("|---" * (len(keys) + 3) + "|")
    for name, n, metrics, seconds in rows + [
        (f"floor (real train, N={n})", n, f, None) for n, f in sorted(floors.items())
    ]:
        cells = [f"{metrics[k]:.4g}" if k in metrics else "" for k in keys]
        print(
            f"| {name} | {n} | " + " | ".join(cells) + f" | {seconds:.1f} |"
            if seconds
            else f"| {name} | {n} | " + " | ".join(cells) + " | |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
