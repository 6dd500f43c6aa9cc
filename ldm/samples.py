"""samples.npz: what sample.py writes and evaluate.py reads, written in bounded memory, resumably.

    images  uint8 in 0..255, (N, H, W) for one-channel data, (N, C, H, W) otherwise
    labels  int64 (N,), class-conditional models only: the class each sample was drawn for

Sampling writes each batch as it is made to `<out>/.parts/part-NNNNNN.npz` (`Parts`), together
with the random generator's state after it and a manifest of the request, so a run that is
killed, or stopped by a full disk, continues where it stopped when the same command runs again.
`write_npz` then streams the parts into one file: an .npz is a zip of .npy files, so each array
is a .npy header followed by the parts' bytes, never all in memory at once.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.errors import UserError, one_line
from ldm.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

MAKE_ONE = "python sample.py out=DIR writes DIR/samples.npz"


class SamplesError(UserError, ValueError):
    """A samples file that is missing, unreadable, or not what sample.py writes."""


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> uint8 (N, H, W) for one channel, else (N, C, H, W)."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else array


# --- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One array of an .npz, given as consecutive pieces along its first axis."""

    dtype: np.dtype
    shape: tuple[int, ...]  # of the whole array
    pieces: Callable[[], Iterable[np.ndarray]]  # a fresh iterator over the pieces, in order


def write_npz(path: str | Path, columns: dict[str, Column], hint: str = "") -> Path:
    """Write `columns` as a compressed .npz that `np.load` reads like `np.savez_compressed`'s, atomically.

    Memory holds one piece at a time. A full disk raises `ldm.io.WriteError` (see `atomic_write`).
    """

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name, column in columns.items():
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(column.dtype)),
                    "fortran_order": False,
                    "shape": tuple(column.shape),
                }
                rows = 0
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:  # sizes unknown up front
                    np.lib.format.write_array_header_1_0(member, header)
                    for piece in column.pieces():
                        piece = np.ascontiguousarray(piece, dtype=column.dtype)
                        if piece.shape[1:] != tuple(column.shape[1:]):
                            raise ValueError(
                                f"{name}: a piece of shape {piece.shape} in an array of shape {column.shape}"
                            )
                        member.write(piece.data)
                        rows += len(piece)
                if rows != column.shape[0]:
                    raise ValueError(f"{name}: the pieces hold {rows} rows, the header says {column.shape[0]}")

    return atomic_write(path, write, hint)


