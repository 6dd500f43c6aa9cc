"""Reading the IDX files MNIST-style datasets ship in (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a big-endian header -- two zero bytes, a type code, the number of dimensions, one
uint32 per dimension -- followed by the raw array. MNIST, Fashion-MNIST and KMNIST all store
uint8 images (N, H, W) and uint8 labels (N,). We read the `.gz` originals directly, so a
read-only copy of the official files is enough: nothing is extracted or converted on disk.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ldm.errors import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(UserError, ValueError):
    """An IDX file that is truncated, corrupt or of an unexpected shape."""


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The file `name` (e.g. 'train-images-idx3-ubyte') in `folder`, uncompressed or `.gz`."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: str | Path) -> torch.Tensor:
    """Decode one IDX file (optionally gzip-compressed) into a tensor of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on truncated or non-gzip input
        raise IDXError(f"{path}: cannot be read ({e}); delete it and restore the original file") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IDXError(f"{path}: not an IDX file (bad magic number); restore the original file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise IDXError(
            f"{path}: holds {len(data)} bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt: restore the original file"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
