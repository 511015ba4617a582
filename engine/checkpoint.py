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
import warnings
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


class CodeInFileError(CheckpointError):
    """Loading the file would unpickle objects other than tensors and plain values (and so could run code);
    ``detail`` names them."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class NotACheckpointError(CheckpointError):
    """The file is not a PyTorch checkpoint at all (neither a zip archive nor a pickle); ``reason`` says what it is."""

    def __init__(self, path: str | Path, what: str, reason: str) -> None:
        super().__init__(f"{what} {path} is not a PyTorch checkpoint: {reason}")
        self.reason = reason


_ZIP_SIGNATURE, _PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"  # torch.save's zip format; a pickle (protocol >= 2)
# what a legacy (pickle) torch.save file imports by itself: tensors rebuilt from typed storages
_TORCH_GLOBAL = re.compile(r"^(torch\._utils\._rebuild_\w+|torch\.\w*Storage|torch\.Size|collections\.OrderedDict)$")


def pickle_imports(path: str | Path, pickles: int = 5) -> list[str] | None:
    """The names (``module.name``) that the pickles at the start of ``path`` would import when unpickled, read with
    ``pickletools`` (nothing is unpickled); None when the file does not start with a complete pickle. A legacy
    ``torch.save`` file is several pickles in a row (then raw storage bytes): up to ``pickles`` are read."""
    import pickletools

    names: list[str] = []
    with open(path, "rb") as handle:
        for index in range(pickles):
            strings: list[str] = []
            try:
                for opcode, arg, _ in pickletools.genops(handle):
                    if isinstance(arg, str) and "UNICODE" in opcode.name:
                        strings.append(arg)
                    elif opcode.name in ("GLOBAL", "INST"):
                        names.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL":
                        names.append(".".join(strings[-2:]) if len(strings) >= 2 else "an object")
            except Exception:  # noqa: BLE001 — not a pickle, a truncated one, or the raw bytes after the pickles
                return None if index == 0 else names
            if handle.peek(1)[:1] != _PICKLE_PROTOCOL:  # no further pickle follows
                break
    return names


def describe_load_failure(path: str | Path, what: str, err: Exception) -> CheckpointError:
    """What went wrong when ``torch.load(weights_only=True)`` failed, in words (never torch's advice to load the
    file with ``weights_only=False``)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    found = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", str(err))
    refused = f"{what} {path} was refused: loading it would run code (it would unpickle objects other than " \
              "tensors and plain values: {}); files that run code on load are never loaded"
    if isinstance(err, pickle.UnpicklingError) and found:
        return CodeInFileError(refused.format(found.group(1)), found.group(1))
    if head.startswith(_PICKLE_PROTOCOL):
        names = pickle_imports(path)
        foreign = [name for name in names or [] if not _TORCH_GLOBAL.match(name)]
        if foreign:
            detail = "GLOBAL " + ", ".join(dict.fromkeys(foreign))
            return CodeInFileError(refused.format(detail), detail)
        if names == []:
            return NotACheckpointError(path, what, "it is a plain pickle of Python values (written with pickle.dump, "
                                                   "not torch.save)")
    elif not head.startswith(_ZIP_SIGNATURE):
        return NotACheckpointError(path, what, f"neither a zip archive written by torch.save nor a pickle (it starts "
                                               f"with {head!r})")
    first = str(err).splitlines()[0] if str(err) else ""
    if "weights_only" in first:  # torch's advice to load with weights_only=False: never passed on
        first = "objects other than tensors and plain values"
    return CheckpointError(f"{what} {path} is truncated or corrupted ({type(err).__name__}: {first})")


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load`` that never executes code from the file (weights only, plus NumPy arrays).

    Raises:
        CheckpointError: the file is truncated/corrupted; :class:`NotACheckpointError` when it is no PyTorch file
            at all; :class:`CodeInFileError` when it would unpickle other objects (refused, never run).
    """
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: said below
            return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, MemoryError):  # the file could not be read at all: not a damaged checkpoint
        raise
    except Exception as err:  # noqa: BLE001 — truncated zip, bad data, wrong format: sorted out there
        raise describe_load_failure(path, what, err) from err


def state_mismatch(model: torch.nn.Module | dict[str, Any], state: dict[str, Any], num_classes: int | None = None
                   ) -> str:
    """How ``state`` differs from ``model.state_dict()`` (or from ``model`` when it is a state dict), in one line:
    the class count when only the class layers differ (their first dimension), else the number of missing /
    unexpected keys and of shape mismatches."""
    expected = model.state_dict() if isinstance(model, torch.nn.Module) else model
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if num_classes and shapes and not missing and not unexpected:
        class_layers = [k for k in shapes if expected[k].dim() and state[k].dim()
                        and expected[k].shape[0] == num_classes and state[k].shape[1:] == expected[k].shape[1:]]
        counts = {int(state[k].shape[0]) for k in class_layers}
        if len(class_layers) == len(shapes) and len(counts) == 1:
            return f"the checkpoint has {counts.pop()} classes, the config/model {num_classes}"
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} key(s) the model does not have (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {shapes[0]}: checkpoint {tuple(state[shapes[0]].shape)}"
                     f", model {tuple(expected[shapes[0]].shape)})")
    return "; ".join(parts) or "the state dict does not fit"


def load_model_state(model: torch.nn.Module, state: dict[str, Any], what: str, num_classes: int | None = None,
                     config: str = "the config") -> None:
    """Load a model state (older key names migrated) into ``model``; :class:`CheckpointError` naming ``what`` and
    how the two differ when it does not fit."""
    state = migrate_model_state(state)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError(f"{what} does not fit the model built from {config}: "
                              f"{state_mismatch(model, state, num_classes)}") from None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically: a crash never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def check_checkpoint_file(path: Path, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` when ``path`` is missing, a folder or empty."""
    if path.is_dir():
        inside = [name for name in ("last.pt", "best.pt") if (path / name).is_file()]
        hint = f" (it holds {' and '.join(inside)}: give one of them)" if inside else ""
        raise CheckpointError(f"{what} {path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, raising :class:`CheckpointError` with the file name on any problem."""
    path = Path(path)
    check_checkpoint_file(path)
    try:
        payload = safe_torch_load(path, map_location, what="checkpoint")
    except NotACheckpointError as err:
        raise CheckpointError(f"{path} is not a UAAFusion checkpoint: {err.reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a UAAFusion checkpoint (no '{FORMAT}' marker); "
                              "convert release weights with scripts/convert_release_checkpoint.py")
    return payload


def segmenter_state(payload: dict[str, Any]) -> dict[str, Any]:
    """The segmenter's weights in a checkpoint: a segmenter checkpoint's ``segmenter`` entry
    (``scripts.pretrain_segmenter``) or the ``segmenter.*`` weights of a model file, without that prefix."""
    state = payload.get("segmenter") or payload.get("model", {})
    return {k[len("segmenter."):]: v for k, v in state.items() if k.startswith("segmenter.")} or state


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
    # every weight comes from the file: the encoder's initial weights are neither read nor needed (its package)
    model = build_model(cfg, num_classes, encoder_weights=False).to(device)
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in payload["model"].items()}
    load_model_state(model, state, f"checkpoint {path}", num_classes)
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
