"""Train the segmenter alone for a few hundred steps and report per-class IoU: does it learn more than the background?

    python -m scripts.probe_segmenter --weights none --steps 450      # plain cross-entropy (the paper's L_seg)
    python -m scripts.probe_segmenter --weights median --steps 450    # median-frequency class weights

Defaults: DeepLabV3+ (MobileNetV2) from random weights on the 170 MFNet scenes (128² tiles with flips, batch 8,
Adam 1e-3), evaluated on the 30 MSRS_labelled scenes and on the first 30 MFNet training scenes, infrared and
visible separately. ``median`` weights class c by median(f)/f_c (f: the training labels' class frequencies, capped
at 50), a standard remedy for a dominant class; it is not part of the paper (docs/RESULTS.md, "The segmenter").
The last line is a JSON record of the settings and the IoUs.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.datasets import build_dataset
from engine.runtime import configure_threads, tune_allocator
from losses.class_weights import median_frequency_weights
from metrics.segmentation import class_scores, confusion_matrix
from models.segmenter import build_segmenter, segment

WEIGHTINGS = ("none", "median")


def class_weights(freq: np.ndarray, weighting: str) -> torch.Tensor | None:
    """None (plain cross-entropy) or median-frequency weights (``losses.class_weights``, capped at 50)."""
    return None if weighting == "none" else median_frequency_weights(freq)


def evaluate(segmenter, dataset, num_classes: int, limit: int | None = None) -> dict[str, dict]:
    """Mean and per-class IoU of the segmenter on the infrared and the visible images (full size)."""
    segmenter.eval()
    matrices = {"ir": np.zeros((num_classes, num_classes)), "vi": np.zeros((num_classes, num_classes))}
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        sample = dataset[i]
        for source, matrix in matrices.items():
            pred = segment(segmenter, sample[source][None]).argmax(dim=1)[0].numpy()
            matrix += confusion_matrix(pred, sample["label"].numpy(), num_classes)
    segmenter.train()
    result = {}
    for source, matrix in matrices.items():
        _, iou = class_scores(matrix)
        result[source] = {"miou": float(np.nanmean(iou)), "iou": np.round(np.nan_to_num(iou), 3).tolist()}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="mfnet", help="training dataset layout (data/layouts.py)")
    p.add_argument("--root", default="../shared/data/MFNet")
    p.add_argument("--split", default="train")
    p.add_argument("--val-name", default="mfnet")
    p.add_argument("--val-root", default="../shared/data/MSRS_labelled")
    p.add_argument("--val-split", default="test")
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--weights", choices=WEIGHTINGS, default="none")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--eval-train", type=int, default=30, help="training scenes also evaluated (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    configure_threads(args.threads)
    tune_allocator()
    torch.manual_seed(args.seed)

    train = build_dataset({"name": args.name, "root": args.root, "mode": "tiles", "flips": True,
                           "patch_size": args.patch, "seed": args.seed}, args.split)
    train_full = build_dataset({"name": args.name, "root": args.root, "mode": "full"}, args.split)
    val = build_dataset({"name": args.val_name, "root": args.val_root, "mode": "full"}, args.val_split)
    counts = train.label_scan.class_pixels.astype(np.float64)  # scanned by the dataset when it was built
    freq = counts / max(counts.sum(), 1.0)
    weights = class_weights(freq, args.weights)
    print("class frequencies:", np.round(freq, 4).tolist())
    print("class weights:", None if weights is None else np.round(weights.numpy(), 2).tolist())

    segmenter = build_segmenter(args.classes)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=args.lr)
    loader = DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(args.seed))
    step, start = 0, time.time()
    while step < args.steps:
        for batch in loader:
            labels = batch["label"].long()
            outputs = [segmenter(batch["ir"]), segmenter(batch["vi"])]
            loss = sum(F.cross_entropy(out, labels, weight=weights, ignore_index=255) for out in outputs) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}: cross-entropy {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
            if step >= args.steps:
                break
    record = {"weights": args.weights, "steps": step, "lr": args.lr, "val": evaluate(segmenter, val, args.classes)}
    if args.eval_train:
        record["train"] = evaluate(segmenter, train_full, args.classes, args.eval_train)
    for part in ("val", "train"):
        for source, scores in record.get(part, {}).items():
            print(f"{part} {source}: mIoU {scores['miou']:.3f}, per class {scores['iou']}")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
