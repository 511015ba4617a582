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
Every epoch draws a new random crop and flips of every scene (:class:`EpochStream`). Until session 14 every epoch
repeated the crops of the first, because the seeded dataset was never told the epoch; ``--repeat-crops`` keeps that
behaviour to reproduce the segmenters trained then (docs/RESULTS.md).

``--save FILE`` writes the segmenter (atomically) in a file that ``train.segmenter_checkpoint`` accepts, with its
settings and scores; the last line printed is a JSON record of the settings and the IoUs. ``--init FILE`` starts
from such a file instead of ``--encoder-weights`` (``--steps 0``: only evaluate it). ``--device cuda`` and
``--workers N`` are for GPU machines (scripts/gpu_kit.sh); ``--max-minutes`` stops the training early, with the
segmenter evaluated and saved as usual; ``--val-root none`` skips the MSRS_labelled evaluation.
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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import build_dataset
from data.sampling import check_scale_range, sample_seed
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.runtime import DeviceError, configure_threads, resolve_device, tune_allocator
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
    """Per source: mIoU, mIoU over the classes the labels show, and per-class IoU (full-size images, on the
    segmenter's device)."""
    segmenter.eval()
    device = next(segmenter.parameters()).device
    matrices = {source: np.zeros((num_classes, num_classes)) for source in sources}
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        sample = dataset[i]
        for source, matrix in matrices.items():
            image = source_image(sample, source)[None].to(device)
            pred = segment(segmenter, image).argmax(dim=1)[0].cpu().numpy()
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


class EpochStream(Dataset):
    """``total`` samples of ``dataset`` read epoch after epoch as one index space: sample k is from epoch k // n
    (n = len(dataset)), in an order shuffled per epoch, with the dataset's seeded random crop and flips of that
    epoch. Every epoch draws new crops, and loader processes live through the whole run (no restart per epoch)."""

    def __init__(self, dataset, total: int, seed: int):
        self.dataset, self.total, self.seed = dataset, int(total), int(seed)
        self.n = len(dataset)

    def __len__(self) -> int:
        return self.total

    def order(self, epoch: int) -> torch.Tensor:
        """The shuffled order of the dataset's indices in ``epoch`` (a function of the seed and the epoch)."""
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1)))

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < self.total:
            raise IndexError(f"index {k} out of range for a stream of {self.total} samples")
        epoch, position = divmod(k, self.n)
        self.dataset.set_epoch(epoch)  # each loader process holds its own copy of the dataset
        return self.dataset[int(self.order(epoch)[position])]


