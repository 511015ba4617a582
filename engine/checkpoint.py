"""Checkpoints that describe and resume themselves, written atomically and checked when read."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_write_bytes

FORMAT = "uaafusion-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not one of ours."""


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and, when present, CUDA) generator states."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically: a crash never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, raising :class:`CheckpointError` with the file name on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 — truncated zip, bad pickle, wrong format: all the same to the user
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a UAAFusion checkpoint (no '{FORMAT}' marker); "
                              "convert release weights with scripts/convert_release_checkpoint.py")
    return payload
