"""Turn a training checkpoint into a model file to ship: weights, config, classes and the training record, no
optimiser or generator state (it fuses with test.py; it cannot resume training).

    python -m scripts.export_model runs/mfnet_tone/last.pt checkpoints/uaafusion_mfnet.pt [--half] [--note TEXT]
    python -m scripts.export_model runs/x.pt runs/y.pt --set attribution.region_flip=true     # change its config
    python -m scripts.export_model runs/x.pt runs/y.pt --segmenter runs/segmenter_aug/segmenter.pt

``--half`` stores floating-point tensors in float16 (about half the size); loading restores float32. ``--set``
changes the stored config (inference settings such as ``attribution.region_scales``; the weights stay as they are).
``--segmenter`` puts the weights of another segmenter of the same architecture (a ``scripts.pretrain_segmenter``
checkpoint or a model file) in place of the model's, and drops the model's calibration record, which described the
segmenter it replaces (docs/DECISIONS.md D21).
The output is written atomically and loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, segmenter_state, state_mismatch
from engine.config import ConfigError, apply_overrides

KEPT = ("num_classes", "class_names", "history", "seed", "calibration")


def replace_segmenter(model_state: dict, source: Path, num_classes: int | None = None) -> dict:
    """``model_state`` with its ``segmenter.*`` weights taken from the segmenter checkpoint or model file
    ``source``, which must hold the same keys with the same shapes."""
    new = segmenter_state(load_checkpoint(source))
    old = segmenter_state({"model": model_state})
    if set(old) != set(new) or any(tuple(old[k].shape) != tuple(new[k].shape) for k in old):
        raise CheckpointError(f"--segmenter {source} does not fit the model's segmenter: "
                              f"{state_mismatch(old, new, num_classes)}")
    return {**model_state, **{f"segmenter.{k}": v.to(model_state[f"segmenter.{k}"].dtype) for k, v in new.items()}}


def export(source: Path, target: Path, half: bool = False, note: str = "", overrides: tuple[str, ...] = (),
           segmenter: Path | None = None) -> dict:
    """Write the shipped model file, its config changed by ``overrides`` (``KEY=VALUE``) and its segmenter
    replaced by ``segmenter``'s when given; returns its payload."""
    payload = load_checkpoint(source)
    for key in ("model", "config"):
        if key not in payload:
            raise CheckpointError(f"{source} has no '{key}' entry; not a training checkpoint")
    state = (payload["model"] if segmenter is None
             else replace_segmenter(payload["model"], segmenter, payload.get("num_classes")))
    weights = {k: (v.half() if half and torch.is_floating_point(v) else v).contiguous().clone()
               for k, v in state.items()}
    overflow = [k for k, v in weights.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if overflow:
        raise CheckpointError(f"{source}: {len(overflow)} tensor(s) are not finite"
                              + (" in float16 (values beyond ±65504); export without --half" if half else "")
                              + f", e.g. {overflow[:3]}")
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    shipped = {"model": weights, "config": apply_overrides(payload["config"], list(overrides)),
               **{k: payload[k] for k in KEPT if k in payload and not (k == "calibration" and segmenter)},
               "exported_from": {"file": Path(source).name, "sha256": digest, "global_step": payload.get("global_step"),
                                 "half": half, "note": note}}
    if segmenter is not None:
        shipped["exported_from"]["segmenter"] = {"file": Path(segmenter).name,
                                                 "sha256": hashlib.sha256(Path(segmenter).read_bytes()).hexdigest()}
    save_checkpoint(target, shipped)
    return shipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a train.py checkpoint (last.pt)")
    p.add_argument("target", type=Path, help="the model file to write")
    p.add_argument("--half", action="store_true", help="store floating-point tensors in float16")
    p.add_argument("--note", default="", help="a line stored in the file (e.g. what the model was trained on)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a key of the stored config (repeatable)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="take the segmenter's weights from this segmenter checkpoint or model file")
    args = p.parse_args(argv)
    if args.target.resolve() == args.source.resolve():
        print("error: the target must differ from the source", file=sys.stderr)
        return 2
    try:
        args.target.parent.mkdir(parents=True, exist_ok=True)
        export(args.source, args.target, args.half, args.note, tuple(args.overrides), args.segmenter)
    except (CheckpointError, ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = args.target.stat().st_size / 2**20
    print(f"wrote {args.target} ({size:.1f} MB{', float16 tensors' if args.half else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