def training_batches(train, args: argparse.Namespace, pin_memory: bool):
    """The batches of the run, ``args.steps`` of them at most: an :class:`EpochStream` (new crops every epoch), or
    with ``--repeat-crops`` the loop of sessions 3-13, whose seeded dataset never left epoch 0 and so gave every
    scene the same crop and flips in every epoch (kept to reproduce the segmenters trained then)."""
    common = dict(batch_size=args.batch, drop_last=True, num_workers=args.workers, pin_memory=pin_memory)
    if not args.repeat_crops:
        yield from DataLoader(EpochStream(train, args.steps * args.batch, args.seed), shuffle=False, **common)
        return
    loader = DataLoader(train, shuffle=True, persistent_workers=args.workers > 0,
                        generator=torch.Generator().manual_seed(args.seed), **common)
    while True:
        yield from loader


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="mfnet", help="training dataset layout (data/layouts.py)")
    p.add_argument("--root", default="../shared/data/MFNet")
    p.add_argument("--split", default="train")
    p.add_argument("--val-name", default="mfnet")
    p.add_argument("--val-root", default="../shared/data/MSRS_labelled", help="'none': no evaluation on it")
    p.add_argument("--val-split", default="test")
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--ignore-index", type=int, default=255, help="label value that carries no class")
    p.add_argument("--weights", choices=WEIGHTINGS, default="none", help="class weights of the cross-entropy")
    p.add_argument("--encoder", default="mobilenet_v2",
                   help="smp encoder (timm-tf_efficientnet_lite0 has ImageNet weights offline)")
    p.add_argument("--encoder-weights", default=None, help="none, imagenet or a local weight file")
    p.add_argument("--init", type=Path, default=None,
                   help="start from a segmenter saved with --save (its encoder and classes must match)")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=["ir", "vi"],
                   help="images of each patch the loss averages over (avg: (ir + vi) / 2)")
    p.add_argument("--steps", type=int, default=450, help="training steps (0: only evaluate --init)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule over --steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--mode", choices=("tiles", "random_crop"), default="tiles",
                   help="every patch-size tile of every image per epoch, or one random crop per image")
    p.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="random_crop: resize each scene by a random factor in [LO, HI] before its crop (the usual "
                        "segmentation augmentation, e.g. 0.5 2; default: no rescaling, as every run before session 18)")
    p.add_argument("--no-vertical-flips", action="store_true",
                   help="random_crop: horizontal flips only (default: horizontal and vertical, as every run before "
                        "session 18; upside-down road scenes are not in any test set)")
    p.add_argument("--repeat-crops", action="store_true",
                   help="the same random crop of each scene in every epoch, as every run before session 14 had it "
                        "(a bug; only to reproduce those segmenters)")
    p.add_argument("--ir-tone-reference", nargs="+", default=None, metavar="PATH",
                   help="histogram-match every training infrared image onto these images or folders (data/tone.py; "
                        "name training-split files, never evaluation scenes)")
    p.add_argument("--eval-train", type=int, default=30, help="training scenes also evaluated (0: none)")
    p.add_argument("--save", type=Path, default=None, help="write the trained segmenter here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (0: in the main process)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this many minutes (then evaluate and save as usual)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 0 or args.batch < 1 or args.lr <= 0 or not math.isfinite(args.lr):
        p.error("--steps must be at least 0, --batch at least 1 and --lr a positive number")
    if args.steps == 0 and args.init is None:
        p.error("--steps 0 only evaluates, so it needs --init")
    if args.scale_range is not None:
        if args.mode != "random_crop":
            p.error("--scale-range needs --mode random_crop")
        try:
            check_scale_range(args.scale_range)
        except ValueError as err:
            p.error(f"--scale-range: {err}")
    if args.workers < 0 or (args.max_minutes is not None and not args.max_minutes > 0):
        p.error("--workers must be at least 0 and --max-minutes positive")
    return args


def load_initial_segmenter(path: Path, classes: int, encoder: str) -> tuple[torch.nn.Module, dict | None]:
    """The segmenter saved in ``path`` by ``--save`` and its pre-training record (ValueError naming the file when
    it does not fit)."""
    payload = load_checkpoint(path)
    if "segmenter" not in payload:
        raise ValueError(f"--init {path} holds no segmenter (write one with --save)")
    if payload.get("num_classes", classes) != classes:
        raise ValueError(f"--init {path} has {payload['num_classes']} classes, --classes is {classes}")
    segmenter = build_segmenter(classes, encoder=encoder)
    try:
        segmenter.load_state_dict(payload["segmenter"])
    except RuntimeError as err:
        raise ValueError(f"--init {path} does not fit a {encoder} segmenter (--encoder): {str(err)[:300]}") from err
    return segmenter, payload.get("pretrain_record")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.save is not None:  # make (or fail on) the output folder before the training, not after it
        try:
            args.save.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"error: cannot create the folder of --save {args.save}: {err}", file=sys.stderr)
            return 2
    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_threads(args.threads)
    tune_allocator()
    torch.manual_seed(args.seed)

    train = build_dataset({"name": args.name, "root": args.root, "mode": args.mode, "flips": True,
                           "vertical_flips": not args.no_vertical_flips, "scale_range": args.scale_range,
                           "patch_size": args.patch, "seed": args.seed, "ir_tone_reference": args.ir_tone_reference},
                          args.split)
    train_full = build_dataset({"name": args.name, "root": args.root, "mode": "full",
                                "ir_tone_reference": args.ir_tone_reference}, args.split)
    val = None if str(args.val_root).lower() == "none" else build_dataset(
        {"name": args.val_name, "root": args.val_root, "mode": "full"}, args.val_split)
    if args.steps and len(train) < args.batch:
        print(f"error: {args.root} gives {len(train)} training samples, fewer than one batch of {args.batch}",
              file=sys.stderr)
        return 2
    counts = train.label_scan.class_pixels.astype(np.float64)  # scanned by the dataset when it was built
    freq = counts / max(counts.sum(), 1.0)
    weights = class_weights(freq, args.weights)
    print("class frequencies:", np.round(freq, 4).tolist())
    print("class weights:", None if weights is None else np.round(weights.numpy(), 2).tolist())

    init_record = None
    if args.init is not None:
        try:
            segmenter, init_record = load_initial_segmenter(args.init, args.classes, args.encoder)
        except (ValueError, OSError, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        segmenter = build_segmenter(args.classes, encoder=args.encoder, encoder_weights=args.encoder_weights)
    segmenter = segmenter.to(device=device, memory_format=torch.channels_last).train()
    weights = None if weights is None else weights.to(device)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=args.lr)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the crop size never changes
    step, start = 0, time.time()
    budget = None if args.max_minutes is None else 60.0 * args.max_minutes
    stopped_on_time = False  # checked after every step, so at least one step is made
    bar = tqdm(total=args.steps, desc="segmenter", disable=args.quiet)
    for batch in training_batches(train, args, pin_memory=device.type == "cuda") if args.steps else ():
        # the schedule runs on steps, or on time when --max-minutes would end the run first
        progress = step if budget is None else max(step, args.steps * (time.time() - start) / budget)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, min(progress, args.steps), args.steps, args.schedule)
        batch = {key: batch[key].to(device, non_blocking=True) for key in ("ir", "vi", "label")}
        labels = batch["label"].long()
        outputs = [segmenter(source_image(batch, s).contiguous(memory_format=torch.channels_last))
                   for s in args.sources]
        loss = segmentation_loss(outputs, labels, args.ignore_index, [], weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if not args.quiet:  # reading the loss waits for the GPU
            bar.set_postfix(ce=f"{loss.item():.3f}")
        if step % 50 == 0 or step == args.steps:
            tqdm.write(f"step {step}: cross-entropy {loss.item():.4f} ({time.time() - start:.0f} s)")
        if step >= args.steps:
            break
        if budget is not None and time.time() - start >= budget:
            tqdm.write(f"--max-minutes {args.max_minutes:g} reached after {step} of {args.steps} steps")
            stopped_on_time = True
            break
    bar.close()
    seconds = time.time() - start
    record = {"weights": args.weights, "encoder": args.encoder,
              "encoder_weights": None if args.init is not None else args.encoder_weights,
              "init": None if args.init is None else str(args.init),
              "sources": args.sources, "steps": step, "planned_steps": args.steps, "lr": args.lr,
              "schedule": args.schedule, "patch": args.patch, "mode": args.mode, "batch": args.batch,
              "seed": args.seed, "ir_tone_reference": args.ir_tone_reference, "device": str(device),
              "repeat_crops": args.repeat_crops, "scale_range": args.scale_range,
              "vertical_flips": not args.no_vertical_flips, "max_minutes": args.max_minutes,
              "stopped_on_time": stopped_on_time,
              "train_seconds": round(seconds, 1)}
    if init_record is not None:
        record["init_record"] = init_record  # how the starting segmenter was trained
    if val is not None:
        record["val"] = evaluate(segmenter, val, args.classes)
    if args.eval_train:
        record["train"] = evaluate(segmenter, train_full, args.classes, args.eval_train)
    for part in ("val", "train"):
        for source, scores in record.get(part, {}).items():
            print(f"{part} {source}: mIoU {scores['miou']:.3f} (present classes {scores['miou_present']:.3f}), "
                  f"per class {scores['iou']}")
    if args.save is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in segmenter.state_dict().items()}
        save_checkpoint(args.save, {"segmenter": state, "num_classes": args.classes, "pretrain_record": record})
        print(f"saved the segmenter to {args.save}")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
