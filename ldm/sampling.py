"""Drawing samples from a trained LDM (or a VAE's prior) into `<out>/samples.npz`, in bounded memory.

`draw(request, ckpt, sampler)` is what `python sample.py` runs (and `python evaluate.py` when it
samples first); a `Request` holds the plain values of conf/sample.yaml's keys. Batches are drawn
from one generator seeded once with `seed`, and each is written to `<out>/.parts/` as soon as it
is made (`ldm.samples.Parts`), so memory stays at one batch whatever `num_samples`, and the same
command continues an interrupted run with the samples an uninterrupted one would have drawn.
When every batch is there: `samples.npz` first (the valuable part), then `grid.png`,
`trajectory.png` and `sampling.json`; then `.parts` is removed. Every file is written atomically.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from ldm.calibration import calibrate, fit_digest, fitted_prior
from ldm.checkpoints import CheckpointError, checkpoint_kind, checkpoint_of, load_vae
from ldm.data.source import ImageSource
from ldm.errors import ConfigError
from ldm.figures import trajectory
from ldm.grids import grid_image, labelled_grid, save_png
from ldm.guard import NonFiniteError
from ldm.io import atomic_write_json
from ldm.pipeline import make_sampler
from ldm.sample_request import Request, batch_labels, given_labels, pick_device
from ldm.samples import Parts, to_uint8
from ldm.systems.latent_diffusion import LatentDiffusionModule

log = logging.getLogger(__name__)


def progress_bar() -> Progress:
    """A rich bar counting sampler steps (all batches), with elapsed and remaining time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def with_overrides(sampler: Any, steps: int | None, eta: float | None) -> Any:
    """`sampler` rebuilt with sample.py's `steps=` / `eta=` shortcuts (`ldm.pipeline.make_sampler`)."""
    try:
        return make_sampler(sampler, steps, eta)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"steps= / eta=: {e}") from None


@dataclass
class Source:
    """(n, generator, labels, on_step) -> n images in [0, 1]; its name; its checkpoint file; the LDM, if it is one."""

    generate: Callable[[int, torch.Generator, Tensor | None, Callable[[int, int], None]], Tensor]
    name: str
    ckpt: Path
    model: LatentDiffusionModule | None = None
    fitted: str | None = None  # a digest of what was measured on data first (a fitted prior, a calibration)

    @property
    def num_classes(self) -> int | None:
        return self.model.conditioning.num_classes if self.model is not None and self.model.conditioning else None


def load_source(
    ckpt: Path,
    sampler: Any,
    request: Request,
    device: torch.device,
    data: ImageSource | None = None,
    cache_dir: str | Path | None = None,
) -> Source:
    """What draws the samples: an LDM's EMA denoiser + its VAE decoder, or a VAE decoding N(0, I) (or,
    with prior=fitted, a Gaussian fitted to the codes of `data`'s training digits)."""
    if Path(ckpt).is_dir():  # a run folder or a registry folder: the checkpoint it names
        try:
            ckpt = checkpoint_of(ckpt)
        except CheckpointError as e:
            raise ConfigError(f"ckpt={ckpt}: {e}") from None
    if not Path(ckpt).is_file():
        raise ConfigError(
            f"ckpt={ckpt} does not exist: pass an LDM or VAE checkpoint, its run folder (logs/<stage>/runs/<time>) or "
            "a registry folder (logs/debug/latest), or leave ckpt unset for the latest LDM run"
        )
    kind = checkpoint_kind(ckpt)
    if kind == "vae":
        if sampler is not None or request.steps is not None or request.eta is not None:
            raise ConfigError(
                f"{ckpt} is a VAE: it samples its prior in one decoder pass, so sampler= / steps= / eta= "
                "do not apply (they are for LDM checkpoints)"
            )
        vae = load_vae(ckpt).to(device)
        if request.prior == "fitted":
            if data is None:
                raise ConfigError("prior=fitted needs the training digits to fit to (data=, as in conf/sample.yaml)")
            gaussian = fitted_prior(vae, data, device, cache_dir)
            digest = fit_digest(gaussian.mean, gaussian.scale_tril)
            return Source(
                lambda n, g, y, on_step: vae.decode(gaussian.sample(n, g)),
                "vae fitted gaussian",
                Path(ckpt),
                None,
                digest,
            )
        if vae.deterministic:
            log.warning(
                "%s is a plain autoencoder: N(0, I) is not its prior, so these samples say little; "
                "prior=fitted decodes a Gaussian fitted to its codes",
                ckpt,
            )
        shape = vae.latent_shape
        return Source(
            lambda n, g, y, on_step: vae.decode(torch.randn((n, *shape), generator=g, device=device)),
            "vae prior",
            Path(ckpt),
        )
    if kind != "ldm":
        raise CheckpointError(f"{ckpt} is a {kind} checkpoint; sample.py needs an ldm or vae checkpoint")
    if request.prior != "standard":
        raise ConfigError(f"prior={request.prior} is for VAE checkpoints; {ckpt} is an LDM (leave prior unset)")
    model = LatentDiffusionModule.from_checkpoint(ckpt, compile=request.compile).to(device)
    sampler = with_overrides(sampler if sampler is not None else model.sampler, request.steps, request.eta)
    try:
        model.objective.check_sampler(sampler)  # the family, and e.g. num_steps <= T
    except ValueError as e:
        raise ConfigError(f"sampler= / steps=: {e}") from None
    guidance = request.guidance
    if model.pipeline().needs_calibration(sampler):
        sampler = calibrate(model, sampler, data, guidance, request.seed, device)
    model.sampler = sampler
    name = repr(model.sampler) + (f", guidance {guidance}" if guidance is not None else "")
    fitted = fit_digest(torch.tensor(sampler.x0_error)) if getattr(sampler, "x0_error", None) is not None else None
    return Source(
        lambda n, g, y, on_step: model.sample(n, generator=g, labels=y, guidance=guidance, on_step=on_step),
        name,
        Path(ckpt),
        model,
        fitted,
    )


def _manifest(
    ckpt: Path,
    source: Source,
    request: Request,
    device: torch.device,
    batch_size: int,
    num_samples: int,
    given: list[int] | None,
) -> dict[str, Any]:
    """Everything the samples depend on: a part made for another manifest is never reused."""
    stat = ckpt.stat()
    labels = given if given is not None else (f"0..{source.num_classes - 1} in turn" if source.num_classes else None)
    return {
        "format": 1,
        "ckpt": str(ckpt.resolve()),
        "ckpt_size": stat.st_size,
        "ckpt_mtime_ns": stat.st_mtime_ns,
        "generator": source.name,
        "seed": request.seed,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "device": str(device),
        "bf16": request.bf16 and device.type == "cuda",
        "compile": request.compile,
        "guidance": request.guidance,
        "labels": labels,
        "fitted": source.fitted,
    }


