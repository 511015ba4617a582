"""A training run's folder: one run at a time (a lock), no silent overwrite of an earlier run.

The lock is an advisory ``flock`` on ``RUN_DIR/.lock``; the kernel releases it when its process ends, however it
ends, so a lock left by a killed process is taken over without any clean-up (the file still names the old holder,
which is reported). On systems without ``fcntl`` no lock is taken (a warning says so).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger("uaafusion.train")

RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "config.yaml", "tb")
LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """The run folder is busy, already holds a run, or holds nothing to resume."""


def existing_run_files(run_dir: Path) -> list[str]:
    """Names of a previous run's files in ``run_dir`` (checkpoints, config, TensorBoard folder)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def clear_run(run_dir: Path) -> list[str]:
    """Remove a previous run's files (``--overwrite``); returns what was removed."""
    removed = existing_run_files(run_dir)
    for name in removed:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_HELD: dict[Path, list] = {}  # run folders this process holds: path -> [lock handle, holders]


class RunFolderLock:
    """Exclusive use of a run folder by one training process (another process is refused; within one process the
    lock is shared, so that sequential Trainers on one folder, as in scripts and tests, do not block each other).

    Raises (from :meth:`acquire`):
        RunFolderError: another process holds the folder; the message names it (pid, host, start time).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._handle = None
        self._shared_key: Path | None = None

    def acquire(self) -> RunFolderLock:
        try:
            import fcntl
        except ImportError:  # not POSIX
            log.warning("no file locking on this system: nothing stops a second run in %s", self.run_dir)
            return self
        key = self.path.resolve()
        if key in _HELD:  # already held by this process
            _HELD[key][1] += 1
            self._shared_key = key
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # held open for the lock's lifetime; a damaged lock file is just text to overwrite
        handle = open(self.path, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunFolderError(f"run folder {self.run_dir} is in use by {holder}; wait for that run to end "
                                     "or choose another --run-dir") from None
            handle.seek(0)
            previous = handle.read().strip()
            if previous:
                pid = _pid_of(previous)
                state = "no longer running" if pid is not None and not _alive(pid) else "its lock was released"
                log.warning("run folder %s: taking over the lock of %s (%s)", self.run_dir, previous, state)
            handle.seek(0)
            handle.truncate()
            handle.write(f"train.py pid {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        self._shared_key = key
        _HELD[key] = [handle, 1]
        return self

    def release(self) -> None:
        key = self._shared_key
        if key is None or key not in _HELD:
            return
        self._shared_key = None
        _HELD[key][1] -= 1
        if _HELD[key][1] > 0:
            return
        self._handle = _HELD.pop(key)[0]
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_of(text: str) -> int | None:
    parts = text.split()
    if "pid" in parts and parts.index("pid") + 1 < len(parts):
        with contextlib.suppress(ValueError):
            return int(parts[parts.index("pid") + 1])
    return None
