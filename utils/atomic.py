"""Atomic file writes: write to a temporary file in the destination folder, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the previous file (if any) intact.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` atomically.

    Args:
        path: final destination; its folder must exist.
        mode: ``"wb"`` or ``"w"``.
        encoding: text encoding for ``"w"`` (default utf-8).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(payload)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
