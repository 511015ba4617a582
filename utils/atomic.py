"""Atomic file writes: write to a temporary file in the destination folder, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the previous file (if any) intact.
Files get the permissions a plain ``open(path, "w")`` would give them (the umask's default, or the mode of the
file they replace), not the 0600 of a temporary file. Errors name the file being written.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    """The process umask, read without changing it where /proc allows (other threads may be creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)  # no /proc: set and restore it (briefly visible to other threads)
    os.umask(umask)
    return umask


def _final_mode(path: Path) -> int:
    """The mode a normal write would leave: the existing file's, else 0666 minus the umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~_read_umask()


def _temporary(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, _final_mode(path))
    return fd, tmp


class AtomicWriteError(OSError):
    """Writing a file failed; the message names the file (the errno of the cause is kept)."""


def _named(err: OSError, path: Path) -> AtomicWriteError:
    reason = err.strerror or str(err)
    return AtomicWriteError(err.errno, f"cannot write '{path}': {reason}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` atomically.

    Args:
        path: final destination; its folder must exist.
        mode: ``"wb"`` or ``"w"``.
        encoding: text encoding for ``"w"`` (default utf-8).

    Raises:
        AtomicWriteError: the file cannot be written (disk full, no permission, ...); names the file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    path = Path(path)
    try:
        fd, tmp = _temporary(path)
    except OSError as err:
        raise _named(err, path) from err
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, AtomicWriteError):
            raise _named(err, path) from err
        raise


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(payload)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Write a matplotlib figure to ``path`` as PNG atomically (creating its folder) and close it."""
    import matplotlib.pyplot as plt  # only the figure scripts need matplotlib

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", **savefig_kwargs)
    finally:
        plt.close(fig)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_group(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Write several files all or nothing: every payload goes to a temporary sibling first, and only when all of
    them are on disk are they renamed into place. On any failure before the renames (a target that is a folder,
    no space, no permission) the temporaries are removed and no target is touched; the error names the file. The
    renames themselves stay within each target's folder; should one still fail, the files renamed before it keep
    their new content (they are complete files either way). Missing parent folders are created.

    Raises:
        AtomicWriteError: naming the file that could not be written.
    """
    temps: list[tuple[str, Path]] = []
    current = Path()
    for target in files:
        if Path(target).is_dir():
            raise AtomicWriteError(21, f"cannot write '{target}': a folder of that name is in the way")
    try:
        for target, payload in files.items():
            current = Path(target)
            current.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _temporary(current)
            temps.append((tmp, current))
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, target in temps:
            current = target
            os.replace(tmp, target)
    except BaseException as err:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, AtomicWriteError):
            raise _named(err, current) from err
        raise