@torch.no_grad()
def draw(
    request: Request,
    ckpt: str | Path,
    sampler: Any = None,
    data: ImageSource | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Sample `request` from `ckpt` (an LDM, with `sampler` or the one it was trained with, or a VAE)
    into `<out>/samples.npz`; returns its path. One process at a time per `out` folder. `data`: the
    training digits a VAE's prior=fitted is fitted to (and kept in `cache_dir`) and a calibrated
    sampler measures on."""
    out = Path(request.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out / ".sampling.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"Another sample.py is writing to out={out}: wait for it to finish, or choose another out="
        ) from None
    except OSError as e:
        raise ConfigError(f"out={out} cannot be used as a folder ({e.strerror or e}): choose another out=") from None
    try:
        return _draw(request, ckpt, sampler, data, cache_dir)
    finally:
        lock.release()


def _draw(
    request: Request, ckpt: str | Path, sampler: Any, data: ImageSource | None, cache_dir: str | Path | None
) -> Path:
    device, out = pick_device(request.device), Path(request.out)
    source = load_source(ckpt, sampler, request, device, data, cache_dir)
    ckpt = source.ckpt
    given = given_labels(request, source.num_classes)
    num_samples = len(given) if given is not None else request.num_samples  # one sample per prompt token
    batch_size = request.batch_size or (10_000 if device.type == "cuda" else 1000)
    sizes = [min(batch_size, num_samples - i) for i in range(0, num_samples, batch_size)]
    parts = Parts(out / ".parts", _manifest(ckpt, source, request, device, batch_size, num_samples, given), sizes)
    done = parts.resume()
    generator = torch.Generator(device=device).manual_seed(request.seed)
    if done:
        generator.set_state(parts.generator_state(done - 1))
        log.info("Continuing: %d of %d batches were already drawn into %s", done, len(sizes), parts.folder)
    start = time.perf_counter()
    bar = progress_bar()
    task = bar.add_task(f"sampling {num_samples}: sampler steps", total=None)

    def on_step(i: int, n: int) -> None:  # host side only: the bar moves with each sampler step of each batch
        if bar.tasks[0].total is None:
            bar.update(task, total=n * (len(sizes) - done))
        bar.advance(task)

    try:
        with bar:
            for index in range(done, len(sizes)):
                y = batch_labels(given, source.num_classes, index * batch_size, sizes[index])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and request.bf16):
                    images = source.generate(sizes[index], generator, None if y is None else y.to(device), on_step)
                if not torch.isfinite(images).all():  # one check per batch: NaN would be written as black digits
                    raise NonFiniteError(
                        f"Batch {index} of the samples is NaN/Inf ({source.name}): the checkpoint's weights are broken, "
                        "or guidance= is far too large; nothing of this batch was written"
                    )
                parts.write(index, to_uint8(images.float()), None if y is None else y.numpy(), generator.get_state())
                if bar.tasks[0].total is None:  # a VAE prior: one decoder pass per batch, counted as one step
                    bar.update(task, total=len(sizes) - done)
                if source.model is None:
                    bar.advance(task)
    except BaseException as stop:
        if not isinstance(stop, Exception):  # a stop signal or Ctrl-C: what is kept, and how to go on
            kept = len(list(parts.folder.glob("part-*.npz")))
            log.warning(
                "Stopped after %d of %d batches; they are kept in %s and the same command continues",
                kept,
                len(sizes),
                parts.folder,
            )
        raise
    seconds = time.perf_counter() - start
    path = parts.write_npz(out / "samples.npz", labelled=source.num_classes is not None)
    _figures(parts, source, request, given, out, generator)
    drawn = sum(sizes[done:])
    atomic_write_json(
        out / "sampling.json",
        {
            "ckpt": str(ckpt),
            "generator": source.name,
            "num_samples": num_samples,
            "seconds": seconds,
            "device": str(device),
            "seed": request.seed,
            "batch_size": batch_size,
            "resumed_batches": done,
        },
    )
    parts.remove()
    log.info(
        "%d samples from %s (%s) -> %s (%d drawn in %.2f s, %.0f samples/s)",
        num_samples,
        ckpt,
        source.name,
        path,
        drawn,
        seconds,
        drawn / max(seconds, 1e-9),
    )
    return path


# --- figures ------------------------------------------------------------------------------------


def _figures(
    parts: Parts, source: Source, request: Request, given: list[int] | None, out: Path, generator: torch.Generator
) -> None:
    """grid.png from the first parts, and trajectory.png (from the generator's state after the last batch)."""
    hint = f"samples.npz is complete; the batches are kept in {parts.folder} and the same command continues"
    shown = parts.first(request.grid_size) if request.grid_size else None
    if shown is not None:
        images = torch.from_numpy(shown if shown.ndim == 4 else shown[:, None])
        labels = batch_labels(given, source.num_classes, 0, len(images))
        if labels is not None:  # prompts read left to right; balanced grids show 0..9 per row
            nrow = request.grid_columns or (min(len(images), 20) if given is not None else source.num_classes)
            image = labelled_grid(images, labels, nrow)
        else:
            image = grid_image(images, request.grid_columns or math.ceil(math.sqrt(len(images))))
        save_png(out / "grid.png", image, hint)
    if request.trajectory and source.model is not None:
        frames, per_row = trajectory(source.model.pipeline(), 8, generator)
        save_png(out / "trajectory.png", grid_image(frames, per_row), hint)
