"""Train the segmenter alone, report per-class IoU, and optionally save it as the joint run's starting segmenter.

    # does the segmenter learn more than the background? (session 3's probe: MobileNetV2 from random weights)
    python -m scripts.pretrain_segmenter --weights none --steps 450
    python -m scripts.pretrain_segmenter --weights median --steps 450
    # the ImageNet model's segmenter: EfficientNet-Lite0, 256² crops (configs/mfnet_imagenet.yaml, docs/RESULTS.md)
    python -m scripts.pretrain_segmenter --encoder tu-tf_efficientnet_lite0 --encoder-weights imagenet \\
        --mode random_crop --patch 256 --weights log --lr 5e-4 --schedule cosine --steps 1200 \\
        --save runs/segmenter_mfnet/segmenter.pt
    # the session-10 and -12 defaults': the same for 600 steps on infrared images histogram-matched to MSRS's tone
    # (the whole command is in configs/mfnet_tone.yaml's header; docs/DECISIONS.md D14)
    python -m scripts.pretrain_segmenter ... --steps 600 --ir-tone-reference ../shared/data/MSRS/ir/00556D.png ...
    # the default model's since session 13: also on the averaged image of every crop, the image the regions come
    # from at inference (configs/mfnet_tone_frozen_avg.yaml's header; docs/DECISIONS.md D16)
    python -m scripts.pretrain_segmenter ... --steps 600 --sources ir vi avg --ir-tone-reference ...

Defaults: DeepLabV3+ (MobileNetV2) from random weights on the 170 MFNet scenes (128² tiles with flips, batch 8,
Adam 1e-3), cross-entropy on the infrared and the visible image of each patch (``--sources``), then evaluated at
full size on the 30 MSRS_labelled scenes and on the first ``--eval-train`` MFNet training scenes: infrared,
visible and their average I^(0) = (ir + vi) / 2, on which the segmenter finds the regions at inference.
``--weights`` weights the classes (``losses.class_weights``; none of them is in the paper). The segmenter runs in
channels-last layout (the same function; EfficientNet-Lite0 trains about 1.7 times faster so at 256²).

``--save FILE`` writes the segmenter (atomically) in a file that ``train.segmenter_checkpoint`` accepts, with its
settings and scores; the last line printed is a JSON record of the settings and the IoUs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import build_dataset
from engine.checkpoint import save_checkpoint
from engine.runtime import configure_threads, tune_allocator
from losses.class_weights import log_frequency_weights, median_frequency_weights
from losses.fusion_losses import segmentation_loss
from metrics.segmentation import class_scores, confusion_matrix
from models.fusion_net import UAAFusionNet
from models.segmenter import build_segmenter, segment

WEIGHTINGS = ("none", "median", "log")
SOURCES = ("ir", "vi", "avg")
SCHEDULES = ("constant", "cosine")


def class_weights(freq: np.ndarray, weighting: str) -> torch.Tensor | None:
    """None (plain cross-entropy), median-frequency weights (capped at 50) or ENet's log weights."""
    if weighting == "none":
        return None
    return median_frequency_weights(freq) if weighting == "median" else log_frequency_weights(freq)


def source_image(sample: dict, source: str) -> torch.Tensor:
    """The image of ``sample`` that the segmenter sees for ``source``: ir, vi or I^(0) = (ir + vi) / 2, the fusion
    network's initial estimate, on which the segmenter finds the attribution regions at inference."""
    return UAAFusionNet.initial_estimate(sample["ir"], sample["vi"]) if source == "avg" else sample[source]


def evaluate(segmenter, dataset, num_classes: int, limit: int | None = None,
             sources: tuple[str, ...] = SOURCES) -> dict[str, dict]:
    """Per source: mIoU, mIoU over the classes the labels show, and per-class IoU (full-size images)."""
    segmenter.eval()
    matrices = {source: np.zeros((num_classes, num_classes)) for source in sources}
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        sample = dataset[i]
        for source, matrix in matrices.items():
            pred = segment(segmenter, source_image(sample, source)[None]).argmax(dim=1)[0].numpy()
            matrix += confusion_matrix(pred, sample["label"].numpy(), num_classes)
    segmenter.train()
    result = {}
    for source, matrix in matrices.items():
        _, iou = class_scores(matrix)
        present = matrix.sum(axis=1) > 0
        result[source] = {"miou": float(np.nanmean(iou)), "miou_present": float(np.nanmean(iou[present])),
                          "iou": np.round(np.nan_to_num(iou), 3).tolist()}
    return result


