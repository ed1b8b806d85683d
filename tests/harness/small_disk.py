"""A small disk that a test may fill without filling the machine's: a size-limited tmpfs.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the test skips and says so. A file-size limit
(``ulimit -f``) or a quota would fail writes with other errors (EFBIG, SIGXFSZ) or need root too,
so they would not show what a full disk does.
"""
from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(mountpoint: Path, size_mb: int):
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses: from then on, writes there fail with ENOSPC."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler
