"""Table II: SegFormer retrained on each method's fused images (and on infrared / visible alone), scored on the test
split with per-class Acc and IoU, mAcc and mIoU, printed beside the paper's published rows.

    python -m scripts.table2_segmentation --data-root datasets/FMB --fuse UAAFusion=runs/fmb/last.pt \\
        --method TarDAL=fused/TarDAL [--method NAME=TRAIN_DIR,TEST_DIR ...]
    python -m scripts.table2_segmentation --data-root datasets/FMB --method UAAFusion=results/fused_fmb \\
        --epochs 2 --max-steps 50          # a quick budget

Methods:

- ``Infrared`` and ``Visible``: the dataset's own source images (``--sources`` chooses; ``--sources`` with no
  value trains neither);
- ``--method NAME=DIR``: fused images of both splits, in DIR/train and DIR/test (or ``NAME=TRAIN_DIR,TEST_DIR``),
  named like the dataset's files (any image extension);
- ``--fuse NAME=CHECKPOINT``: fuse both splits with one of our checkpoints first (as test.py does), then train.

The paper's settings are the defaults (Sec. IV-E): batch 8, AdamW (betas 0.9 / 0.999), 300 epochs, learning rate
1e-4 decaying to 1e-6 (polynomial, power 1, per step), cross-entropy over all classes, ignore index 255. What the
paper does not state is our choice and an option: SegFormer-B0 (``--encoder mit_b0``, random initialisation unless
``--encoder-weights``), one input channel (the luminance of every image; ``--in-channels 3`` feeds RGB, gray
images repeated), 512 x 512 random crops with horizontal flips (``--crop``; 0 = whole images padded to a multiple of
32), weight decay 0.01. ``--epochs`` and ``--max-steps`` set a smaller budget (the schedule follows the budget).

Outputs under RESULTS/table2/:

    fused/<NAME>/{train,test}/   images fused by --fuse (with _done.json)
    runs/<NAME>/last.pt          SegFormer weights, optimiser, schedule and progress (saved every epoch; a re-run
                                 resumes it); runs/<NAME>/_done.json once trained (settings, loss per epoch)
    runs/<NAME>/pred/            predicted class-index PNGs of the test split
    runs/<NAME>/scores.json      confusion matrix, per-class Acc/IoU, means (all classes, without background, the
                                 reported classes); the unit is finished when this file exists
    table2.md/.json/.csv         ours beside the paper's Table II, and a table of the three kinds of means

Scores are fractions in scores.json and percentages in the tables. Table II shows 8 of FMB's 15 classes and its
mAcc / mIoU average those 8; ``--report-classes`` chooses others (``all``: every class but the background).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.repro_common import (
    OURS_SUFFIX,
    PUBLISHED_DIR,
    FusionModel,
    ReproError,
    add_common_args,
    add_config_args,
    fuse_set,
    is_done,
    mark_done,
    parse_named,
    progress,
    read_json,
    read_marker,
    remove_output,
    run_cli,
    safe_name,
    say,
)
from scripts.repro_tables import Section, published_rows, write_tables

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PUBLISHED = PUBLISHED_DIR / "table2_segmentation.yaml"
PAPER_CLASSES = ("car", "person", "truck", "lamp", "sign", "building", "vegetation", "pole")
SEGFORMER_MULTIPLE = 32  # SegFormer's encoder needs sides divisible by 32


@dataclass
class SegSettings:
    """Everything that decides a SegFormer run (saved with it; a resumed run must match)."""

    encoder: str = "mit_b0"
    encoder_weights: str | None = None
    in_channels: int = 1
    epochs: int = 300
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    lr_min: float = 1e-6
    poly_power: float = 1.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    crop: int = 512
    seed: int = 0
    amp: str = "none"


@dataclass
class Method:
    """One row of the table: training and test image folders (labels come from the dataset)."""

    name: str
    train_dir: Path
    test_dir: Path


# ------------------------------------------------------------------------------------------------------ data


def as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) float in [0, 1] → (H, W, channels): luminance for 1, RGB (gray repeated) for 3."""
    from data.io import luminance

    if channels == 1:
        return luminance(image)[..., None]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image


class LabelledImages(Dataset):
    """Images of one folder with the dataset's labels, paired by file stem.

    Args:
        image_dir: images (any extension; colour or gray).
        label_dir: class-index label PNGs; every label needs an image.
        num_classes: C; label values outside 0..C-1 become ``ignore_index``.
        in_channels: 1 (luminance) or 3 (RGB).
        crop: random crop side for training (0/None: whole images).
        seed: crops and flips are a function of (seed, epoch, index).
    """

    def __init__(self, image_dir: Path, label_dir: Path, num_classes: int, in_channels: int, crop: int | None = None,
                 ignore_index: int = 255, seed: int = 0) -> None:
        from data.datasets import list_images

        images, _ = list_images(image_dir)
        labels, _ = list_images(label_dir)
        missing = sorted(set(labels) - set(images))
        if missing:
            raise ReproError(f"{image_dir} lacks {len(missing)} image(s) named like the labels of {label_dir}, "
                             f"e.g. {missing[:3]}")
        self.items = [(stem, images[stem], labels[stem]) for stem in sorted(labels)]
        if not self.items:
            raise ReproError(f"no label images in {label_dir}")
        self.num_classes, self.in_channels, self.crop = num_classes, in_channels, crop or None
        self.ignore_index, self.seed, self.epoch = ignore_index, seed, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from data.io import read_image, read_label, to_tensor_1hw
        from data.sampling import random_crop_flip, sample_seed

        stem, image_path, label_path = self.items[index]
        image = as_channels(read_image(image_path), self.in_channels)
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise ReproError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                             f"{label.shape[1]}x{label.shape[0]}")
        label = np.where((label >= 0) & (label < self.num_classes), label, self.ignore_index)
        if self.crop:  # the training crops of engine's datasets, horizontal flips only
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            image, _, label = random_crop_flip(image, image, label, self.crop, ignore_index=self.ignore_index,
                                               generator=generator, vertical=False)
        return {"image": to_tensor_1hw(np.ascontiguousarray(image)),
                "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)), "name": stem}


# -------------------------------------------------------------------------------------------------- training


def build_segformer(settings: SegSettings, num_classes: int) -> torch.nn.Module:
    """smp.Segformer with the configured encoder, weights and input channels (logits out)."""
    import importlib

    from models.tv_compat import import_torchvision

    import_torchvision()  # the CPU-torch shim must run before smp imports torchvision
    smp = importlib.import_module("segmentation_models_pytorch")
    return smp.Segformer(encoder_name=settings.encoder, encoder_weights=settings.encoder_weights,
                         in_channels=settings.in_channels, classes=num_classes)


def poly_factor(step: int, total: int, settings: SegSettings) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: lr_min + (lr - lr_min)(1 - step/total)^power, over lr."""
    fraction = min(step / max(total, 1), 1.0)
    lr = settings.lr_min + (settings.lr - settings.lr_min) * (1.0 - fraction) ** settings.poly_power
    return lr / settings.lr


def autocast(settings: SegSettings, device: torch.device):
    """The engine's autocast for ``settings.amp`` (bf16 on CUDA or a bf16-capable CPU; else none)."""
    from engine.runtime import autocast_context

    return autocast_context(settings.amp, device)


def train_segformer(method: Method, labels: Path, num_classes: int, settings: SegSettings, run_dir: Path,
                    device: torch.device, ignore_index: int, workers: int, quiet: bool) -> torch.nn.Module:
    """Train (or resume, or reload when finished) SegFormer on ``method``'s training images.

    ``run_dir/last.pt`` is written after every epoch and when the step budget ends; ``_done.json`` at the end.
    """
    from engine.checkpoint import load_checkpoint, save_checkpoint

    dataset = LabelledImages(method.train_dir, labels, num_classes, settings.in_channels, settings.crop,
                             ignore_index, settings.seed)
    torch.manual_seed(settings.seed)
    model = build_segformer(settings, num_classes).to(device)
    steps_per_epoch = max(len(dataset) // settings.batch_size, 1)
    total = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2),
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: poly_factor(s, total, settings))
    state = {"epoch": 0, "step": 0, "losses": []}
    checkpoint = run_dir / "last.pt"
    if checkpoint.is_file():
        payload = load_checkpoint(checkpoint, map_location=device)
        if payload["settings"] != asdict(settings) or payload["train_dir"] != str(method.train_dir):
            raise ReproError(f"{checkpoint} was trained with other settings or images; pass --force to start over")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = payload["state"]
        if not is_done(run_dir):
            say(f"{method.name}: resuming SegFormer at epoch {state['epoch']}, step {state['step']}")
    if is_done(run_dir):
        return model.eval()

    def save() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "state": state,
                                     "settings": asdict(settings), "train_dir": str(method.train_dir),
                                     "num_classes": num_classes})

    criterion = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)
    start = time.perf_counter()
    bar = progress(None, f"SegFormer {method.name}", quiet, total=total, unit="step")
    bar.update(state["step"])
    model.train()
    while state["step"] < total and state["epoch"] < settings.epochs:
        dataset.epoch = state["epoch"]
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + state["epoch"])
        loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=len(dataset) >=
                            settings.batch_size, num_workers=workers, generator=generator,
                            pin_memory=device.type == "cuda")
        loss_sum, count = 0.0, 0
        for batch in loader:
            if state["step"] >= total:
                break
            images = batch["image"].to(device, non_blocking=True)
            target = batch["label"].to(device, non_blocking=True)
            with autocast(settings, device):
                loss = criterion(model(images).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            loss_sum, count = loss_sum + loss.item(), count + 1
            bar.update(1)
            bar.set_postfix(ce=f"{loss_sum / count:.3f}")
        state["epoch"] += 1
        state["losses"].append(loss_sum / max(count, 1))
        save()
    bar.close()
    save()
    mark_done(run_dir, {"method": method.name, "settings": asdict(settings), "train_dir": str(method.train_dir),
                        "steps": state["step"], "epochs": state["epoch"], "loss_per_epoch": state["losses"],
                        "seconds": round(time.perf_counter() - start, 1)})
    return model.eval()


def predict(model: torch.nn.Module, method: Method, labels: Path, num_classes: int, settings: SegSettings,
            out_dir: Path, device: torch.device, ignore_index: int, quiet: bool) -> None:
    """Write the predicted class index (uint8 PNG) of every test image into ``out_dir``."""
    from data.io import write_image_atomic
    from models.segmenter import segment

    dataset = LabelledImages(method.test_dir, labels, num_classes, settings.in_channels, None, ignore_index)
    model.eval()
    for index in progress(range(len(dataset)), f"predict {method.name}", quiet, unit="image"):
        sample = dataset[index]
        with autocast(settings, device):
            logits = segment(model, sample["image"][None].to(device), SEGFORMER_MULTIPLE)
        pred = logits[0].argmax(dim=0).to("cpu", torch.uint8).numpy()
        write_image_atomic(out_dir / f"{sample['name']}.png", pred)


# ---------------------------------------------------------------------------------------------------- driver


def display(name: str) -> str:
    """Class name as the paper's table writes it ("car" → "Car")."""
    return name[:1].upper() + name[1:]


def resolve_report_classes(selection: list[str] | None, class_names: list[str], background: int) -> list[int]:
    """Indices of the reported classes: the paper's 8 FMB classes when all exist, else all but the background."""
    from metrics.segmentation import resolve_classes

    if selection and selection != ["all"]:
        try:
            return resolve_classes(selection, class_names)
        except ValueError as err:
            raise ReproError(str(err)) from err
    lower = [n.lower() for n in class_names]
    if not selection and all(c in lower for c in PAPER_CLASSES):
        return [lower.index(c) for c in PAPER_CLASSES]
    return [i for i in range(len(class_names)) if i != background]


def collect_methods(args: argparse.Namespace, dirs: dict[str, dict[str, Path]],
                    out: Path) -> tuple[list[Method], set[str]]:
    """Methods in table order (the chosen sources, then --fuse, then --method), and the names of the methods
    whose images were just (re)fused, whose SegFormer runs are therefore stale."""
    methods: list[Method] = []
    refused: set[str] = set()
    for source in args.sources:
        key = {"infrared": "ir", "visible": "vi"}[source]
        methods.append(Method(display(source), dirs["train"][key], dirs["test"][key]))
    fuse = parse_named(args.fuse, "--fuse")
    for name, checkpoint in fuse.items():
        base = out / "fused" / safe_name(name)
        model = FusionModel(Path(checkpoint), args.config, args.overrides, args.device)
        for split in ("train", "test"):
            if fuse_set(model, dirs[split]["ir"], dirs[split]["vi"], base / split, results=args.results,
                        force=args.force, quiet=args.quiet):
                refused.add(name)
        methods.append(Method(name, base / "train", base / "test"))
    for name, value in parse_named(args.method, "--method").items():
        if "," in value:
            train_dir, test_dir = (Path(v) for v in value.split(",", 1))
        else:
            train_dir, test_dir = Path(value) / "train", Path(value) / "test"
        for folder in (train_dir, test_dir):
            if not folder.is_dir():
                raise ReproError(f"--method {name}: folder not found: {folder}")
        methods.append(Method(name, train_dir, test_dir))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ReproError(f"method names must be unique, got {names}")
    if not methods:
        raise ReproError("nothing to train: give --method / --fuse, or keep the infrared / visible sources")
    return methods, refused


def build_parser() -> argparse.ArgumentParser:
    defaults = SegSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("dataset")
    data.add_argument("--data-root", type=Path, required=True, help="labelled dataset root (FMB layout by default)")
    data.add_argument("--data-name", default="fmb", choices=["fmb", "msrs"], help="dataset layout (default fmb)")
    data.add_argument("--train-split", default="train")
    data.add_argument("--test-split", default="test")
    data.add_argument("--ignore-index", type=int, default=255, help="label value skipped by loss and scores")
    methods = parser.add_argument_group("methods")
    methods.add_argument("--method", action="append", default=[], metavar="NAME=DIR",
                         help="fused images in DIR/train and DIR/test, or NAME=TRAIN_DIR,TEST_DIR (repeatable)")
    methods.add_argument("--fuse", action="append", default=[], metavar="NAME=CHECKPOINT",
                         help="fuse both splits with this checkpoint first (repeatable)")
    methods.add_argument("--sources", nargs="*", default=["infrared", "visible"], choices=["infrared", "visible"],
                         help="source-image rows to train (default both; give no value for none)")
    add_config_args(parser)
    seg = parser.add_argument_group("SegFormer training (defaults: the paper's settings, see above)")
    seg.add_argument("--encoder", default=defaults.encoder, help="smp encoder of smp.Segformer (mit_b0 … mit_b5)")
    seg.add_argument("--encoder-weights", default=defaults.encoder_weights,
                     help="None (random) or an smp weight name such as imagenet (needs the hub)")
    seg.add_argument("--in-channels", type=int, default=defaults.in_channels, choices=[1, 3])
    seg.add_argument("--epochs", type=int, default=defaults.epochs)
    seg.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all (a CI budget)")
    seg.add_argument("--batch-size", type=int, default=defaults.batch_size)
    seg.add_argument("--lr", type=float, default=defaults.lr)
    seg.add_argument("--lr-min", type=float, default=defaults.lr_min)
    seg.add_argument("--poly-power", type=float, default=defaults.poly_power)
    seg.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    seg.add_argument("--crop", type=int, default=defaults.crop, help="training crop side, a multiple of 32 (0: none)")
    seg.add_argument("--seed", type=int, default=defaults.seed)
    seg.add_argument("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast on CUDA")
    seg.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    report = parser.add_argument_group("table")
    report.add_argument("--report-classes", nargs="+", default=None, metavar="CLASS",
                        help="classes shown and averaged (default: the paper's 8 FMB classes; 'all': every class "
                             "but the background)")
    report.add_argument("--background", type=int, default=0, help="background class left out of 'all' means")
    report.add_argument("--published", type=Path, default=DEFAULT_PUBLISHED)
    report.add_argument("--published-dataset", default=None,
                        help="dataset key in --published (default: FMB for the fmb layout, none otherwise; '' for "
                             "none)")
    add_common_args(parser)
    return parser


def settings_from(args: argparse.Namespace) -> SegSettings:
    if args.crop and args.crop % SEGFORMER_MULTIPLE:
        raise ReproError(f"--crop must be a multiple of {SEGFORMER_MULTIPLE} (SegFormer), got {args.crop}")
    weights = None if str(args.encoder_weights).lower() in ("none", "") else args.encoder_weights
    return SegSettings(encoder=args.encoder, encoder_weights=weights, in_channels=args.in_channels,
                       epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                       lr_min=args.lr_min, poly_power=args.poly_power, weight_decay=args.weight_decay,
                       crop=args.crop, seed=args.seed, amp=args.amp)


def run(args: argparse.Namespace) -> int:
    from data.datasets import build_dataset
    from engine.runtime import resolve_device
    from metrics.report import write_json
    from metrics.segmentation import evaluate_seg_folders, summarise, table_rows

    out = args.results / "table2"
    settings = settings_from(args)
    dirs: dict[str, dict[str, Path]] = {}
    for split in (args.train_split, args.test_split):
        try:
            ds = build_dataset({"name": args.data_name, "root": str(args.data_root), "scan_labels": False,
                                "ignore_index": args.ignore_index}, split, mode="full")
        except (ValueError, FileNotFoundError) as err:
            raise ReproError(f"dataset {args.data_root} ({args.data_name}), split {split}: {err}") from err
        key = "train" if split == args.train_split else "test"
        dirs[key] = {"ir": ds.ir_dir, "vi": ds.vi_dir, "label": ds.label_dir}
        class_names, num_classes = list(ds.class_names), ds.num_classes
    reported = resolve_report_classes(args.report_classes, class_names, args.background)
    methods, refused = collect_methods(args, dirs, out)
    device = resolve_device(args.device or "auto")

    summaries: dict[str, dict] = {}
    for method in progress(methods, "table2 methods", args.quiet, unit="method"):
        run_dir = out / "runs" / safe_name(method.name)
        scores = run_dir / "scores.json"
        if (args.force or method.name in refused) and run_dir.exists():
            remove_output(run_dir, args.results)
        if scores.is_file() and is_done(run_dir):
            marker = read_marker(run_dir)
            if marker.get("settings") != asdict(settings) or marker.get("train_dir") != str(method.train_dir):
                raise ReproError(f"{run_dir} was finished with other settings or images; pass --force to redo it "
                                 "or choose another --results folder")
        if not scores.is_file():
            model = train_segformer(method, dirs["train"]["label"], num_classes, settings, run_dir, device,
                                    args.ignore_index, args.workers, args.quiet)
            predict(model, method, dirs["test"]["label"], num_classes, settings, run_dir / "pred", device,
                    args.ignore_index, args.quiet)
            result = evaluate_seg_folders({method.name: run_dir / "pred"}, dirs["test"]["label"], num_classes,
                                          class_names, args.ignore_index, args.background)
            if result.any_failed:
                raise ReproError("; ".join(result.failure_lines()[:3]))
            write_json(scores, result.to_json(reported))
        document = read_json(scores)
        confusion = np.asarray(document["methods"][method.name]["confusion"], dtype=np.int64)
        summaries[method.name] = summarise(confusion, class_names, args.background, reported)

    shown = [class_names[i] for i in reported]
    columns = [f"{display(n)} {k}" for n in shown for k in ("Acc", "IoU")] + ["mAcc", "mIoU"]
    caption = (f"Table II, {args.data_name.upper()} {args.test_split} split: SegFormer ({settings.encoder}) per "
               f"method, %; means over {len(shown)} classes")
    main_table = Section(caption, columns, decimals=2)
    published_dataset = args.published_dataset
    if published_dataset is None:
        published_dataset = "FMB" if args.data_name == "fmb" else ""
    if published_dataset:
        main_table.add_published(published_rows(args.published, published_dataset))
    for name, summary in summaries.items():
        row = table_rows(summary, shown, "reported")
        main_table.add(name + OURS_SUFFIX, {k.lower(): v for k, v in row.items()}, "ours")
    mean_cols = ["mAcc all", "mIoU all", "mAcc no-bg", "mIoU no-bg", "mAcc reported", "mIoU reported"]
    means = Section("Means (%): all classes, all but the background, the reported classes", mean_cols, decimals=2)
    for name, summary in summaries.items():
        m = summary["mean"]
        values = [m["all"]["mAcc"], m["all"]["mIoU"], m["no_background"]["mAcc"], m["no_background"]["mIoU"],
                  m["reported"]["mAcc"], m["reported"]["mIoU"]]
        means.add(name + OURS_SUFFIX, {c: 100.0 * v for c, v in zip(mean_cols, values)}, "ours")
    meta = {"table": "II", "dataset": str(args.data_root), "settings": asdict(settings),
            "reported_classes": shown, "methods": {m.name: {"train": str(m.train_dir), "test": str(m.test_dir)}
                                                   for m in methods},
            "summaries": summaries}
    write_tables(out / "table2", [main_table, means], meta, quiet=args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
