"""Score every job of a schedule x parameterization x seed sweep, then one table and one figure
(issue 16, item 6).

    python train.py -m model=ldm schedule=linear,scaled_linear,cosine,sigmoid,interpolation \
        parameterization=eps,v seed=0,1 ...                       # experiments/schedule_sweep.sh
    python experiments/schedule_sweep.py logs/ldm/multiruns/<time> [more sweeps] --classifier C.ckpt --num 2000

Each finished job folder (0, 1, ...) is scored at its last step (equal steps for every job) with
`evaluate.py ckpt=<job>/checkpoints/last.ckpt num_samples=N` into
<job>/eval_<N>/ (metrics.json, samples.npz, grid.png; skipped when already there and scored by the
same judge, re-scored from its samples.npz when another classifier scored it), grouped by the
job's `schedule`, `parameterization` and `seed` overrides (over all the sweeps given: e.g. one per
seed). --scored adds the rows of an earlier report's sweep.json (their samples re-scored when
their judge differs), so a report folder grows seed by seed even after the job folders are gone.
With --out, each new job's samples.npz, metrics.json and grid.png are copied to
OUT/<schedule>.<parameterization>.seed<k>/ beside sweep.json and fid.png: the folder to commit. A job that stopped early (its last.ckpt short of the most steps any job reached) or never
saved one is left out with a line saying so: rerun its configuration as another sweep
(GRID=... in schedule_sweep.sh) and pass both folders. Writes sweep.json, fid.png (FID per
schedule, one colour per parameterization, one dot per seed, a bar at the mean) and prints a
Markdown table with the seed spread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldm.io import atomic_write, atomic_write_json, safe_load  # noqa: E402

KEPT = ("samples.npz", "metrics.json", "grid.png")  # what a report folder keeps of each scored job

KEYS = ("schedule", "parameterization", "seed")
SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid", "interpolation")  # plotting order


def overrides(job: Path) -> dict[str, str]:
    """The job's `key=value` command-line overrides (Hydra's .hydra/<time>/overrides.yaml)."""
    import yaml

    files = sorted(job.glob(".hydra/*/overrides.yaml"))
    if not files:
        raise SystemExit(f"{job}: no .hydra/*/overrides.yaml; is this a job folder of a train.py -m sweep?")
    pairs = (item.split("=", 1) for item in yaml.safe_load(files[-1].read_text()) or [])
    return {key.lstrip("+"): value for key, value in pairs}


def _evaluate(command: list[str], what: Path) -> None:
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:  # evaluate.py says why in its last line (an ERROR line for a user error)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        why = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "no output")
        raise SystemExit(f"evaluate.py failed for {what} (exit {done.returncode}): {why}")


def judged(folder: Path, judge: Judge, extra: list[str], ckpt: Path | None = None, num: int = 0) -> dict:
    """folder/metrics.json as `judge` scores it: read when that judge wrote it; re-scored from
    folder/samples.npz when another one did; else (a job) sampled from `ckpt` and scored."""
    metrics = folder / "metrics.json"
    if metrics.is_file():
        result = json.loads(metrics.read_text())
        if result.get("classifier_sha256") == judge.digest:
            return result
    if (folder / "samples.npz").is_file() and (metrics.is_file() or ckpt is None):
        print(f"re-scoring {folder / 'samples.npz'}: {metrics.name} is another judge's, or none", flush=True)
        command = [f"samples={folder / 'samples.npz'}", f"json={metrics}"]
    elif ckpt is not None:
        command = [f"ckpt={ckpt}", f"num_samples={num}", f"out={folder}"]
    else:
        raise SystemExit(f"{folder} holds no samples.npz to score: its row cannot be judged")
    _evaluate([sys.executable, str(ROOT / "evaluate.py"), *command, f"classifier_ckpt={judge.path}", *extra], folder)
    return json.loads(metrics.read_text())


def trained_steps(job: Path) -> int | None:
    """The optimizer steps of the job's last.ckpt; None if it has none (it never finished an epoch)."""
    last = job / "checkpoints" / "last.ckpt"
    try:
        return int(safe_load(last)["global_step"])
    except Exception:  # missing, or unreadable (a job killed while saving): not finished either way
        return None


