"""Put downloaded FMB, MSRS and RoadScene copies into the layouts the loaders read, check them, and cut the
release's 256 x 256 training patches.

    python -m scripts.prepare_data fmb DOWNLOAD --out datasets/FMB [--relabel unreduce] [--link]
    python -m scripts.prepare_data msrs DOWNLOAD --out datasets/MSRS
    python -m scripts.prepare_data roadscene DOWNLOAD --out datasets/RoadScene [--names list.txt | --max-pairs 50]
    python -m scripts.prepare_data patches datasets/FMB --out datasets/FMB_patches256 [--size 256 --min-spread 0.1]
    python -m scripts.prepare_data check datasets/FMB

Layouts written (the ones data/datasets.py reads):

    FMB        OUT/{train,test}/{Infrared,Visible,Label}/NAME.*      (15 classes; 0 = unlabeled)
    MSRS       OUT/{train,test}/{ir,vi,Segmentation_labels}/NAME.*    (9 classes)
    RoadScene  OUT/{cropinfrared,crop_LR_visible}/NAME.*             (no labels; the roadscene layout)
    patches    OUT/train/{Infrared,Visible,Label}/NAME_y{top}_x{left}.png, OUT/patches.csv

A download's sub-folders are found by name, case-insensitively: infrared in Infrared / ir / IR / infrared /
cropinfrared, visible in Visible / vi / RGB / crop_LR_visible, labels in Label / Labels / Segmentation_labels /
masks (``color`` renderings and ``Segmentation_visualize`` are not copied). Images are copied (``--link``: symbolic
links); labels are copied too, or rewritten when ``--relabel`` asks:

    none                 keep the values (default)
    unreduce             undo a "reduce zero label" re-pack: 255 → 0 (unlabeled), k → k + 1
    ignore-to-unlabeled  255 → 0 (for re-packs that only moved unlabeled pixels to 255)

Label values are always counted and reported, with a hint when they look like a re-pack. Every command ends with
``python -m data.check`` on the result; its report (and the label statistics) also go to
RESULTS/prepare_data/<command>_<OUT name>.json. Files already in place are skipped on a re-run (``--force``
rewrites them). Exit status: 0 when the check passes, 1 when it finds problems, 2 on unusable input.
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.layouts import DATASET_NAMES, LAYOUTS
from scripts.repro_common import (
    ReproError,
    add_common_args,
    json_safe,
    link_or_copy,
    progress,
    run_cli,
    say,
    warn,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

IR_NAMES = ("infrared", "ir", "cropinfrared", "inf", "thermal")
VI_NAMES = ("visible", "vi", "rgb", "crop_lr_visible", "vis")
LABEL_NAMES = ("label", "labels", "segmentation_labels", "segmentation_label", "mask", "masks")
LAYOUT_FOLDERS = {name: LAYOUTS[name].folders for name in ("fmb", "msrs")}  # from the one table, data/layouts.py
NUM_CLASSES = {"fmb": 15, "msrs": 9}
RELABELS = ("none", "unreduce", "ignore-to-unlabeled")
IGNORE = 255


def find_folder(parent: Path, candidates: Sequence[str]) -> Path | None:
    """The sub-folder of ``parent`` whose name matches one of ``candidates`` (case-insensitive, in that order)."""
    if not parent.is_dir():
        return None
    children = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    return next((children[c] for c in candidates if c in children), None)


def relabel(label: np.ndarray, mode: str, num_classes: int) -> np.ndarray:
    """Apply a ``--relabel`` mode to an (H, W) int label map."""
    if mode == "none":
        return label
    if mode == "ignore-to-unlabeled":
        return np.where(label == IGNORE, 0, label)
    if mode == "unreduce":
        shifted = np.where(label < num_classes - 1, label + 1, label)
        return np.where(label == IGNORE, 0, shifted)
    raise ReproError(f"unknown --relabel {mode!r}; choose one of {RELABELS}")


def label_hint(histogram: dict[int, int], num_classes: int) -> str:
    """A one-line reading of the label values found (before relabelling)."""
    values = sorted(histogram)
    if not values:
        return "no labels"
    outside = [v for v in values if v >= num_classes and v != IGNORE]
    if outside:
        return f"values {outside[:8]} lie outside 0..{num_classes - 1} and are not {IGNORE}: check the class list"
    if IGNORE in histogram and 0 not in histogram:
        return (f"{IGNORE} present and 0 absent: this looks like a re-pack with {IGNORE} as unlabeled; consider "
                "--relabel ignore-to-unlabeled (or unreduce when the classes were shifted down by one)")
    if IGNORE in histogram and num_classes - 1 not in histogram:
        return (f"{IGNORE} present and class {num_classes - 1} absent: possibly a 'reduce zero label' re-pack; "
                "consider --relabel unreduce")
    if IGNORE in histogram:
        return f"{IGNORE} present beside all classes: treated as the ignore index (data.ignore_index)"
    return "values fit the classes"


def place(src: Path, dst: Path, link: bool, force: bool) -> bool:
    """Copy (or link) one file unless an identical-size copy is already there; returns True when written."""
    if dst.exists() or dst.is_symlink():
        if not force and dst.stat().st_size == src.stat().st_size:
            return False
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        link_or_copy(src, dst)
    else:
        shutil.copy2(src, dst)
    return True


def convert_labelled(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """FMB / MSRS: copy every split's pairs and labels into the loaders' layout; returns statistics."""
    from data.datasets import pair_files
    from data.io import read_label, write_image_atomic

    num_classes = args.classes or NUM_CLASSES[kind]
    names = LAYOUT_FOLDERS[kind]
    stats: dict[str, Any] = {"splits": {}, "label_values": {}}
    histogram: dict[int, int] = {}
    splits = [s for s in args.splits if (src / s).is_dir()]
    if not splits:
        raise ReproError(f"{src}: none of the splits {args.splits} exists")
    for split in splits:
        ir_dir = find_folder(src / split, IR_NAMES)
        vi_dir = find_folder(src / split, VI_NAMES)
        label_dir = find_folder(src / split, LABEL_NAMES)
        if ir_dir is None or vi_dir is None:
            raise ReproError(f"{src / split}: no infrared or visible folder (looked for {IR_NAMES} / {VI_NAMES})")
        if label_dir is None:
            warn(f"{src / split}: no label folder (looked for {LABEL_NAMES}); copying images only")
        pairs, problems = pair_files(ir_dir, vi_dir, label_dir)
        for problem in problems:
            warn(str(problem))
        written = 0
        for pair in progress(pairs, f"{kind} {split}", args.quiet, unit="pair"):
            written += place(pair.ir, out / split / names[0] / pair.ir.name, args.link, args.force)
            written += place(pair.vi, out / split / names[1] / pair.vi.name, args.link, args.force)
            if pair.label is None:
                continue
            label = read_label(pair.label)
            values, counts = np.unique(label, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                histogram[v] = histogram.get(v, 0) + c
            target = out / split / names[2] / f"{pair.name}.png"
            if args.relabel == "none" and pair.label.suffix.lower() == ".png" and not _palette(pair.label):
                written += place(pair.label, target, args.link, args.force)
            elif args.force or not target.exists():
                new = relabel(label, args.relabel, num_classes)
                write_image_atomic(target, new.astype(np.uint8 if new.max() < 256 else np.uint16))
                written += 1
        stats["splits"][split] = {"pairs": len(pairs), "problems": len(problems), "files_written": written,
                                  "from": {"ir": str(ir_dir), "vi": str(vi_dir), "label": str(label_dir)}}
    stats["label_values"] = {str(k): v for k, v in sorted(histogram.items())}
    stats["label_hint"] = label_hint(histogram, num_classes)
    stats["relabel"] = args.relabel
    if histogram:
        say(f"label values (before --relabel {args.relabel}): {sorted(histogram)}; {stats['label_hint']}")
    classes = src / "classes.yaml"
    if classes.is_file():
        shutil.copy2(classes, out / "classes.yaml")
    return stats


def _palette(path: Path) -> bool:
    """True for a palette PNG (its indices must be decoded and rewritten as a plain index image)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    return len(head) > 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[25] == 3


