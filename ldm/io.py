"""Writing files so that a crash or a full disk never leaves a half-written file behind.

Everything the framework writes for later runs to read (checkpoint pointers, latent caches,
samples) goes to a temporary file in the same directory, is flushed to disk, and is then
renamed over the target: POSIX rename is atomic, so readers see the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename tmp_path to `path`. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def update_hash(digest: "hashlib._Hash", tensors: dict[str, torch.Tensor]) -> "hashlib._Hash":
    """Feed named tensors (names, dtypes, shapes and bytes, in name order) into a hash; returns it.

    Cache keys hash contents, not file names, so a retrained network or a changed dataset can
    never be mistaken for the one a cache was built from.
    """
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)  # 1-D: 0-dim buffers view as bytes too
        digest.update(f"{name}:{t.dtype}:{tuple(tensors[name].shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest
