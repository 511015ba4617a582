"""Map the authors' release checkpoint (``UAAFusion.pth``) onto our :class:`~models.uaafusion.UAAFusion`.

The release file is ``{"model_f": fusion state dict, "model_s": segmenter state dict}`` (docs/RELEASE.md; every key
is listed in ``release_state_dict.txt``). Our model's state dict has ``fusion.*`` and ``segmenter.*`` keys.
The mapping, key by key:

=============================================================  =================================================
release (``model_f.`` / ``model_s.``)                           ours
=============================================================  =================================================
``alpha`` (K,)                                                 ``fusion.stages.k.rho`` (0-d), k = 0..K-1
``init_conv_ir.*``, ``init_conv_vi.*``                         ``fusion.init_memory_ir.*``, ``fusion.init_memory_vi.*``
``blockflow.k.conv{1,3,4,5,6}.*``                              ``fusion.stages.k.{lift,refine,project,memory_in,
                                                               memory_out}.*`` (:data:`STAGE_PARTS`)
``blockflow.k.conv2.conv_unit.0.weight`` (32, 96, 3, 3)        ``fusion.stages.k.merge.conv_unit.0.weight``; input
                                                               blocks [F1, m_l, m_s] reordered to our [F1, m_s, m_l]
``blockflow.k.lstm.conv_x{i,f,o,j}.*`` (4 × (32, 32, 3, 3))    ``fusion.stages.k.lstm.conv_z.*`` (128, 32, 3, 3),
                                                               out-channel blocks in the order i, f, o, j (= g)
``blockflow.k.lstm.conv_h{i,f,o,j}.*``                         ``fusion.stages.k.lstm.conv_h.*`` likewise
``model_s.*``                                                  ``segmenter.*`` (identical names)
``init_conv_f0.*``                                             unused (the release never calls it)
``blockflow.{K-1}.{conv5,conv6,lstm}.*``                       unused (the last stage's new long-term memory is
                                                               never read; our last stage does not build it)
=============================================================  =================================================

Anything else that does not map, any parameter of the model that receives nothing, and any shape mismatch is
an error (:class:`ReleaseCheckpointError`) naming every offending key.

:data:`RELEASE_SWITCHES` lists the config switch of each docs/RELEASE.md row with its release and paper values; the
profile ``configs/official_release.yaml`` sets the release values.
"""
from __future__ import annotations

import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

RELEASE_TOPS = ("model_f", "model_s")
MAX_LISTED = 40  # keys listed per kind of problem in an error message
LSTM_GATE_ORDER = ("i", "f", "o", "j")  # our conv_z / conv_h chunk order i, f, o, g (j = the candidate g)
REASON_INIT_CONV_F0 = "init_conv_f0 is never called by the release's own forward pass (docs/RELEASE.md (networks))"
REASON_LAST_STAGE = ("the last stage's ConvLSTM/conv5/conv6 only produce a long-term memory that no later stage "
                     "reads (computed and discarded in the release); our last stage does not build them")

# release stage part -> ours (models/fusion_net.py); the release's fusion network names say nothing of their role
STAGE_PARTS = {"conv1": "lift", "conv2": "merge", "conv3": "refine", "conv4": "project", "conv5": "memory_in",
               "lstm": "lstm", "conv6": "memory_out"}
TOP_PARTS = {"init_conv_ir": "init_memory_ir", "init_conv_vi": "init_memory_vi"}

_LSTM_KEY = re.compile(r"^blockflow\.(\d+)\.lstm\.conv_([xh])([ifoj])\.(weight|bias)$")
_STAGE_KEY = re.compile(r"^blockflow\.(\d+)\.([^.]+)\.")


class ReleaseCheckpointError(ValueError):
    """The release checkpoint cannot be read, is not a release checkpoint, or does not fit the model."""


@dataclass(frozen=True)
class ReleaseSwitch:
    """One config key that selects a docs/RELEASE.md behaviour.

    Attributes:
        row: the docs/RELEASE.md row.
        key: dotted config key.
        release: the value in ``configs/official_release.yaml``.
        paper: the paper's value (``configs/fmb_paper.yaml`` / the built-in defaults).
    """

    row: int
    key: str
    release: Any
    paper: Any