def convert_roadscene(src: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """RoadScene: cropinfrared / crop_LR_visible (or ir / vi) → OUT in the ``roadscene`` layout of data/layouts.py
    (OUT/cropinfrared, OUT/crop_LR_visible), optionally a named subset."""
    import cv2

    from data.datasets import pair_files
    from data.io import decode_image_unchanged
    from utils.atomic import atomic_write_bytes

    ir_dir, vi_dir = find_folder(src, IR_NAMES), find_folder(src, VI_NAMES)
    if ir_dir is None or vi_dir is None:
        raise ReproError(f"{src}: no cropinfrared/ir or crop_LR_visible/vi folder")
    pairs, problems = pair_files(ir_dir, vi_dir)
    for problem in problems:
        warn(str(problem))
    wanted = read_name_list(args.names) if args.names else None
    if wanted is not None:
        by_name = {p.name: p for p in pairs}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ReproError(f"--names: {len(missing)} name(s) not in {src}, e.g. {missing[:3]}")
        pairs = [by_name[n] for n in wanted]
    if args.max_pairs is not None:
        pairs = pairs[: args.max_pairs]
    written = 0
    ir_out, vi_out, _ = LAYOUTS["roadscene"].folders
    for pair in progress(pairs, "roadscene", args.quiet, unit="pair"):
        for path, sub in ((pair.ir, ir_out), (pair.vi, vi_out)):
            if args.to_png and path.suffix.lower() != ".png":
                target = out / sub / f"{pair.name}.png"
                if args.force or not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    ok, encoded = cv2.imencode(".png", decode_image_unchanged(path))  # same pixels, lossless
                    if not ok:
                        raise ReproError(f"cannot re-encode {path} as PNG")
                    atomic_write_bytes(target, encoded.tobytes())
                    written += 1
            else:
                written += place(path, out / sub / path.name, args.link, args.force)
    return {"pairs": len(pairs), "problems": len(problems), "files_written": written,
            "from": {"ir": str(ir_dir), "vi": str(vi_dir)}}


def read_name_list(path: Path) -> list[str]:
    """File stems listed one per line (``#`` comments and extensions allowed)."""
    if not path.is_file():
        raise ReproError(f"names file not found: {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Path(line).stem for line in lines if line]


def cut_patches(root: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The release's non-overlapping, contrast-filtered patches of one split, written in the FMB layout."""
    from data.check import detect_layout
    from data.datasets import cut_release_patches, pair_files
    from data.io import load_fusion_pair, read_image, read_label, write_image_atomic
    from utils.atomic import atomic_write_text

    layout = detect_layout(root)
    if layout not in LAYOUT_FOLDERS:
        raise ReproError(f"{root}: expected an FMB or MSRS layout (found {layout})")
    folders = [root / args.split / name for name in LAYOUT_FOLDERS[layout]]
    label_dir = folders[2] if folders[2].is_dir() else None
    pairs, problems = pair_files(folders[0], folders[1], label_dir)
    for problem in problems:
        warn(str(problem))
    if not pairs:
        raise ReproError(f"no pairs in {folders[0]} / {folders[1]}")
    rows: list[list[Any]] = []
    kept = 0
    for pair in progress(pairs, f"patches {args.split}", args.quiet, unit="pair"):
        sample = load_fusion_pair(pair.ir, pair.vi)
        label = read_label(pair.label) if pair.label is not None else None
        patches = cut_release_patches(sample["ir"], sample["vi_y"], label, args.size, args.min_spread,
                                      args.relative_to)
        if not patches:
            continue
        ir_full, vi_full = read_image(pair.ir), read_image(pair.vi)  # keep the visible colour in the patches
        for patch in patches:
            name = f"{pair.name}_y{patch.top}_x{patch.left}"
            window = (slice(patch.top, patch.top + args.size), slice(patch.left, patch.left + args.size))
            targets = [out / args.split / sub / f"{name}.png" for sub in LAYOUT_FOLDERS["fmb"]]
            if args.force or not all(t.exists() for t in targets[: 3 if label is not None else 2]):
                write_image_atomic(targets[0], ir_full[window])
                write_image_atomic(targets[1], vi_full[window])
                if patch.label is not None:
                    write_image_atomic(targets[2], patch.label.astype(np.uint8))
            rows.append([name, pair.name, patch.top, patch.left])
            kept += 1
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["patch", "image", "top", "left"], *rows])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "patches.csv", buffer.getvalue())
    if (root / "classes.yaml").is_file():
        shutil.copy2(root / "classes.yaml", out / "classes.yaml")
    say(f"{kept} patches of {args.size}x{args.size} from {len(pairs)} images (min spread {args.min_spread}, "
        f"relative to {args.relative_to})")
    return {"images": len(pairs), "patches": kept, "size": args.size, "min_spread": args.min_spread,
            "relative_to": args.relative_to, "layout_of_source": layout}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("source", type=Path, help="the downloaded (or prepared) dataset folder")
        add_common_args(p, device=False)
        return p

    for kind in ("fmb", "msrs"):
        p = command(kind, f"convert a {kind.upper()} download into the loaders' layout")
        p.add_argument("--out", type=Path, required=True, help="destination dataset folder")
        p.add_argument("--splits", nargs="+", default=["train", "test"])
        p.add_argument("--relabel", default="none", choices=RELABELS, help="rewrite label values (see above)")
        p.add_argument("--classes", type=int, default=None, help=f"number of classes (default {NUM_CLASSES[kind]})")
        p.add_argument("--link", action="store_true", help="symbolic links instead of copies for unchanged files")
    p = command("roadscene", "copy RoadScene (cropinfrared / crop_LR_visible, or ir / vi) into the roadscene layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--names", type=Path, help="text file of the pairs to keep (e.g. the 50-pair test set)")
    p.add_argument("--max-pairs", type=int, default=None, help="keep the first N pairs (by name)")
    p.add_argument("--to-png", action="store_true", help="decode JPEGs and store them as PNG (same pixels)")
    p.add_argument("--link", action="store_true", help="symbolic links instead of copies")
    p = command("patches", "cut the release's 256x256 training patches (release row 10) into an FMB-layout folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--min-spread", type=float, default=0.1, help="contrast filter: keep patches with a 10-90 "
                   "percentile spread of at least this, in both modalities")
    p.add_argument("--relative-to", default="p90", choices=["p90", "range"],
                   help="spread relative to the patch's 90th percentile (release) or to the [0, 1] range")
    p = command("check", "run data.check on a dataset folder")
    p.add_argument("--layout", default="auto", choices=["auto", *DATASET_NAMES])
    for p in sub.choices.values():
        p.add_argument("--ignore-index", type=int, default=IGNORE,
                       help="label value accepted besides the classes in the check (default 255; -1: none)")
    return parser


def run(args: argparse.Namespace) -> int:
    from data.check import check_dataset
    from metrics.report import write_json

    source = args.source
    if not source.is_dir():
        raise ReproError(f"folder not found: {source}")
    out = getattr(args, "out", None)
    if out is not None and out.resolve() == source.resolve():
        raise ReproError("--out must differ from the source folder")
    stats: dict[str, Any] = {}
    if args.command in ("fmb", "msrs"):
        stats = convert_labelled(args.command, source, out, args)
        layout = args.command
    elif args.command == "roadscene":
        stats = convert_roadscene(source, out, args)
        layout = "roadscene"
    elif args.command == "patches":
        stats = cut_patches(source, out, args)
        layout = "fmb"
    else:
        out, layout = source, args.layout
    ignore = None if args.ignore_index < 0 else args.ignore_index
    kwargs: dict[str, Any] = {"layout": layout, "ignore_index": ignore}
    if args.command == "patches":
        kwargs["splits"] = [args.split]
    if args.command in ("fmb", "msrs"):
        kwargs["splits"] = args.splits
        kwargs["num_classes"] = args.classes
    report = check_dataset(out, **kwargs)
    print(report, flush=True)
    document = {"command": args.command, "source": str(source), "out": str(out), **stats,
                "check": {"ok": report.ok, "pairs": report.pairs, "lines": report.lines(),
                          "class_pixels": report.class_pixels}}
    target = args.results / "prepare_data" / f"{args.command}_{Path(out).resolve().name}.json"
    write_json(target, json_safe(document))
    if not args.quiet:
        say(f"report: {target}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
