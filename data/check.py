"""Validate a dataset folder before training.

Usage::

    python -m data.check DIR [--layout auto|fmb|msrs|roadscene|folders] [--ir D --vi D --label D] [--classes N]
                             [--ignore-index V] [--strict]

Finds missing partners, size mismatches, unreadable files, label values out of range and empty or missing folders
(problems: exit code 1), and classes that never appear in a split and colour infrared files (warnings; they fail
the check only with ``--strict``). Prints one line per finding, naming the file, then a summary; exit code 0 when
clean.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.datasets import (
    CLASSES_FILE,
    Problem,
    list_images,
    pair_files,
    resolve_class_names,
)
from data.io import ImageReadError, decode_image_unchanged, is_effectively_gray, read_image, read_label
from data.layouts import DATASET_NAMES
from data.layouts import LAYOUTS as LAYOUT_TABLE
from data.layouts import detect_layout as detect_layout  # re-exported: the check's layout guess

PathLike = str | os.PathLike
LAYOUTS = ("auto", *DATASET_NAMES)


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        root: the checked folder (or the infrared folder for a ``folders`` check).
        layout: the layout that was checked.
        problems: findings that make the dataset unusable as it is.
        warnings: findings worth knowing (absent classes, colour infrared); problems too when ``strict``.
        pairs: number of complete pairs per split (``"all"`` for a single folder set).
        class_names: classes the labels were checked against (empty when unknown or unlabelled).
        class_pixels: per split, pixel count per class.
        strict: warnings count as failures.
    """

    root: str
    layout: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    pairs: dict[str, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    class_pixels: dict[str, list[int]] = field(default_factory=dict)
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not (self.strict and self.warnings)

    def lines(self) -> list[str]:
        """One line per finding, then the summary line."""
        out = [f"ERROR {p}" for p in self.problems] + [f"WARN  {w}" for w in self.warnings]
        total = sum(self.pairs.values())
        splits = ", ".join(f"{k}: {v}" for k, v in self.pairs.items()) or "none"
        verdict = "OK" if self.ok else "FAILED"
        out.append(f"{verdict}: {self.layout} dataset at {self.root}: {total} pairs ({splits}), "
                   f"{len(self.class_names)} classes; {len(self.problems)} problem(s), {len(self.warnings)} warning(s)")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _check_split(
    report: CheckReport,
    key: str,
    ir_dir: Path,
    vi_dir: Path,
    label_dir: Path | None,
    ignore_index: int | None,
) -> None:
    pairs, problems = pair_files(ir_dir, vi_dir, label_dir)
    report.problems += problems  # an ambiguous stem (a.png and a.jpg) too: none of its files is used
    report.pairs[key] = len(pairs)
    paired = {p.ir for p in pairs} | {p.vi for p in pairs} | {p.label for p in pairs if p.label is not None}
    # Unpaired files are still checked for readability, so that one run shows every broken file.
    for folder in (ir_dir, vi_dir, label_dir):
        if folder is None:
            continue
        for path in list_images(folder)[0].values():
            if path not in paired:
                try:
                    decode_image_unchanged(path)
                except ImageReadError as exc:
                    report.problems.append(Problem("unreadable", str(path), exc.reason))

    num_classes = len(report.class_names)
    counts = np.zeros(num_classes, dtype=np.int64)
    for pair in pairs:
        images = {}
        for role, path in (("infrared", pair.ir), ("visible", pair.vi)):
            try:
                images[role] = read_image(path)
            except ImageReadError as exc:
                report.problems.append(Problem("unreadable", str(path), exc.reason))
        if "infrared" in images and not is_effectively_gray(images["infrared"]):
            report.warnings.append(Problem("colour-infrared", str(pair.ir),
                                           "infrared file has differing colour channels; its luminance will be used"))
        sizes = {role: img.shape[:2] for role, img in images.items()}
        label = None
        if pair.label is not None:
            try:
                label = read_label(pair.label)
                sizes["label"] = label.shape
            except ImageReadError as exc:
                report.problems.append(Problem("unreadable", str(pair.label), exc.reason))
        if len(set(sizes.values())) > 1:
            described = ", ".join(f"{role} {w}x{h}" for role, (h, w) in sizes.items())
            report.problems.append(Problem("size-mismatch", str(pair.vi if "visible" in sizes else pair.ir),
                                           f"pair '{pair.name}' has different sizes (WxH): {described}"))
        if label is not None and num_classes:
            bad = (label < 0) | (label >= num_classes)
            if ignore_index is not None:
                bad &= label != ignore_index
            if bad.any():
                values = sorted(int(v) for v in np.unique(label[bad]))
                report.problems.append(Problem(
                    "label-range", str(pair.label),
                    f"{int(bad.sum())} pixels with values {values[:8]}{' ...' if len(values) > 8 else ''} outside "
                    f"0..{num_classes - 1}" + (f" (ignore index {ignore_index} allowed)" if ignore_index is not None
                                                else "")))
            valid = (label >= 0) & (label < num_classes)
            counts += np.bincount(label[valid].ravel(), minlength=num_classes)[:num_classes]
            if not bad.any() and not (label != 0).any():
                report.warnings.append(Problem("empty-label", str(pair.label),
                                               "every pixel is class 0 (nothing labelled); the pair still trains "
                                               "the fusion terms, and L_seg sees only class 0 in it"))
    if label_dir is not None and num_classes and pairs:
        report.class_pixels[key] = counts.tolist()
        absent = [f"{i} {report.class_names[i]}" for i in np.flatnonzero(counts == 0)]
        if absent:
            report.warnings.append(Problem("absent-class", str(label_dir),
                                           f"{len(absent)} class(es) never appear: {', '.join(absent)}"))


def check_dataset(
    root: PathLike | None = None,
    *,
    layout: str = "auto",
    ir_dir: PathLike | None = None,
    vi_dir: PathLike | None = None,
    label_dir: PathLike | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | PathLike | None = None,
    splits: Sequence[str] = ("train", "test"),
    ignore_index: int | None = None,
    strict: bool = False,
) -> CheckReport:
    """Check a dataset folder; see the module docstring.

    Args:
        root: dataset folder (fmb / msrs / roadscene layouts, or ``root/{ir,vi[,label]}``); with ``layout="folders"``
            the ``*_dir`` arguments are taken relative to it when given.
        layout: ``auto`` detects it from the folder names.
        ir_dir, vi_dir, label_dir: explicit folders (``folders`` layout).
        num_classes / class_names: classes the labels must fit; default from ``classes.yaml`` (root, label folder
            or its parent), else the layout's built-in list (FMB 15, MSRS 9). Unknown -> range not checked
            (a warning).
        splits: the splits to check for fmb / msrs (missing ones are skipped; none present is a problem).
        ignore_index: a label value accepted besides the classes (e.g. 255 in re-packed FMB labels).
        strict: warnings fail the check too.

    Returns:
        :class:`CheckReport`; ``report.ok`` tells whether training may start.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if root is None and (ir_dir is None or vi_dir is None):
        raise ValueError("give a dataset folder, or both ir_dir and vi_dir")
    base = Path(root) if root is not None else None
    if layout == "auto":
        layout = "folders" if (base is None or ir_dir is not None) else detect_layout(base)
    report = CheckReport(root=str(base if base is not None else ir_dir), layout=layout, strict=strict)

    jobs: list[tuple[str, Path, Path, Path | None]] = []
    default: Sequence[str] | None = None
    search: list[Path] = [base] if base is not None else []
    if layout in LAYOUT_TABLE:
        assert base is not None
        spec = LAYOUT_TABLE[layout]
        default = spec.classes
        if spec.split_folders:
            for split in splits:
                if (base / split).is_dir():
                    jobs.append((split, *spec.dirs(base, split)))
            if not jobs:
                report.problems.append(Problem("missing-folder", str(base),
                                               f"none of the splits {list(splits)} exists ({layout} layout expects "
                                               f"{spec.describe(base, '{' + ','.join(splits) + '}')})"))
        else:
            jobs.append(("all", *spec.dirs(base)))
    else:
        def place(value: PathLike | None, fallbacks: Sequence[str], required: bool) -> Path | None:
            if value is not None:
                path = Path(value)
                return base / path if base is not None and not path.is_absolute() else path
            if base is None:
                return None
            found = next((base / name for name in fallbacks if (base / name).is_dir()), None)
            return found if found is not None or not required else base / fallbacks[0]

        ir, vi = place(ir_dir, ("ir",), True), place(vi_dir, ("vi",), True)
        lab = place(label_dir, ("label", "labels", "Label"), False)
        assert ir is not None and vi is not None
        if lab is not None:
            search = [*search, lab, lab.parent]
        jobs.append(("all", ir, vi, lab))

    labelled = any(job[3] is not None for job in jobs)
    if labelled:
        try:
            names = resolve_class_names(class_names, None, search, default)
            if num_classes is not None and class_names is not None:
                resolve_class_names(class_names, num_classes)  # raises when they contradict
            elif num_classes is not None:
                # An explicit count overrides classes.yaml / the layout default (names kept where they exist).
                known = (names or [])[:num_classes]
                names = known + [f"class{i}" for i in range(len(known), num_classes)]
        except (ValueError, OSError) as exc:
            names = None
            report.problems.append(Problem("classes", str(base / CLASSES_FILE if base else "classes"), str(exc)))
        report.class_names = names or []
        if not names:
            report.warnings.append(Problem("classes", report.root, "number of classes unknown (no classes.yaml, no "
                                                                   "--classes); label values were not range-checked"))
    for key, ir, vi, lab in jobs:
        _check_split(report, key, ir, vi, lab, ignore_index)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="dataset folder")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto")
    parser.add_argument("--ir", help="infrared folder (folders layout; relative to DIR when given)")
    parser.add_argument("--vi", help="visible folder")
    parser.add_argument("--label", help="label folder")
    parser.add_argument("--classes", type=int, help="number of classes (overrides classes.yaml / layout default)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], help="splits to check (fmb / msrs)")
    parser.add_argument("--ignore-index", type=int, help="label value accepted besides the classes, e.g. 255")
    parser.add_argument("--strict", action="store_true", help="warnings fail the check too")
    args = parser.parse_args(argv)
    if args.root is None and (args.ir is None or args.vi is None):
        parser.error("give DIR, or --ir and --vi")
    if args.layout == "auto" and args.ir is not None:
        args.layout = "folders"
    report = check_dataset(args.root, layout=args.layout, ir_dir=args.ir, vi_dir=args.vi, label_dir=args.label,
                           num_classes=args.classes, splits=args.splits, ignore_index=args.ignore_index,
                           strict=args.strict)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