RELEASE_SWITCHES: tuple[ReleaseSwitch, ...] = (
    ReleaseSwitch(1, "fusion.gradient_step", False, True),
    ReleaseSwitch(2, "fusion.rho_init", 0.001, 0.01),
    ReleaseSwitch(3, "attribution.attention_reduction", "mean", "sum"),
    ReleaseSwitch(4, "attribution.attention_score", "masked_mean", "region"),
    ReleaseSwitch(5, "attribution.region_pooling", "batch", "image"),
    ReleaseSwitch(6, "attribution.region_normalization", "release_mean", "sum"),
    ReleaseSwitch(7, "loss.intensity_form", "release_squared_weight", "weighted"),
    ReleaseSwitch(8, "segmenter.arch", "release_mobilenetv2", "deeplabv3plus"),
    ReleaseSwitch(8, "segmenter.output", "sigmoid", None),
    ReleaseSwitch(9, "loss.ignore_classes", [0], []),
    ReleaseSwitch(10, "train.epochs", 40, 50),
    ReleaseSwitch(10, "data.mode", "release_patches", "tiles"),
    ReleaseSwitch(10, "data.patch_size", 256, 128),
    ReleaseSwitch(11, "train.separate_segmenter_optimizer", True, False),
    ReleaseSwitch(13, "fusion.lstm_first_step", "release", "zero_state"),
    ReleaseSwitch(14, "test.output", "stretch", "clamp"),
    ReleaseSwitch(14, "test.chroma", "release", "visible"),
    ReleaseSwitch(15, "attribution.segmenter_mode", "follow", "eval"),
    ReleaseSwitch(15, "attribution.attention_initial_gradient", True, False),
    ReleaseSwitch(15, "loss.seg_sources", ["fused", "ir", "vi"], ["ir", "vi", "fused"]),
    ReleaseSwitch(16, "test.input_reading", "release", "exact"),
)


