"""Checkpoints that describe and resume themselves, written atomically and checked when read.

Reading never runs code from the file: ``torch.load(weights_only=True)`` accepts tensors and plain Python
values only (checkpoints hold nothing else; NumPy's generator state is stored as a tensor). Files written
before that change hold NumPy arrays, which are accepted through an allow-list of NumPy's array
reconstruction functions only. Anything else is refused with a message.
"""
from __future__ import annotations

import io
import pickle
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from utils.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from models.uaafusion import UAAFusion

FORMAT = "uaafusion-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not one of ours."""


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and, when present, CUDA) generator states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states` (the tensors may have been loaded onto a GPU: they are brought back)."""
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].cpu().numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def _numpy_array_globals() -> list:
    """NumPy's array reconstruction functions (for checkpoints written with NumPy RNG arrays)."""
    names = [("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
             ("numpy", "ndarray"), ("numpy", "dtype")]
    found = []
    for module, attr in names:
        try:
            found.append(getattr(__import__(module, fromlist=[attr]), attr))
        except (ImportError, AttributeError):
            continue
    found.extend(getattr(np.dtypes, name) for name in ("UInt32DType", "Int64DType", "Float64DType")
                 if hasattr(getattr(np, "dtypes", None), name))
    return found


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load`` that never executes code from the file (weights only, plus NumPy arrays).

    Raises:
        CheckpointError: the file is truncated/corrupted, or needs to unpickle other objects (refused).
    """
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, MemoryError):  # the file could not be read at all: not a damaged checkpoint
        raise
    except Exception as err:  # noqa: BLE001 — truncated zip, bad data, wrong format: all the same to the user
        found = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and found:
            raise CheckpointError(f"{what} {path} was refused: loading it would unpickle objects other than "
                                  f"tensors and plain values ({found.group(1)}); files that run code on load are "
                                  "never loaded") from err
        raise CheckpointError(f"{what} {path} is truncated or corrupted ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from err


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
    payload = safe_torch_load(path, map_location, what="checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a UAAFusion checkpoint (no '{FORMAT}' marker); "
                              "convert release weights with scripts/convert_release_checkpoint.py")
    return payload


def load_model_from_checkpoint(path: str | Path, cfg: dict | None = None, device: str | torch.device = "cpu",
                               overrides: list[str] | tuple[str, ...] = ()) -> tuple[UAAFusion, dict]:
    """Rebuild the model of a training checkpoint and load its weights (restored to float32).

    Args:
        cfg: build from this resolved config instead of the checkpoint's own.
        overrides: ``key=value`` overrides applied to the checkpoint's config (ignored when ``cfg`` is given).

    Returns:
        (model in eval mode, checkpoint payload with ``config`` replaced by the config used).
    """
    from engine.config import apply_overrides
    from models.uaafusion import build_model  # here: checkpoints of other kinds need no model code

    payload = load_checkpoint(path, map_location=device)
    for key in ("config", "model"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry; it was not written by train.py "
                                  "or scripts/convert_release_checkpoint.py")
    cfg = cfg or apply_overrides(payload["config"], overrides)
    payload["model"] = migrate_model_state(payload["model"])
    num_classes = payload.get("num_classes") or cfg["data"]["num_classes"]
    if not num_classes:
        raise CheckpointError(f"{path} does not record the number of classes")
    model = build_model(cfg, num_classes).to(device)
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in payload["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model built from the config: {err}") from err
    payload["config"] = cfg
    return model.eval(), payload


def migrate_model_state(state: dict[str, Any]) -> dict[str, Any]:
    """Rename the fusion-network keys of checkpoints written before the modules got descriptive names
    (``fusion.blockflow.k.conv1`` → ``fusion.stages.k.lift``, ``init_conv_ir`` → ``init_memory_ir``, ...)."""
    if not any(k.startswith(("fusion.blockflow.", "fusion.init_conv_")) for k in state):
        return state
    from models.release.convert import STAGE_PARTS, TOP_PARTS

    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[:2] == ["fusion", "blockflow"] and len(parts) > 3:
            parts[1] = "stages"
            parts[3] = STAGE_PARTS.get(parts[3], parts[3])
        elif parts[0] == "fusion" and len(parts) > 1:
            parts[1] = TOP_PARTS.get(parts[1], parts[1])
        out[".".join(parts)] = value
    return out
