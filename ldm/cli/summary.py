"""The block every training run ends with: where its results are and the commands that open them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger


def run_summary(
    output_dir: str | Path, best: str | None, last: str | None, loggers: Sequence[object], metrics: dict[str, float]
) -> str:
    """A few aligned lines: run folder, checkpoints, images, metrics CSV, W&B and TensorBoard."""
    output_dir = Path(output_dir)
    rows: list[tuple[str, str]] = [("run folder", str(output_dir))]
    if best:
        score = next((f"  ({key} {metrics[key]:.4g})" for key in ("val/fid", "val/loss") if key in metrics), "")
        rows.append(("best checkpoint", f"{best}{score}"))
    if last and Path(last).is_file():
        rows.append(("last checkpoint", f"{last}  (resume: the same command + ckpt_path=last)"))
    images = sorted((output_dir / "images").glob("*.png"), key=lambda p: p.stat().st_mtime)
    if images:
        rows.append(("images", f"{output_dir / 'images'}/  (newest: {images[-1].name})"))
    for logger in loggers:
        if isinstance(logger, CSVLogger) and Path(logger.log_dir, "metrics.csv").is_file():
            rows.append(
                (
                    "metrics",
                    f"{Path(logger.log_dir, 'metrics.csv')}  (plot, in the repository: "
                    f"python experiments/plot_metrics.py {output_dir})",
                )
            )
        elif isinstance(logger, WandbLogger):
            folder = _wandb_dir(logger)
            if folder is not None and folder.name.startswith("offline-run-"):
                rows.append(("W&B (offline)", f"{folder}  (upload: wandb sync {folder})"))
            elif folder is not None:
                rows.append(("W&B", str(getattr(logger.experiment, "url", None) or folder)))
        elif isinstance(logger, TensorBoardLogger):
            rows.append(("TensorBoard", f"tensorboard --logdir {logger.log_dir}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(["Run finished:"] + [f"  {name:<{width}}  {value}" for name, value in rows])


def _wandb_dir(logger: WandbLogger) -> Path | None:
    try:
        return Path(logger.experiment.dir).parent  # <run>/wandb/offline-run-.../files -> the run's folder
    except Exception:  # a disabled or finished run has no folder to show
        return None
