"""Where did joint training change the segmenter: in its weights or in its BatchNorm running statistics?

    python -m scripts.batchnorm_swap --model runs/raw360.pt --segmenter runs/segmenter_notone/segmenter.pt
    python -m scripts.batchnorm_swap --model checkpoints/uaafusion_mfnet.pt --recalibrate   # no pre-trained file

``--model`` is a model file (exported or a run's last.pt) whose segmenter was trained jointly from the segmenter
in ``--segmenter`` (a ``scripts.pretrain_segmenter --save`` file). Four segmenters are scored at full size on the
labelled evaluation scenes (default: the 30 of MSRS_labelled; ``scripts.pretrain_segmenter``'s ``evaluate``:
mIoU and per-class IoU on infrared, visible and their average I^(0), whose prediction gives the regions at
inference): the pre-trained one, the jointly trained one, and the two mixtures, the joint weights with the
pre-trained running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) and the reverse.
One JSON line per segmenter.

``--recalibrate`` adds a fifth: the joint weights with running statistics re-estimated on whole training images
(a cumulative mean over every scene of the model's own training set, its infrared, visible and averaged image as
one batch, BatchNorm in training mode and dropout off; infrared images toned as the model's config says). This is
the other repair of the joint stage's statistics (the first is ``train.segmenter_batchnorm: frozen``) and needs
no pre-trained segmenter's statistics: without ``--segmenter`` only the joint and the re-estimated one are scored.

``--save FILE`` also writes the model file with the joint weights and the pre-trained (or, with ``--save-statistics
recalibrated``, the re-estimated) statistics in its segmenter, everything else as in ``--model``, to fuse with
(``test.py``, ``scripts.real_results``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from data.datasets import build_dataset
from engine.checkpoint import load_checkpoint, save_checkpoint, segmenter_state
from engine.runtime import configure_threads
from engine.trainer import dataset_config
from models.segmenter import build_segmenter, pad_to_multiple, segmenter_stride
from scripts.pretrain_segmenter import SOURCES, evaluate, source_image

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
MIXED = "joint weights + pretrained statistics"
RECALIBRATED = "joint weights + statistics re-estimated on training images"


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
            MIXED: {k: pretrained[k] if is_statistic(k) else joint[k] for k in joint},
            "pretrained weights + joint statistics": {k: joint[k] if is_statistic(k) else pretrained[k] for k in joint}}


def recalibrated_state(segmenter: torch.nn.Module, dataset, sources: tuple[str, ...] = SOURCES,
                       limit: int | None = None, progress: bool = True) -> dict:
    """``segmenter``'s state with its BatchNorm running statistics re-estimated on ``dataset``'s whole images.

    Each scene is one batch of its ``sources`` images (ir, vi and I^(0) = (ir + vi) / 2, padded to the segmenter's
    stride); the statistics are the cumulative mean over the batches (as ``torch.optim.swa_utils.update_bn``: reset,
    momentum None, forward passes without gradient with the BatchNorm layers in training mode), except that every
    other layer stays in eval mode, so the decoder's dropout is off as at inference (``update_bn`` trains the whole
    network and so measures the statistics behind dropout). The weights are left as they are; the segmenter ends
    in the mode it started in. ``limit``: the first scenes only.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 1:
        raise ValueError("recalibrating BatchNorm statistics needs at least one training scene")
    stride = segmenter_stride(segmenter)

    def batches():
        for i in tqdm(range(count), desc="re-estimating BatchNorm statistics", disable=not progress, leave=False):
            sample = dataset[i]
            yield pad_to_multiple(torch.stack([source_image(sample, s) for s in sources]), stride)[0]

    norms = [m for m in segmenter.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = segmenter.training
    segmenter.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative mean over the batches
        module.train()
    try:
        with torch.no_grad():
            for batch in batches():
                segmenter(batch)
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
        segmenter.train(was_training)
    return {k: v.detach().clone() for k, v in segmenter.state_dict().items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model file with the jointly trained segmenter")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="scripts.pretrain_segmenter --save file it started from (needed unless --recalibrate)")
    p.add_argument("--val-name", default="mfnet", help="layout of the evaluation set (data/layouts.py)")
    p.add_argument("--val-root", default="../shared/data/MSRS_labelled")
    p.add_argument("--val-split", default="test")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--recalibrate", action="store_true",
                   help="also score the joint weights with statistics re-estimated on whole training images")
    p.add_argument("--recalibrate-limit", type=int, default=None, metavar="N",
                   help="re-estimate on the first N training scenes only (default: all)")
    p.add_argument("--save", type=Path, default=None,
                   help="write --model with the joint weights and other statistics in its segmenter here (atomically)")
    p.add_argument("--save-statistics", choices=("pretrained", "recalibrated"), default="pretrained",
                   help="which statistics --save puts with the joint weights (recalibrated needs --recalibrate)")
    args = p.parse_args(argv)
    if args.segmenter is None and not args.recalibrate:
        p.error("give --segmenter (the pre-trained segmenter file), --recalibrate, or both")
    if args.save is not None and args.save_statistics == "pretrained" and args.segmenter is None:
        p.error("--save with pre-trained statistics needs --segmenter (or use --save-statistics recalibrated)")
    if args.save_statistics == "recalibrated" and not args.recalibrate:
        p.error("--save-statistics recalibrated needs --recalibrate")
    return args


def training_set(config: dict):
    """The model's own training scenes at full size, infrared toned as its config says (labels not needed)."""
    data = config["data"]
    cfg = {**dataset_config(data), "ir_tone_reference": data.get("ir_tone_reference"), "mode": "full"}
    return build_dataset(cfg, data.get("train_split", "train"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads)
    try:
        model = load_checkpoint(args.model)
        pretrained = None if args.segmenter is None else load_checkpoint(args.segmenter)["segmenter"]
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    joint = segmenter_state({"model": model["model"]})
    settings = dict(model["config"]["segmenter"], encoder_weights=None)  # the weights come from the files
    num_classes = int(model["num_classes"])
    try:
        states = {"joint": joint} if pretrained is None else mixed_states(pretrained, joint)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    val = build_dataset({"name": args.val_name, "root": args.val_root, "mode": "full"}, args.val_split)
    if args.recalibrate:
        try:
            train = training_set(model["config"])
        except (KeyError, OSError, ValueError) as err:
            print(f"error: the model's training set (config data) cannot be read for --recalibrate: {err}",
                  file=sys.stderr)
            return 2
        segmenter = build_segmenter(num_classes, **settings)
        segmenter.load_state_dict(joint)
        states[RECALIBRATED] = recalibrated_state(segmenter, train, limit=args.recalibrate_limit)
    for name, state in states.items():
        segmenter = build_segmenter(num_classes, **settings)
        segmenter.load_state_dict(state)
        scores = evaluate(segmenter, val, num_classes)
        print(json.dumps({"segmenter": name, **scores}), flush=True)
    if args.save is not None:
        chosen = states[RECALIBRATED if args.save_statistics == "recalibrated" else MIXED]
        weights = {k: chosen[k.removeprefix("segmenter.")] if k.startswith("segmenter.") else v
                   for k, v in model["model"].items()}
        payload = {k: v for k, v in model.items() if k != "format"}
        source = "training images" if args.save_statistics == "recalibrated" else str(args.segmenter)
        save_checkpoint(args.save, {**payload, "model": weights, "segmenter_statistics_from": source})
        print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