def learning_rate(base: float, step: int, steps: int, schedule: str) -> float:
    """``constant``, or ``cosine``: base · (1 + cos(π · step / steps)) / 2, from base at step 0 towards 0."""
    return base if schedule == "constant" else base * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="mfnet", help="training dataset layout (data/layouts.py)")
    p.add_argument("--root", default="../shared/data/MFNet")
    p.add_argument("--split", default="train")
    p.add_argument("--val-name", default="mfnet")
    p.add_argument("--val-root", default="../shared/data/MSRS_labelled")
    p.add_argument("--val-split", default="test")
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--ignore-index", type=int, default=255, help="label value that carries no class")
    p.add_argument("--weights", choices=WEIGHTINGS, default="none", help="class weights of the cross-entropy")
    p.add_argument("--encoder", default="mobilenet_v2",
                   help="smp encoder (timm-tf_efficientnet_lite0 has ImageNet weights offline)")
    p.add_argument("--encoder-weights", default=None, help="none, imagenet or a local weight file")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=["ir", "vi"],
                   help="images of each patch the loss averages over (avg: (ir + vi) / 2)")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule over --steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--mode", choices=("tiles", "random_crop"), default="tiles",
                   help="every patch-size tile of every image per epoch, or one random crop per image")
    p.add_argument("--ir-tone-reference", nargs="+", default=None, metavar="PATH",
                   help="histogram-match every training infrared image onto these images or folders (data/tone.py; "
                        "name training-split files, never evaluation scenes)")
    p.add_argument("--eval-train", type=int, default=30, help="training scenes also evaluated (0: none)")
    p.add_argument("--save", type=Path, default=None, help="write the trained segmenter here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.lr <= 0 or not math.isfinite(args.lr):
        p.error("--steps and --batch must be at least 1 and --lr a positive number")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.save is not None:  # make (or fail on) the output folder before the training, not after it
        try:
            args.save.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"error: cannot create the folder of --save {args.save}: {err}", file=sys.stderr)
            return 2
    configure_threads(args.threads)
    tune_allocator()
    torch.manual_seed(args.seed)

    train = build_dataset({"name": args.name, "root": args.root, "mode": args.mode, "flips": True,
                           "patch_size": args.patch, "seed": args.seed, "ir_tone_reference": args.ir_tone_reference},
                          args.split)
    train_full = build_dataset({"name": args.name, "root": args.root, "mode": "full",
                                "ir_tone_reference": args.ir_tone_reference}, args.split)
    val = build_dataset({"name": args.val_name, "root": args.val_root, "mode": "full"}, args.val_split)
    counts = train.label_scan.class_pixels.astype(np.float64)  # scanned by the dataset when it was built
    freq = counts / max(counts.sum(), 1.0)
    weights = class_weights(freq, args.weights)
    print("class frequencies:", np.round(freq, 4).tolist())
    print("class weights:", None if weights is None else np.round(weights.numpy(), 2).tolist())

    segmenter = build_segmenter(args.classes, encoder=args.encoder, encoder_weights=args.encoder_weights)
    segmenter = segmenter.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=args.lr)
    loader = DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(args.seed))
    step, start = 0, time.time()
    bar = tqdm(total=args.steps, desc="segmenter", disable=args.quiet)
    while step < args.steps:
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args.lr, step, args.steps, args.schedule)
            labels = batch["label"].long()
            outputs = [segmenter(source_image(batch, s).contiguous(memory_format=torch.channels_last))
                       for s in args.sources]
            loss = segmentation_loss(outputs, labels, args.ignore_index, [], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(ce=f"{loss.item():.3f}")
            if step % 50 == 0 or step == args.steps:
                tqdm.write(f"step {step}: cross-entropy {loss.item():.4f} ({time.time() - start:.0f} s)")
            if step >= args.steps:
                break
    bar.close()
    seconds = time.time() - start
    record = {"weights": args.weights, "encoder": args.encoder, "encoder_weights": args.encoder_weights,
              "sources": args.sources, "steps": step, "lr": args.lr, "schedule": args.schedule,
              "patch": args.patch, "mode": args.mode, "batch": args.batch, "seed": args.seed,
              "ir_tone_reference": args.ir_tone_reference,
              "train_seconds": round(seconds, 1), "val": evaluate(segmenter, val, args.classes)}
    if args.eval_train:
        record["train"] = evaluate(segmenter, train_full, args.classes, args.eval_train)
    for part in ("val", "train"):
        for source, scores in record.get(part, {}).items():
            print(f"{part} {source}: mIoU {scores['miou']:.3f} (present classes {scores['miou_present']:.3f}), "
                  f"per class {scores['iou']}")
    if args.save is not None:
        state = {k: v.contiguous() for k, v in segmenter.state_dict().items()}
        save_checkpoint(args.save, {"segmenter": state, "num_classes": args.classes, "pretrain_record": record})
        print(f"saved the segmenter to {args.save}")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