def collect(sweeps: list[Path], judge: Judge, num: int, extra: list[str], scored: list[Path] = ()) -> list[dict]:
    """Score every finished job of `sweeps` and take the rows of the `scored` sweep.json files, all by
    `judge`: equal steps, so a job or row short of the most steps is left out."""
    jobs = []
    for sweep in sweeps:
        found = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if not found:
            raise SystemExit(f"{sweep}: no job folders (0, 1, ...): pass the folder of a train.py -m sweep")
        jobs += [(sweep, job, trained_steps(job)) for job in found]
    earlier = [(path, row) for path in scored for row in _rows_of(path)]
    steps = max([n for *_, n in jobs if n is not None] + [row["steps"] for _, row in earlier], default=None)
    if steps is None:
        raise SystemExit(
            f"no job of {' '.join(map(str, sweeps))} has a checkpoints/last.ckpt yet: let them train first"
        )
    rows = []
    for path, row in earlier:
        if row["steps"] != steps:
            print(f"left out: {row['folder']} of {path}: {row['steps']} steps, not {steps}", flush=True)
            continue
        result = judged(path.parent / row["folder"], judge, extra)
        rows.append({**row, "folder": str(path.parent / row["folder"]), **_scores(result)})
    for sweep, job, n in jobs:
        given = overrides(job)
        if n != steps:
            grid = " ".join(f"{k}={given[k]}" for k in KEYS if k in given)
            why = f"stopped at step {n} of {steps}" if n is not None else "has no readable checkpoints/last.ckpt"
            print(f"left out: {job} {why}; rerun it ({grid}) as another sweep", flush=True)
            continue
        result = judged(job / f"eval_{num}", judge, extra, ckpt=job / "checkpoints" / "last.ckpt", num=num)
        rows.append(
            {
                "job": str(job.relative_to(sweep.parent)),
                "folder": str(job / f"eval_{num}"),
                "steps": n,
                **{key: given.get(key, "default") for key in KEYS},
                **_scores(result),
            }
        )
    seen: dict[tuple, str] = {}
    for row in rows:
        point = tuple(row[key] for key in KEYS)
        if point in seen:
            raise SystemExit(
                f"{'/'.join(point)} appears twice ({seen[point]} and {row['folder']}): pass each seed once"
            )
        seen[point] = row["folder"]
    return rows


def _scores(result: dict) -> dict:
    return {"metrics": result["metrics"], "floor_fid": result.get("floor", {}).get("fid")}


def _rows_of(path: Path) -> list[dict]:
    """The rows of an earlier report's sweep.json, each naming its folder (relative to the file)."""
    try:
        rows = json.loads(path.read_text())
        for row in rows:
            row["steps"] = int(row["steps"])
            _ = [row[key] for key in ("folder", *KEYS)]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"--scored {path}: not a report's sweep.json ({type(e).__name__}: {e})") from None
    return rows


def keep(rows: list[dict], out: Path) -> list[dict]:
    """Copy each row's samples, metrics and grid to out/<schedule>.<parameterization>.seed<k>/; the rows
    then name those folders relative to `out` (what sweep.json records)."""
    kept = []
    for row in rows:
        source, name = Path(row["folder"]), "{}.{}.seed{}".format(*(row[key] for key in KEYS))
        target = out / name
        if source.resolve() != target.resolve():
            target.mkdir(parents=True, exist_ok=True)
            for file in KEPT:
                if (source / file).is_file():
                    atomic_write(target / file, lambda tmp, src=source / file: shutil.copyfile(src, tmp))
        kept.append({**row, "folder": name})
    return kept


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


@dataclass(frozen=True)
class Judge:
    """The classifier that scores every row, and the digest of its weights (ldm.metrics.judge_digest)."""

    path: Path
    digest: str

    @classmethod
    def load(cls, path: str | Path) -> Judge:
        from ldm.checkpoints import load_classifier
        from ldm.errors import UserError
        from ldm.metrics import judge_digest

        try:
            return cls(Path(path).resolve(), judge_digest(load_classifier(path)))
        except (UserError, OSError) as e:
            raise SystemExit(f"--classifier {path}: {e}") from None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="*", help="multirun folders (logs/ldm/multiruns/<time>)")
    parser.add_argument("--classifier", required=True, help="the judge: a model=classifier checkpoint")
    parser.add_argument("--num", type=int, default=2000, help="samples per job")
    parser.add_argument("--scored", type=Path, nargs="*", default=[], help="earlier reports' sweep.json files")
    parser.add_argument("--out", type=Path, help="the report folder: sweep.json, fid.png and each row's samples "
                        "(default: the last sweep folder, rows not copied)")  # fmt: skip
    parser.add_argument("--extra", nargs="*", default=[], help="more evaluate.py overrides (e.g. device=cpu)")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num {args.num}: give a positive number of samples")
    if importlib.util.find_spec("matplotlib") is None:  # before an hour of scoring, not after
        parser.error('fid.png needs matplotlib: pip install -e ".[plot]"')
    if not args.sweeps and not args.scored:
        parser.error("give multirun folders, --scored sweep.json files, or both")
    args.sweeps = [sweep.resolve() for sweep in args.sweeps]  # evaluate.py runs from the repository
    for sweep in args.sweeps:
        if not sweep.is_dir():
            parser.error(f"{sweep} is not a folder: pass multirun folders (logs/ldm/multiruns/<time>)")
    for path in args.scored:
        if not path.is_file():
            parser.error(f"--scored {path} is not a file: pass an earlier report's sweep.json")
    out = args.out.resolve() if args.out else (args.sweeps or [p.resolve().parent for p in args.scored])[-1]
    rows = collect(args.sweeps, Judge.load(args.classifier), args.num, args.extra, [p.resolve() for p in args.scored])
    if args.out:
        rows = keep(rows, out)
    atomic_write_json(out / "sweep.json", rows)
    plot(rows, out / "fid.png")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
