"""Writing files so that a crash or a full disk never leaves a half-written file behind.

Everything the framework writes for later runs to read (checkpoint pointers, latent caches,
samples) goes to a temporary file in the same directory, is flushed to disk, and is then
renamed over the target: POSIX rename is atomic, so readers see the old file or the new one.
A write that fails (a full disk, a quota, a read-only folder) raises `WriteError`, a one-line
user error that names the file and the free space, and leaves the previous file untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ldm.errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written (disk full, quota, permissions); nothing partial was left."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
_LOW = 1 << 20  # bytes: a failed write with less than this free is a full disk


def _is_write_failure(error: BaseException, free: int | None) -> bool:
    """OSErrors, and the RuntimeError torch.save's zip writer raises for a full disk
    ("[enforce fail at inline_container.cc] unexpected pos ...", "file write failed")."""
    if isinstance(error, OSError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "inline_container" in message or "write" in message or (free is not None and free < _LOW)
    )


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


_NOT_SPACE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def _write_error(path: Path, error: BaseException, free: int | None, hint: str) -> WriteError:
    code = getattr(error, "errno", None)
    full = code in _FULL or (free is not None and free < _LOW and code not in _NOT_SPACE)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if full:
        where = (
            f"the disk holding {path.parent} is full ({free / 2**20:.1f} MiB free)"
            if free is not None
            else "the disk is full"
        )
        advice = f"free some space{' or ' + hint if hint else ''}, then run again"
    else:
        where, advice = reason, hint or "check that the folder is writable"
    return WriteError(
        f"Could not write {path}: {where}; nothing was written there (an older file is untouched). "
        f"{advice[0].upper()}{advice[1:]}"
    )


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


def _remove(tmp_path: Path) -> None:
    with contextlib.suppress(OSError):  # never there (a folder that could not be made), or read-only
        tmp_path.unlink()


def atomic_write(path: str | Path, write: Callable[[Path], None], hint: str = "") -> Path:
    """Call `write(tmp_path)`, fsync, then rename tmp_path to `path`. Returns `path`.

    A failed write raises `WriteError` (its message ends with `hint`, e.g. another folder to use);
    an interrupt (a signal, Ctrl-C) propagates as it is. Either way the temp file is removed.
    """
    path = Path(path)
    umask = os.umask(0)
    os.umask(umask)
    # The temp name is chosen before the file exists, so that a signal arriving at any point after
    # its creation (even between the open and the next line) finds a name to clean up.
    tmp_path = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                break
            except FileExistsError:
                tmp_path = _temp_name(path)  # another writer's (a 48-bit collision): leave it alone
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~umask)  # 0600 until complete; then the usual permissions
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except Exception as e:
        free = _free_bytes(path.parent)  # before the temp file is deleted: that is when the disk is full
        _remove(tmp_path)
        if isinstance(e, WriteError) or not _is_write_failure(e, free):
            raise  # already explained, or a bug in `write`
        raise _write_error(path, e, free, hint) from e
    except BaseException:
        _remove(tmp_path)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def safe_load(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain values only, nothing that
    could run code. A plain pickle is refused by the caller's error, without torch's warning about
    its pickle protocol printed first."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def save_checked(path: str | Path, key: str, tensors: dict[str, torch.Tensor]) -> Path:
    """A cache entry: `tensors` with the `key` they were computed for and their sha256, written
    atomically (a `WriteError` if it cannot be). `load_checked` returns them only if all three agree."""
    entry = {**tensors, "key": key, "sha256": update_hash(hashlib.sha256(), tensors).hexdigest()}
    return atomic_write(path, lambda tmp: torch.save(entry, tmp))


def load_checked(path: str | Path, key: str, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors `names` of a `save_checked` entry made for `key`; a ValueError saying what is wrong
    if the file is unreadable, was made for other inputs, or its bytes changed (a bad sector, an edit)."""
    try:
        entry = safe_load(path)
        tensors = {name: entry[name] for name in names}
        key_, sha256 = entry["key"], entry["sha256"]
    except Exception as e:  # truncated, foreign, another format: torch raises almost anything
        raise ValueError(f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]) from None
    if key_ != key:
        raise ValueError("it was made for other inputs")
    if sha256 != update_hash(hashlib.sha256(), tensors).hexdigest():
        raise ValueError("its tensors do not match their checksum")
    return tensors


def update_hash(digest: hashlib._Hash, tensors: dict[str, torch.Tensor]) -> hashlib._Hash:
    """Feed named tensors (names, dtypes, shapes and bytes, in name order) into a hash; returns it.

    Cache keys hash contents, not file names, so a retrained network or a changed dataset can
    never be mistaken for the one a cache was built from.
    """
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)  # 1-D: 0-dim buffers view as bytes too
        digest.update(f"{name}:{t.dtype}:{tuple(tensors[name].shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest
