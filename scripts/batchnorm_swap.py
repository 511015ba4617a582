"""Where did joint training change the segmenter: in its weights or in its BatchNorm running statistics?

    python -m scripts.batchnorm_swap --model runs/raw360.pt --segmenter runs/segmenter_notone/segmenter.pt

``--model`` is a model file (exported or a run's last.pt) whose segmenter was trained jointly from the segmenter
in ``--segmenter`` (a ``scripts.pretrain_segmenter --save`` file). Four segmenters are scored at full size on the
labelled evaluation scenes (default: the 30 of MSRS_labelled; ``scripts.pretrain_segmenter``'s ``evaluate``:
mIoU and per-class IoU on infrared, visible and their average I^(0), whose prediction gives the regions at
inference): the pre-trained one, the jointly trained one, and the two mixtures, the joint weights with the
pre-trained running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) and the reverse.
One JSON line per segmenter. ``--save FILE`` also writes the model file with the joint weights and the pre-trained
statistics in its segmenter (everything else as in ``--model``), to fuse with (``test.py``, ``scripts.real_results``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import build_dataset
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.runtime import configure_threads
from models.segmenter import build_segmenter
from scripts.pretrain_segmenter import evaluate

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def is_statistic(key: str) -> bool:
    """True for the BatchNorm buffers that training mode updates without gradients."""
    return key.rsplit(".", 1)[-1] in STATISTICS


def mixed_states(pretrained: dict, joint: dict) -> dict[str, dict]:
    """The four segmenter states: pretrained, joint, and each one's weights with the other's running statistics.

    Raises:
        ValueError: the two states do not hold the same keys (not the same network).
    """
    if set(pretrained) != set(joint):
        extra = sorted(set(pretrained) ^ set(joint))[:3]
        raise ValueError(f"the two segmenters are not the same network (keys differ, e.g. {extra})")
    return {"pretrained": dict(pretrained), "joint": dict(joint),
            "joint weights + pretrained statistics": {k: pretrained[k] if is_statistic(k) else joint[k] for k in joint},
            "pretrained weights + joint statistics": {k: joint[k] if is_statistic(k) else pretrained[k] for k in joint}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model file with the jointly trained segmenter")
    p.add_argument("--segmenter", type=Path, required=True,
                   help="scripts.pretrain_segmenter --save file it started from")
    p.add_argument("--val-name", default="mfnet", help="layout of the evaluation set (data/layouts.py)")
    p.add_argument("--val-root", default="../shared/data/MSRS_labelled")
    p.add_argument("--val-split", default="test")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save", type=Path, default=None,
                   help="write --model with the joint weights + pre-trained statistics segmenter here (atomically)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads)
    try:
        model = load_checkpoint(args.model)
        pretrained = load_checkpoint(args.segmenter)["segmenter"]
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    joint = {k.removeprefix("segmenter."): v for k, v in model["model"].items() if k.startswith("segmenter.")}
    settings = dict(model["config"]["segmenter"], encoder_weights=None)  # the weights come from the files
    num_classes = int(model["num_classes"])
    try:
        states = mixed_states(pretrained, joint)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    val = build_dataset({"name": args.val_name, "root": args.val_root, "mode": "full"}, args.val_split)
    for name, state in states.items():
        segmenter = build_segmenter(num_classes, **settings)
        segmenter.load_state_dict(state)
        scores = evaluate(segmenter, val, num_classes)
        print(json.dumps({"segmenter": name, **scores}), flush=True)
    if args.save is not None:
        chosen = states["joint weights + pretrained statistics"]
        weights = {k: chosen[k.removeprefix("segmenter.")] if k.startswith("segmenter.") else v
                   for k, v in model["model"].items()}
        payload = {k: v for k, v in model.items() if k != "format"}
        save_checkpoint(args.save, {**payload, "model": weights, "segmenter_statistics_from": str(args.segmenter)})
        print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