class Parts:
    """The finished batches of a samples.npz being made: `<folder>/part-NNNNNN.npz` + `manifest.json`.

    Each part holds `images`, `labels` (conditional models) and `generator_state`, the state of the
    sampling generator after the batch, so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, folder: str | Path, manifest: dict[str, Any], sizes: list[int]) -> None:
        self.folder, self.manifest, self.sizes = Path(folder), manifest, sizes  # sizes: samples per part

    def path(self, index: int) -> Path:
        return self.folder / f"part-{index:06d}.npz"

    def resume(self) -> int:
        """How many parts of this request are finished; anything else in the folder is removed."""
        manifest_path = self.folder / "manifest.json"
        try:
            same = json.loads(manifest_path.read_text()) == self.manifest
        except (OSError, ValueError):
            same = False
        if not same:
            if self.folder.exists():
                log.info("Discarding the unfinished samples in %s: they were made for another request", self.folder)
                shutil.rmtree(self.folder)
            atomic_write_json(manifest_path, self.manifest)
            return 0
        for tmp in self.folder.glob(".*.tmp"):  # left by a process killed while writing (SIGKILL)
            tmp.unlink(missing_ok=True)
        done, shape = 0, None
        while done < len(self.sizes) and (shape := self._readable(done, shape)) is not None:
            done += 1
        for stale in self.folder.glob("part-*.npz"):
            if stale.name >= self.path(done).name:
                stale.unlink()
        return done

    def _readable(self, index: int, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """The image shape of a complete, readable part `index` (that of part 0 if given), else None."""
        try:
            with np.load(self.path(index)) as part:
                images, state = part["images"], part["generator_state"]
                if len(images) == self.sizes[index] and state.dtype == np.uint8 and shape in (None, images.shape[1:]):
                    return images.shape[1:]
        except Exception as e:  # missing, truncated, foreign: made again
            if self.path(index).exists():
                log.warning("Making %s again: it is unreadable (%s)", self.path(index), one_line(e)[:200])
        return None

    def write(self, index: int, images: np.ndarray, labels: np.ndarray | None, state: torch.Tensor) -> None:
        arrays = {"images": images, "generator_state": state.cpu().numpy()}
        if labels is not None:
            arrays["labels"] = labels.astype(np.int64)
        atomic_write(
            self.path(index),
            lambda tmp: _savez(tmp, arrays),
            hint=f"the {index} finished batches are kept in {self.folder} and the same command continues",
        )

    def generator_state(self, index: int) -> torch.Tensor:
        with np.load(self.path(index)) as part:
            return torch.from_numpy(part["generator_state"].copy())

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one image, as the first part holds it."""
        with np.load(self.path(0)) as part:
            return part["images"].shape[1:]

    def arrays(self, name: str) -> Iterator[np.ndarray]:
        """Part by part, the array `name` (one part in memory at a time)."""
        for index in range(len(self.sizes)):
            with np.load(self.path(index)) as part:
                array = part[name]
            yield array

    def first(self, count: int) -> np.ndarray | None:
        """The first `count` images, (count, ...), or None for count=0."""
        pieces, have = [], 0
        for index in range(len(self.sizes)):
            if have >= count:
                break
            with np.load(self.path(index)) as part:
                pieces.append(part["images"][: count - have])
            have += len(pieces[-1])
        return np.concatenate(pieces) if pieces else None

    def write_npz(self, path: str | Path, labelled: bool) -> Path:
        """Stream every part into `path` as samples.npz (`images`, and `labels` when `labelled`)."""
        n = sum(self.sizes)
        columns = {"images": Column(np.dtype(np.uint8), (n, *self.sample_shape()), lambda: self.arrays("images"))}
        if labelled:
            columns["labels"] = Column(np.dtype(np.int64), (n,), lambda: self.arrays("labels"))
        return write_npz(path, columns, hint=f"the samples are kept in {self.folder} and the same command continues")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


# --- reading ------------------------------------------------------------------------------------


def load_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`images` as uint8 (N, C, H, W) and `labels` as int64 (N,) if present, from a samples.npz, checked.

    Anything that is not what sample.py writes is a `SamplesError` saying what is wrong, on one line.
    """
    path = Path(path)
    if path.is_dir():
        raise SamplesError(f"samples={path} is a folder: pass the samples.npz in it (samples={path / 'samples.npz'})")
    if not path.is_file():
        raise SamplesError(f"samples={path} does not exist ({MAKE_ONE})")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic.startswith(b"\x93NUMPY"):
            raise SamplesError(f"samples={path} is a single .npy array, not an .npz ({MAKE_ONE})")
        if not magic.startswith(b"PK"):  # numpy would try to unpickle it, and suggest allow_pickle
            what = "empty" if not magic else "not an .npz (a zip of .npy arrays)"
            raise SamplesError(f"samples={path} is {what}; {MAKE_ONE}")
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise SamplesError(f"samples={path} has no `images` array (it has {data.files}); {MAKE_ONE}")
            images, labels = data["images"], data["labels"] if "labels" in data.files else None
    except (SamplesError, MemoryError):
        raise
    except Exception as e:  # zero bytes, text, random bytes, a truncated zip, pickled objects: numpy raises anything
        raise SamplesError(
            f"samples={path} is not a readable .npz ({one_line(f'{type(e).__name__}: {e}')[:160]}); {MAKE_ONE}"
        ) from e
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise SamplesError(
            f"samples={path}: `images` must be uint8 of shape (N, H, W) or (N, C, H, W), got "
            f"{images.dtype} {images.shape}; {MAKE_ONE}"
        )
    if 0 in images.shape:
        raise SamplesError(f"samples={path} holds no images (shape {images.shape}); {MAKE_ONE}")
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
            raise SamplesError(
                f"samples={path}: `labels` must be integers of shape ({len(images)},), one class per "
                f"image, got {labels.dtype} {labels.shape}; {MAKE_ONE}"
            )
        labels = torch.from_numpy(labels.astype(np.int64))
    images = torch.from_numpy(images)
    return (images[:, None] if images.ndim == 3 else images), labels
