"""Process set-up shared by the entry scripts: memory allocator, threads, device, seeds, autocast, DDP.

Nothing here knows about the model. ``prepare_process`` is what ``train.py``, ``test.py`` and the scripts call
first; the other functions are its parts.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("uaafusion.runtime")

AMP_MODES = ("none", "bf16", "fp16")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 1 << 30


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Full-resolution feature maps are tens of MB each. By default glibc serves every such block with a fresh
    ``mmap`` and unmaps it when freed, so each new tensor is page-faulted in again: on the development machine
    this more than doubled the fusion network's time (docs/PERFORMANCE.md). With ``mmap`` off and a 1 GB trim
    threshold, freed blocks are reused. Numbers do not change. Set ``UAAF_MALLOC_TUNING=0`` to skip it.

    Returns:
        True when the setting was applied (Linux with glibc), False otherwise.
    """
    if os.environ.get("UAAF_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def reset_allocator() -> None:
    """Undo :func:`tune_allocator` (glibc defaults); used by benchmarks to time the untuned baseline."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None, processes: int = 1) -> int:
    """Set torch's intra-op threads; never more threads than cores across ``processes`` processes.

    OpenMP threads spin while they wait, so a process with more threads than free cores can run tens of
    times slower (docs/RELIABILITY.md). ``threads=None`` takes cores // processes (at least 1). A request
    for more than that is capped, with a warning.

    Returns:
        The number of threads set.
    """
    fair = max(usable_cores() // max(processes, 1), 1)
    if threads is None:
        chosen = fair
    elif threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    else:
        chosen = min(threads, fair)
        if threads > fair:
            warnings.warn(f"{threads} threads requested but {usable_cores()} core(s) are shared by {processes} "
                          f"process(es); using {chosen}", stacklevel=2)
    torch.set_num_threads(chosen)
    return chosen


def prepare_process(threads: int | None = None, processes: int = 1) -> int:
    """Allocator tuning and thread count for an entry script; returns the thread count."""
    tune_allocator()
    return configure_threads(threads, processes)


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to torch.device.

    Raises:
        DeviceError: an unknown device name, or CUDA asked for and not available (the message says so).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine "
                          "(use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic for oneDNN (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_context(amp: str, device: torch.device):
    """The autocast context for ``amp`` on ``device``.

    - ``none``: no autocast.
    - ``bf16``: bfloat16 autocast on CUDA, and on CPUs with native bf16 support (others: float32, warned once).
    - ``fp16``: float16 autocast on CUDA (with a GradScaler in training); on a CPU it falls back to float32
      with a warning.
    Attribution always runs in float32 inside (see :class:`models.uaafusion.UAAFusion`).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    if device.type == "cpu" and amp == "bf16":
        if cpu_supports_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        _warn_once("amp: bf16 asked for, but this CPU has no native bfloat16 support; running in float32")
        return contextlib.nullcontext()
    _warn_once(f"amp: {amp} is not available on {device.type}; running in float32")
    return contextlib.nullcontext()


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


@dataclass
class DistInfo:
    """Rank bookkeeping of a (possibly) distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def local_world_size() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
