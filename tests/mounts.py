"""Real small filesystems for fault tests (tests only): a tmpfs that fills up, or turns read-only.

with tmpfs(tmp_path / "disk", "16k") as disk:   # skips the test where mounting is not allowed
    ...
    remount(disk, "size=1m")                     # free space: the same folder, bigger
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` bytes (e.g. "16k") mounted on `path`, unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode != 0:
            # Still busy (a child process that was killed on purpose may not be reaped yet): detach now.
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs: "size=1m" (free space), "ro" (read-only), "rw"."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
