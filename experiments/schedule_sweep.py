"""Score every job of a schedule x parameterization x seed sweep, then one table and one figure
(issue 16, item 6).

    python train.py -m model=ldm schedule=linear,scaled_linear,cosine,sigmoid,interpolation \
        parameterization=eps,v seed=0,1 ...                       # experiments/schedule_sweep.sh
    python experiments/schedule_sweep.py logs/ldm/multiruns/<time> [more sweeps] --classifier C.ckpt --num 2000 \
        [--scored earlier/sweep.json] [--out REPORT]

Each finished job (0, 1, ...) is scored at its last step with `evaluate.py ckpt=<job>/checkpoints/
last.ckpt num_samples=N` into <job>/eval_<N>/ (metrics.json, samples.npz, grid.png), grouped by its
`schedule`, `parameterization` and `seed` overrides. Scores already there are reused only when the
same judge (the classifier's weight digest) wrote them; otherwise the saved samples are re-scored.
A job short of the most steps any job reached (interrupted) is left out with a line saying so:
rerun its configuration as another sweep and pass both folders. --scored adds an earlier report's
rows (e.g. the committed seed 0), so a report grows seed by seed after the job folders are gone.
--out REPORT copies each row's samples.npz, metrics.json and grid.png to
REPORT/<schedule>.<parameterization>.seed<k>/ beside sweep.json and fid.png: the folder to commit.
Prints a Markdown table with the seed spread (sweep_table.py draws the figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from sweep_table import plot, table  # noqa: E402

from ldm.io import atomic_write, atomic_write_json, safe_load  # noqa: E402

KEPT = ("samples.npz", "metrics.json", "grid.png")  # what a report folder keeps of each scored job

KEYS = ("schedule", "parameterization", "seed")


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


def _read(metrics: Path) -> dict | None:
    """A metrics.json evaluate.py wrote, or None (missing, unreadable, or not one: re-score it)."""
    try:
        result = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and isinstance(result.get("metrics"), dict) else None


def judged(folder: Path, judge: Judge, extra: list[str], ckpt: Path | None = None, num: int = 0) -> dict:
    """folder/metrics.json as `judge` scores it: read when that judge wrote it; re-scored from
    folder/samples.npz when another one did (its numbers kept as `earlier_judge`) or it is unreadable;
    else (a job not scored yet) sampled from `ckpt` and scored."""
    metrics = folder / "metrics.json"
    before = _read(metrics)
    if before is not None and before.get("classifier_sha256") == judge.digest:
        return before
    evaluate = [sys.executable, str(ROOT / "evaluate.py"), f"classifier_ckpt={judge.path}"]
    if (folder / "samples.npz").is_file() and (metrics.exists() or ckpt is None):
        why = "another judge's" if before is not None else "unreadable" if metrics.exists() else "missing"
        print(f"re-scoring {folder / 'samples.npz'}: its {metrics.name} is {why}", flush=True)
        with tempfile.TemporaryDirectory() as log:  # evaluate.py's log folder (out=): not the report's
            _evaluate([*evaluate, f"samples={folder / 'samples.npz'}", f"json={metrics}", f"out={log}", *extra], folder)
    elif ckpt is not None:
        _evaluate([*evaluate, f"ckpt={ckpt}", f"num_samples={num}", f"out={folder}", *extra], folder)
    else:
        raise SystemExit(
            f"{folder} holds no samples.npz to score: its row cannot be judged; drop it from its sweep.json"
        )
    result = _read(metrics)
    if result is None:
        raise SystemExit(f"evaluate.py left no readable {metrics}")
    if before is not None:  # nothing lost: how the samples were drawn, and what the earlier judge said
        result.setdefault("sampling", before.get("sampling"))
        keys = ("classifier", "classifier_sha256", "metrics", "floor")
        result["earlier_judge"] = {k: before[k] for k in keys if k in before}
        atomic_write_json(metrics, result)
    return result


def trained_steps(job: Path) -> int | None:
    """The optimizer steps of the job's last.ckpt; None if it has none (it never finished an epoch)."""
    last = job / "checkpoints" / "last.ckpt"
    try:
        return int(safe_load(last)["global_step"])
    except Exception:  # missing, or unreadable (a job killed while saving): not finished either way
        return None


def collect(
    sweeps: list[Path],
    judge: Judge,
    num: int,
    extra: list[str],
    scored: list[Path] = (),
    report: Path | None = None,
    copy: bool = False,
) -> list[dict]:
    """Score every finished job of `sweeps` and take the rows of the `scored` sweep.json files, all by
    `judge`: equal steps, so a job or row short of the most steps is left out. Rows name their folders
    relative to `report` (where sweep.json goes; default: the last sweep). With `copy`, each row's files
    go to report/<schedule>.<parameterization>.seed<k>/ (an earlier report's row is copied before it is
    re-scored: the report it came from is never written)."""
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
    todo = []  # (row without scores, its folder, the checkpoint to sample if it has no samples yet)
    for path, row in earlier:
        if row["steps"] != steps:
            print(f"left out: {row['folder']} of {path}: {row['steps']} steps, not {steps}", flush=True)
            continue
        todo.append((row, path.parent / row["folder"], None))
    for sweep, job, n in jobs:
        given = overrides(job)
        if n != steps:
            grid = " ".join(f"{k}={given[k]}" for k in KEYS if k in given)
            why = f"stopped at step {n} of {steps}" if n is not None else "has no readable checkpoints/last.ckpt"
            print(f"left out: {job} {why}; rerun it ({grid}) as another sweep", flush=True)
            continue
        row = {"job": str(job.relative_to(sweep.parent)), "steps": n, **{k: given.get(k, "default") for k in KEYS}}
        todo.append((row, job / f"eval_{num}", job / "checkpoints" / "last.ckpt"))
    seen: dict[tuple, Path] = {}
    for row, folder, _ in todo:  # before any scoring
        point = point_of(row)
        if point in seen:
            raise SystemExit(f"{'/'.join(point)} appears twice ({seen[point]} and {folder}): pass each seed once")
        seen[point] = folder
    rows = []
    for row, folder, ckpt in todo:
        target = report / "{}.{}.seed{}".format(*point_of(row)) if copy else folder
        if ckpt is None:
            _copy(folder, target)
            result = judged(target, judge, extra)
        else:
            result = judged(folder, judge, extra, ckpt=ckpt, num=num)
            _copy(folder, target)
        rows.append({**row, "folder": os.path.relpath(target, report or sweeps[-1]), **_scores(result)})
    return rows


def point_of(row: dict) -> tuple[str, ...]:
    return tuple(row[key] for key in KEYS)


def _copy(source: Path, target: Path) -> None:
    """The files a report keeps of one row (written whole or not at all)."""
    if source.resolve() == target.resolve():
        return
    target.mkdir(parents=True, exist_ok=True)
    for file in KEPT:
        if (source / file).is_file():
            atomic_write(target / file, lambda tmp, src=source / file: shutil.copyfile(src, tmp))


def _scores(result: dict) -> dict:
    return {"metrics": result["metrics"], "floor_fid": (result.get("floor") or {}).get("fid")}


def _rows_of(path: Path) -> list[dict]:
    """The rows of an earlier report's sweep.json, each naming its folder (relative to the file)."""
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not rows:
            raise ValueError("it holds no rows (a report's sweep.json is a list of them)")
        for row in rows:
            row["steps"] = int(row["steps"])
            for key in KEYS:  # a seed written as 0 or "0" is one seed
                row[key] = str(row[key])
            if not isinstance(row["folder"], str) or Path(row["folder"]).is_absolute():
                raise ValueError(f"folder {row['folder']!r} must be a path relative to the file")
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"--scored {path}: not a report's sweep.json ({type(e).__name__}: {e})") from None
    return rows


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
    parser.add_argument("--out", type=Path, help="the report folder: sweep.json, fid.png and a copy of each row's samples, "
                        "metrics and grid (default: the last sweep folder, or the --scored file's; nothing copied)")  # fmt: skip
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
    try:  # a report folder that cannot be written is found now, not after an hour of scoring
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(f"{out} is not writable")
    except OSError as e:
        parser.error(f"--out {out}: {e.strerror or e}: pass a folder that can be written")
    scored = [p.resolve() for p in args.scored]
    rows = collect(args.sweeps, Judge.load(args.classifier), args.num, args.extra, scored, out, copy=bool(args.out))
    atomic_write_json(out / "sweep.json", rows)
    plot(rows, out / "fid.png")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