def config_value(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``."""
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


def release_profile_differences(cfg: Mapping[str, Any]) -> list[str]:
    """The switches of :data:`RELEASE_SWITCHES` that ``cfg`` does not set to the release's value, as text."""
    return [f"row {s.row}: {s.key} = {config_value(cfg, s.key)!r} (release: {s.release!r})"
            for s in RELEASE_SWITCHES if config_value(cfg, s.key) != s.release]


# --------------------------------------------------------------------------------------------- reading


def _as_state_dict(value: Any, where: str) -> dict[str, torch.Tensor]:
    """A state dict from a mapping of tensors or a whole module; anything else raises."""
    if isinstance(value, nn.Module):
        value = value.state_dict()
    if not isinstance(value, Mapping):
        raise ReleaseCheckpointError(f"{where} is a {type(value).__name__}, not a state dict")
    bad = [str(k) for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ReleaseCheckpointError(f"{where} holds entries that are not named tensors: {bad[:5]}")
    return dict(value)


def split_release(release: Any, source: str = "release checkpoint") -> tuple[dict[str, torch.Tensor],
                                                                            dict[str, torch.Tensor]]:
    """The ``model_f`` and ``model_s`` state dicts of a release checkpoint.

    Args:
        release: ``{"model_f": {...}, "model_s": {...}}`` (extra top-level entries are ignored) or a flat dict
            with ``model_f.`` / ``model_s.`` prefixed keys.
        source: how to name it in errors (e.g. the file path).

    Returns:
        (fusion state dict, segmenter state dict), keys without the prefix.

    Raises:
        ReleaseCheckpointError: not a dict, or ``model_f`` / ``model_s`` missing or not state dicts.
    """
    if not isinstance(release, Mapping):
        raise ReleaseCheckpointError(f"{source} is not a UAAFusion release checkpoint: it holds a "
                                     f"{type(release).__name__}, expected a dict with 'model_f' and 'model_s'")
    parts = []
    for top in RELEASE_TOPS:
        if top in release:
            parts.append(_as_state_dict(release[top], f"{source}: '{top}'"))
            continue
        flat = {k[len(top) + 1:]: v for k, v in release.items() if isinstance(k, str) and k.startswith(top + ".")}
        if not flat:
            keys = [str(k) for k in list(release)[:8]]
            raise ReleaseCheckpointError(f"{source} is not a UAAFusion release checkpoint: no '{top}' entry "
                                         f"(expected 'model_f' and 'model_s'; top-level keys: {keys})")
        parts.append(_as_state_dict(flat, f"{source}: '{top}.*'"))
    return parts[0], parts[1]


def read_release_checkpoint(path: str | Path, allow_unsafe_unpickle: bool = False,
                            notice: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Load a release checkpoint file without running code from it.

    ``torch.load(weights_only=True)``: tensors and plain values only. A file that needs more (pickled objects such
    as an ``argparse.Namespace`` next to the weights) is refused, unless ``allow_unsafe_unpickle`` is set, which
    loads it with ``weights_only=False`` (this can run code from the file: only for files from a source you
    trust) and says so through ``notice``. Tensors are loaded to the CPU.

    Args:
        path: the release ``.pth`` file.
        allow_unsafe_unpickle: the explicit opt-in described above (``--unsafe-unpickle`` of the converter).
        notice: receives the opt-in's warning; default prints to stderr.

    Returns:
        ``{"model_f": state dict, "model_s": state dict}``.

    Raises:
        ReleaseCheckpointError: missing, empty, unreadable or refused file, or not a release checkpoint; names the
            file.
    """
    from engine.checkpoint import (
        CheckpointError,
        CodeInFileError,
        NotACheckpointError,
        check_checkpoint_file,
        describe_load_failure,
    )

    path = Path(path)
    try:
        check_checkpoint_file(path, "release checkpoint")
    except CheckpointError as err:
        raise ReleaseCheckpointError(str(err)) from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: said below
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        problem = describe_load_failure(path, "release checkpoint", err)
        if isinstance(problem, NotACheckpointError):  # random bytes, text: no pickled objects to allow
            raise ReleaseCheckpointError(str(problem)) from err
        if not allow_unsafe_unpickle:
            detail = problem.detail if isinstance(problem, CodeInFileError) else "not a plain value"
            raise ReleaseCheckpointError(
                f"release checkpoint {path} was refused: it holds pickled objects besides tensors "
                f"({detail}), and unpickling them can run code. If you trust the file, convert it with "
                "--unsafe-unpickle") from err
        (notice or (lambda text: print(text, file=sys.stderr)))(
            f"warning: loading {path} with weights_only=False (--unsafe-unpickle): this unpickles arbitrary "
            "objects and can run code from the file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as inner:  # noqa: BLE001 — truncated zip, bad pickle, missing class: all unreadable
            raise ReleaseCheckpointError(f"cannot read release checkpoint {path}: {type(inner).__name__}: {inner}") \
                from inner
    except Exception as err:  # noqa: BLE001 — truncated zip, bad data: all unreadable
        problem = describe_load_failure(path, "release checkpoint", err)
        if isinstance(problem, NotACheckpointError):
            raise ReleaseCheckpointError(str(problem)) from err
        raise ReleaseCheckpointError(f"cannot read release checkpoint {path}: {type(err).__name__}: {err}") from err
    fusion, segmenter = split_release(payload, source=str(path))
    return {"model_f": fusion, "model_s": segmenter}


def release_num_classes(release: Mapping[str, Any], source: str = "release checkpoint") -> int:
    """C from the shape of ``model_s.cls_conv.weight`` (C, 256, 1, 1)."""
    _, segmenter = split_release(release, source)
    weight = segmenter.get("cls_conv.weight")
    if weight is None or weight.dim() != 4:
        raise ReleaseCheckpointError(f"{source}: 'model_s.cls_conv.weight' missing or not a conv weight; "
                                     "cannot tell the number of classes")
    return int(weight.shape[0])


# ---------------------------------------------------------------------------------------------- mapping


def reorder_conv2_inputs(weight: torch.Tensor) -> torch.Tensor:
    """Release conv2 weight on Cat(F1, m_l, m_s) → the same conv on our Cat(F1, m_s, m_l).

    Args:
        weight: (out, 3·B, kh, kw) with input blocks [F1, m_l, m_s] of B channels each.

    Returns:
        (out, 3·B, kh, kw) with input blocks [F1, m_s, m_l].
    """
    if weight.dim() != 4 or weight.shape[1] % 3:
        raise ReleaseCheckpointError(f"conv2 weight must have 3·B input channels, got shape {tuple(weight.shape)}")
    f1, m_l, m_s = weight.chunk(3, dim=1)
    return torch.cat([f1, m_s, m_l], dim=1).contiguous()


def our_fusion_key(release_key: str) -> str:
    """Our ``fusion.*`` key for a release ``model_f`` key: ``blockflow.1.conv3.x`` → ``stages.1.refine.x``."""
    if m := _STAGE_KEY.match(release_key):
        rest = release_key[m.end():]
        return f"fusion.stages.{m[1]}.{STAGE_PARTS.get(m[2], m[2])}.{rest}"
    top, _, rest = release_key.partition(".")
    return f"fusion.{TOP_PARTS.get(top, top)}" + (f".{rest}" if rest else "")


def release_source_of(target: str) -> str:
    """The release key(s) feeding one of our keys, for messages: ``fusion.stages.0.rho`` ← ``model_f.alpha[0]``."""
    if target.startswith("segmenter."):
        return "model_s." + target[len("segmenter."):]
    key = target[len("fusion."):] if target.startswith("fusion.") else target
    if m := re.match(r"^stages\.(\d+)\.rho$", key):
        return f"model_f.alpha[{m[1]}]"
    if m := re.match(r"^stages\.(\d+)\.lstm\.conv_([zh])\.(weight|bias)$", key):
        return f"model_f.blockflow.{m[1]}.lstm.conv_{'x' if m[2] == 'z' else 'h'}{{i,f,o,j}}.{m[3]}"
    if m := re.match(r"^stages\.(\d+)\.([^.]+)\.(.*)$", key):
        release_part = {ours: theirs for theirs, ours in STAGE_PARTS.items()}.get(m[2], m[2])
        return f"model_f.blockflow.{m[1]}.{release_part}.{m[3]}"
    top, _, rest = key.partition(".")
    release_top = {ours: theirs for theirs, ours in TOP_PARTS.items()}.get(top, top)
    return f"model_f.{release_top}" + (f".{rest}" if rest else "")


def _stage_builds_lstm(model: nn.Module, stage: int) -> bool:
    stages = model.fusion.stages
    return 0 <= stage < len(stages) and hasattr(stages[stage], "lstm")


def convert_release_state(
    release: Mapping[str, Any], model: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map every key of a release checkpoint onto ``model``'s state dict (see the module docstring).

    Args:
        release: ``{"model_f": {...}, "model_s": {...}}`` (or flat ``model_f.``/``model_s.`` keys).
        model: a :class:`~models.uaafusion.UAAFusion` built from the release profile (its shapes are the target).

    Returns:
        (state, unused): ``state`` has exactly ``model.state_dict()``'s keys, shapes and dtypes (load it with
        ``strict=True``); ``unused`` maps each release key that is deliberately left out (``model_f.init_conv_f0.*``
        and the last stage's ``conv5``/``conv6``/``lstm``) to the reason.

    Raises:
        ReleaseCheckpointError: naming every release key that maps nowhere, every model key that gets nothing
            (with the release key expected to feed it), and every shape mismatch.
    """
    fusion_sd, seg_sd = split_release(release)
    target = model.state_dict()
    num_stages = len(model.fusion.stages)
    state: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    mismatched_targets: set[str] = set()
    lstm_groups: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}

    def put(key: str, value: torch.Tensor, source: str) -> None:
        if key not in target:
            unexpected.append(f"{source} (would be {key}, which the model built from the config does not have)")
        elif tuple(value.shape) != tuple(target[key].shape):
            mismatched.append(f"{source} {tuple(value.shape)} -> {key} {tuple(target[key].shape)}")
            mismatched_targets.add(key)
        else:
            state[key] = value.detach().to(dtype=target[key].dtype).clone()

    for key, value in fusion_sd.items():
        source = f"model_f.{key}"
        if key == "alpha":
            if value.dim() != 1 or value.numel() != num_stages:
                mismatched.append(f"{source} {tuple(value.shape)} -> fusion.stages.*.rho ({num_stages} stages)")
                mismatched_targets.update(f"fusion.stages.{k}.rho" for k in range(num_stages))
                continue
            for k in range(num_stages):
                put(f"fusion.stages.{k}.rho", value[k].reshape(()), f"{source}[{k}]")
            continue
        if key.startswith("init_conv_f0."):
            unused[source] = REASON_INIT_CONV_F0
            continue
        stage_match = _STAGE_KEY.match(key)
        if stage_match:
            stage, part = int(stage_match[1]), stage_match[2]
            if part in ("conv5", "conv6", "lstm") and stage == num_stages - 1 and not _stage_builds_lstm(model, stage):
                unused[source] = REASON_LAST_STAGE
                continue
            if lstm_match := _LSTM_KEY.match(key):
                group = (int(lstm_match[1]), lstm_match[2], lstm_match[4])
                lstm_groups.setdefault(group, {})[lstm_match[3]] = value
                continue
            if part == "conv2" and key.endswith("conv2.conv_unit.0.weight"):
                if value.dim() != 4 or value.shape[1] % 3:
                    mismatched.append(f"{source} {tuple(value.shape)}: expected 3·B input channels [F1, m_l, m_s]")
                    mismatched_targets.add(our_fusion_key(key))
                    continue
                value = reorder_conv2_inputs(value)
        put(our_fusion_key(key), value, source)

    missing_release: list[str] = []
    for (stage, kind, leaf), gates in sorted(lstm_groups.items()):
        names = [f"model_f.blockflow.{stage}.lstm.conv_{kind}{g}.{leaf}" for g in LSTM_GATE_ORDER]
        absent = [name for g, name in zip(LSTM_GATE_ORDER, names) if g not in gates]
        if absent:
            missing_release.extend(absent)
            continue
        shapes = {tuple(gates[g].shape) for g in LSTM_GATE_ORDER}
        source = f"model_f.blockflow.{stage}.lstm.conv_{kind}{{i,f,o,j}}.{leaf}"
        if len(shapes) != 1:
            mismatched.append(f"{source}: the four gates differ in shape {sorted(shapes)}")
            mismatched_targets.add(f"fusion.stages.{stage}.lstm.conv_{'z' if kind == 'x' else 'h'}.{leaf}")
            continue
        stacked = torch.cat([gates[g] for g in LSTM_GATE_ORDER], dim=0)
        put(f"fusion.stages.{stage}.lstm.conv_{'z' if kind == 'x' else 'h'}.{leaf}", stacked, source)

    for key, value in seg_sd.items():
        put(f"segmenter.{key}", value, f"model_s.{key}")

    missing = [f"{key} (from {release_source_of(key)})" for key in target
               if key not in state and key not in mismatched_targets]
    if unexpected or missing or mismatched or missing_release:
        lines = [f"the release checkpoint does not fit the model built from the config "
                 f"({num_stages} stages, {type(model.segmenter).__name__} segmenter):"]
        for title, items in (("release keys that map to nothing in the model", unexpected),
                             ("missing keys (the model needs them, the checkpoint lacks them)", missing),
                             ("missing release keys (incomplete ConvLSTM gate sets)", missing_release),
                             ("shape mismatches (release -> ours)", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items[:MAX_LISTED])
                if len(items) > MAX_LISTED:
                    lines.append(f"    ... and {len(items) - MAX_LISTED} more")
        lines.append("  (the release's networks need fusion.stages 5, fusion.channels 32, both memories and "
                     "segmenter.arch release_mobilenetv2, as in configs/official_release.yaml)")
        raise ReleaseCheckpointError("\n".join(lines))
    return {key: state[key] for key in target}, unused
