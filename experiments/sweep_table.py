"""The schedule sweep's table (Markdown, seed spread) and figure (FID per schedule, one dot per seed),
from the rows experiments/schedule_sweep.py collects."""

from __future__ import annotations

import statistics
from pathlib import Path

from ldm.io import atomic_write

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid", "interpolation")  # plotting order


def table(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["schedule"], row["parameterization"]), []).append(row)
    lines = [
        "| schedule | parameterization | FID per seed | FID mean | KID mean | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for (schedule, param), members in sorted(groups.items(), key=lambda kv: _order(kv[0][0])):
        members = sorted(members, key=lambda r: r["seed"])
        fids = [m["metrics"]["fid"] for m in members]

        def mean(key: str, members: list[dict] = members) -> float:
            return statistics.mean(m["metrics"][key] for m in members)

        lines.append(
            f"| {schedule} | {param} | "
            + " / ".join(f"{f:.3f}" for f in fids)
            + f" | **{statistics.mean(fids):.3f}** | "
            f"{mean('kid'):.4f} | {mean('precision'):.3f} | {mean('recall'):.3f} |"
        )
    floors = [r["floor_fid"] for r in rows if r["floor_fid"] is not None]
    if floors:
        lines.append(f"\nFloor (real train digits, same count): FID {statistics.mean(floors):.3f}.")
    return "\n".join(lines)


def _order(schedule: str) -> tuple[int, str]:
    return (SCHEDULES.index(schedule) if schedule in SCHEDULES else len(SCHEDULES), schedule)


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedules = sorted({r["schedule"] for r in rows}, key=_order)
    params = sorted({r["parameterization"] for r in rows})
    width = 0.8 / len(params)
    fig, ax = plt.subplots(figsize=(1.6 * len(schedules) + 2, 3.6))
    for j, param in enumerate(params):
        colour = f"C{j}"
        for i, schedule in enumerate(schedules):
            fids = [r["metrics"]["fid"] for r in rows if r["schedule"] == schedule and r["parameterization"] == param]
            if not fids:
                continue
            x = i + (j - (len(params) - 1) / 2) * width
            ax.bar(x, statistics.mean(fids), width * 0.9, color=colour, alpha=0.35, label=param if i == 0 else None)
            ax.scatter([x] * len(fids), fids, color=colour, s=14, zorder=3)
    floors = [r["floor_fid"] for r in rows if r["floor_fid"] is not None]
    if floors:
        ax.axhline(statistics.mean(floors), color="black", lw=0.8, ls="--", label="floor (real digits)")
    ax.set(xticks=range(len(schedules)), xticklabels=schedules, ylabel="FID (classifier features)")
    ax.set_title("FID per schedule: bar = mean over seeds, dots = seeds", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out
