"""ldm.samples: the streamed samples.npz writer, the resumable parts, and what load_samples refuses."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.samples import Column, Parts, SamplesError, load_samples, write_npz


def test_write_npz_streams_pieces_into_what_np_load_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (3, 3, 1)]
    labels = [np.arange(n, dtype=np.int64) for n in (3, 3, 1)]
    path = write_npz(
        tmp_path / "samples.npz",
        {
            "images": Column(np.dtype(np.uint8), (7, 28, 28), lambda: iter(pieces)),
            "labels": Column(np.dtype(np.int64), (7,), lambda: iter(labels)),
        },
    )
    with np.load(path) as data:  # exactly what np.savez_compressed of the whole arrays gives
        assert data["images"].dtype == np.uint8 and np.array_equal(data["images"], np.concatenate(pieces))
        assert data["labels"].dtype == np.int64 and data["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert {i.compress_type for i in zipfile.ZipFile(path).infolist()} == {zipfile.ZIP_DEFLATED}

    with pytest.raises(ValueError, match="the header says 8"):  # a miscount is a bug: nothing is left behind
        write_npz(tmp_path / "bad.npz", {"images": Column(np.dtype(np.uint8), (8, 28, 28), lambda: iter(pieces))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


def _part(parts: Parts, index: int, n: int) -> None:
    parts.write(index, np.full((n, 28, 28), index, np.uint8), None, torch.Generator().manual_seed(index).get_state())


def test_parts_resume_only_whole_parts_of_the_same_request(tmp_path: Path) -> None:
    folder, sizes = tmp_path / ".parts", [2, 2, 1]
    parts = Parts(folder, {"seed": 0}, sizes)
    assert parts.resume() == 0
    for i in range(3):
        _part(parts, i, sizes[i])
    assert Parts(folder, {"seed": 0}, sizes).resume() == 3
    assert torch.equal(parts.generator_state(1), torch.Generator().manual_seed(1).get_state())
    assert parts.first(3)[:, 0, 0].tolist() == [0, 0, 1]

    parts.path(1).write_bytes(np.random.default_rng(0).bytes(300))  # real garbage: that part and later ones go
    (folder / ".part-000002.npz.x.tmp").write_bytes(b"left by kill -9")
    assert Parts(folder, {"seed": 0}, sizes).resume() == 1
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part-000000.npz"]

    assert Parts(folder, {"seed": 1}, sizes).resume() == 0  # another request starts over
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


IMAGES = np.zeros((4, 28, 28), np.uint8)
BAD = {
    "missing": (lambda p: p / "missing.npz", "does not exist"),
    "zero bytes": (lambda p: _file(p / "s.npz", b""), "is empty"),
    "text": (lambda p: _file(p / "s.npz", b"images,labels\n1,2\n"), "not an .npz"),
    "random bytes": (lambda p: _file(p / "s.npz", b"\x00" + np.random.default_rng(1).bytes(4096)), "not an .npz"),
    "random bytes after PK": (
        lambda p: _file(p / "s.npz", b"PK" + np.random.default_rng(1).bytes(4096)),
        "not a readable .npz",
    ),
    "truncated": (
        lambda p: _file(p / "s.npz", _npz(p / "t.npz", images=IMAGES).read_bytes()[:200]),
        "not a readable .npz",
    ),
    "a .npy": (lambda p: np.save(p / "s.npy", IMAGES) or p / "s.npy", "single .npy array"),
    "pickled objects": (lambda p: _npz(p / "s.npz", images=np.array([{"a": 1}], dtype=object)), "not a readable .npz"),
    "no images": (lambda p: _npz(p / "s.npz", pictures=IMAGES), "no `images` array"),
    "float images": (lambda p: _npz(p / "s.npz", images=IMAGES.astype(np.float32)), "must be uint8"),
    "2-D images": (lambda p: _npz(p / "s.npz", images=IMAGES[0]), "must be uint8 of shape"),
    "empty": (lambda p: _npz(p / "s.npz", images=IMAGES[:0]), "holds no images"),
    "float labels": (lambda p: _npz(p / "s.npz", images=IMAGES, labels=np.zeros(4)), "`labels` must be integers"),
    "labels (N, 1)": (lambda p: _npz(p / "s.npz", images=IMAGES, labels=np.zeros((4, 1), np.int64)), r"shape \(4,\)"),
    "one label": (lambda p: _npz(p / "s.npz", images=IMAGES, labels=np.zeros(1, np.int64)), r"shape \(4,\)"),
}


@pytest.mark.parametrize("case", BAD)
def test_load_samples_refuses_what_sample_py_does_not_write(tmp_path: Path, case: str) -> None:
    make, message = BAD[case]
    with pytest.raises(SamplesError, match=message) as error:
        load_samples(make(tmp_path))
    assert "\n" not in str(error.value) and "samples=" in str(error.value) and "python sample.py" in str(error.value)


def test_load_samples_gives_nchw_uint8_and_int64_labels(tmp_path: Path) -> None:
    images, labels = load_samples(_npz(tmp_path / "s.npz", images=IMAGES, labels=np.arange(4, dtype=np.uint8)))
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
