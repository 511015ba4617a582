"""The command line of ``eval_metrics.py``: fusion metrics of fused folders, or segmentation scores.

Fusion (default mode)::

    python eval_metrics.py --ir DIR --vi DIR --fused [NAME=]DIR [--fused [NAME=]DIR ...] [--references]
        [--metrics EN,SF,...|all] [--convention paper|cddfuse|tdfusion] [--json F] [--csv F] [--markdown]
        [--latex] [--workers N] [--published FILE [--published-dataset KEY]] [--impl fast|direct]

Segmentation::

    python eval_metrics.py seg --pred [NAME=]DIR [...] --label DIR --classes N [--class-names ...|fmb|msrs]
        [--ignore-index 255] [--background 0] [--exclude-background] [--report-classes C ...]
        [--json F] [--csv F] [--markdown] [--latex] [--published FILE [--published-dataset KEY]]

Images are paired by file stem. Problems with single images are reported on stderr, one line each, and leave those
images out of the means; the exit status is then 1. Unusable arguments, missing folders and output files that
cannot be written (checked before any image is read) give exit status 2. See :mod:`metrics` for the library.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .catalog import ALL_METRICS, TABLE1_METRICS, VARIANTS, directions, parse_metrics
from .conventions import Convention
from .evaluate import REFERENCES, Comparison, FusionEvaluation, evaluate_folders
from .report import format_table, json_number, load_published, output_problem, write_csv, write_json
from .segmentation import (
    FMB_CLASSES,
    MSRS_CLASSES,
    csv_rows,
    evaluate_seg_folders,
    resolve_classes,
    table_rows,
)

CLASS_PRESETS = {"fmb": FMB_CLASSES, "msrs": MSRS_CLASSES}
PUBLISHED_SUFFIX = " (published)"


def _usable_cores() -> int:
    """Cores this process may run on (its affinity mask), so the pool never outnumbers them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class UsageError(Exception):
    """Arguments that cannot be used (exit status 2)."""


def parse_named_dirs(values: Sequence[str], option: str) -> dict[str, Path]:
    """``[NAME=]DIR`` arguments -> ordered {name: folder}; the name defaults to the folder's name."""
    named: dict[str, Path] = {}
    for value in values:
        if "=" in value and not os.path.isdir(value):
            name, folder = value.split("=", 1)
        else:
            name, folder = "", value
        path = Path(folder)
        name = name or path.resolve().name
        if name in named:
            raise UsageError(f"{option} name {name!r} given twice; use NAME=DIR to tell them apart")
        named[name] = path
    return named


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write results as JSON (atomically)")
    out.add_argument(
        "--csv", type=Path, metavar="FILE", help="write per-image (fusion) or per-class (seg) rows as CSV (atomically)"
    )
    out.add_argument("--markdown", action="store_true", help="print the table as Markdown (bold best, underline 2nd)")
    out.add_argument("--latex", action="store_true", help="print the table as LaTeX (\\textbf / \\underline)")
    out.add_argument(
        "--published", type=Path, metavar="FILE",
        help="YAML/CSV of published numbers to add as rows (see configs/published/)",
    )
    out.add_argument(
        "--published-dataset", metavar="KEY", help="dataset key in the --published file (e.g. FMB, MSRS, RoadScene)"
    )
    out.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                     help="no progress bar (the same option as in train.py and test.py)")


def build_fusion_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_metrics.py",
        description="Fusion metrics of fused folders: by default EN, SF, CC, VIF, Qabf, SSIM (paper Table I); "
        "--metrics all adds SD, AG, MI, MSE, PSNR and SCD. "
        "For segmentation scores (Table II) run: eval_metrics.py seg --help",
        epilog="Conventions (how the two sources combine): paper = CC mean, VIF sum, SSIM mean (range 255); "
        "cddfuse = CC mean, VIF sum, SSIM sum (range 2, old scikit-image on float input); "
        "tdfusion = CC mean, VIF mean, SSIM mean (range 255); the other metrics do not depend on it. "
        "Definitions: docs/METRICS.md. Exit status: 0 all images evaluated, 1 some image failed (listed on "
        "stderr), 2 unusable arguments, missing folders or an output file that cannot be written.",
    )
    parser.add_argument("--ir", type=Path, required=True, metavar="DIR", help="folder of infrared sources")
    parser.add_argument("--vi", type=Path, required=True, metavar="DIR", help="folder of visible sources")
    parser.add_argument(
        "--fused", action="append", default=[], metavar="[NAME=]DIR",
        help="folder of fused images; repeat for a side-by-side table (NAME defaults to the folder name); "
        "needed unless --references is given",
    )
    parser.add_argument(
        "--metrics", metavar="LIST", default=",".join(TABLE1_METRICS),
        help=f"comma-separated metric names, or 'all' ({','.join(ALL_METRICS)}); also the MATLAB-style variants "
        f"{', '.join(VARIANTS)} (default: {','.join(TABLE1_METRICS)})",
    )
    parser.add_argument(
        "--references", action="store_true",
        help=f"also score the rows {', '.join(REFERENCES)} (the sources themselves and their rounded mean) exactly "
        "like the fused folders, shown first and not ranked: they tell whether a method's numbers are good",
    )
    parser.add_argument(
        "--convention", default=Convention.PAPER.value, choices=[c.value for c in Convention],
        help="how the two sources are combined (default: paper)",
    )
    parser.add_argument("--impl", default="fast", choices=["fast", "direct"], help="metric implementation")
    parser.add_argument(
        "--workers", type=int, default=min(_usable_cores(), 8), metavar="N",
        help="worker processes (0 = evaluate in this process; default: CPU count, at most 8)",
    )
    _add_output_options(parser)
    return parser


def build_seg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_metrics.py seg",
        description="Segmentation scores (paper Table II): per-class Acc (recall) and IoU, mAcc, mIoU from folders "
        "of predicted and label index PNGs paired by stem. Tables print percentages; JSON/CSV hold fractions.",
    )
    parser.add_argument(
        "--pred", action="append", required=True, metavar="[NAME=]DIR",
        help="folder of predicted index maps; repeat for several methods",
    )
    parser.add_argument("--label", type=Path, required=True, metavar="DIR", help="folder of label index maps")
    parser.add_argument("--classes", type=int, required=True, metavar="N", help="number of classes C (FMB 15, MSRS 9)")
    parser.add_argument(
        "--class-names", nargs="+", metavar="NAME",
        help="C class names, or one preset: fmb, msrs (default: class0 ... class{C-1})",
    )
    parser.add_argument(
        "--ignore-index", type=int, default=255, metavar="V", help="label value to skip (default 255; -1: none)"
    )
    parser.add_argument(
        "--background", type=int, default=0, metavar="C", help="unlabeled/background class (default 0; -1: none)"
    )
    parser.add_argument(
        "--exclude-background", action="store_true",
        help="table shows the background-free means and leaves the background column out",
    )
    parser.add_argument(
        "--report-classes", nargs="+", metavar="CLASS",
        help="only these classes (names or indices) in the table, and means over them (Table II uses 8 FMB classes)",
    )
    _add_output_options(parser)
    return parser


def _print_table(
    table: dict, columns: Sequence[str], args: argparse.Namespace, decimals: int, caption: str, **marks
) -> None:
    """Print ``table`` in every style asked for (plain when none); ``marks`` go to :func:`format_table`."""
    styles = [s for s, on in (("markdown", args.markdown), ("latex", args.latex)) if on] or ["plain"]
    for style in styles:
        print(format_table(table, columns, style=style, decimals=decimals, caption=caption, **marks))


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail early (exit 2) when ``--json`` or ``--csv`` could not be written, before any image is read."""
    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None:
            problem = output_problem(path)
            if problem:
                raise UsageError(f"{option} {path}: {problem}")


def _published_rows(args: argparse.Namespace, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """Published rows with their columns matched to ``columns`` case-insensitively."""
    if args.published is None:
        return {}
    try:
        rows = load_published(args.published, args.published_dataset)
    except (OSError, ValueError) as err:
        raise UsageError(f"--published: {err}") from None
    lookup = {c.lower(): c for c in columns}
    return {
        method + PUBLISHED_SUFFIX: {lookup[k.lower()]: v for k, v in values.items() if k.lower() in lookup}
        for method, values in rows.items()
    }


def _fusion_caption(result: FusionEvaluation, comparison: Comparison) -> str:
    """Caption: convention, image counts per row, and, when the rows' image sets differ, what the means are over."""
    counts = result.counts()

    def count(row: str) -> str:
        c = counts[row]
        return f"{c['evaluated']} images" + (f" ({c['failed']} failed)" if c["failed"] else "")

    parts = []
    if result.references:
        ref_counts = {count(r) for r in result.references}
        parts.append(f"reference rows (not ranked): {', '.join(sorted(ref_counts))}")
    parts += [f"{m}: {count(m)}" for m in result.methods if m not in result.references]
    lines = [f"Fusion metrics ({result.convention.value} convention); " + ", ".join(parts)]
    if comparison.sets_differ:
        by_size: dict[int, list[str]] = {}
        for metric, names in comparison.common.items():
            by_size.setdefault(len(names), []).append(metric)
        sizes = "; ".join(f"{', '.join(ms)}: {n} images" for n, ms in sorted(by_size.items(), reverse=True))
        text = "The rows were scored on different image sets."
        if sizes:
            text += f" To compare them, these columns are averaged over the images every row has a value for ({sizes})."
        if comparison.unranked:
            text += f" Not ranked, no image common to all rows: {', '.join(comparison.unranked)}."
        lines.append(text + " Each row's mean over its own images is in --json.")
    return "\n".join(lines)


def run_fusion(argv: Sequence[str]) -> int:
    """Fusion mode; returns the exit status (raises :class:`UsageError` for exit status 2)."""
    args = build_fusion_parser().parse_args(argv)
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 (evaluate in this process) or more, got {args.workers}")
    fused_dirs = parse_named_dirs(args.fused, "--fused")
    if not fused_dirs and not args.references:
        raise UsageError("give at least one --fused folder (or --references to score the sources alone)")
    try:
        metrics = parse_metrics(args.metrics)
    except ValueError as err:
        raise UsageError(f"--metrics: {err}") from None
    clash = [name for name in fused_dirs if args.references and name in REFERENCES]
    if clash:
        raise UsageError(f"--fused name {clash[0]!r} is a reference row of --references; use NAME=DIR")
    _check_outputs(args)
    convention = Convention.parse(args.convention)
    print(convention.describe(), flush=True)
    published = _published_rows(args, metrics)
    try:
        result = evaluate_folders(
            args.ir, args.vi, fused_dirs, convention, workers=args.workers, impl=args.impl,
            progress=not args.no_progress, metrics=metrics, references=args.references,
        )
    except (OSError, ValueError) as err:  # missing or unreadable folders, no images
        print(f"error: {err}", file=sys.stderr)
        return 2

    for line in result.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in result.failure_lines():
        print(f"error: {line}", file=sys.stderr)

    comparison = result.comparison()
    means = comparison.means
    references = {m: means[m] for m in result.references}
    methods = {m: means[m] for m in result.methods if m not in result.references}
    table = {**references, **published, **methods}
    _print_table(
        table, metrics, args, 3, _fusion_caption(result, comparison), directions=directions(metrics),
        rank_rows=[*published, *methods], rank_columns=[m for m in metrics if m not in comparison.unranked],
    )

    if args.json:
        document = result.to_json()
        if published:
            document["published"] = {
                "file": str(args.published),
                "dataset": args.published_dataset,
                "methods": {m: {k: json_number(v) for k, v in vals.items()} for m, vals in published.items()},
            }
        write_json(args.json, document)
    if args.csv:
        write_csv(args.csv, *result.csv_rows())
    if result.any_failed:
        total = sum(c["failed"] for m, c in result.counts().items() if m not in result.references)
        print(f"error: {total} fused image(s) could not be evaluated (listed above)", file=sys.stderr)
        return 1
    return 0


def run_seg(argv: Sequence[str]) -> int:
    """Segmentation mode; returns the exit status (raises :class:`UsageError` for exit status 2)."""
    args = build_seg_parser().parse_args(argv)
    _check_outputs(args)
    pred_dirs = parse_named_dirs(args.pred, "--pred")
    names = args.class_names
    if names and len(names) == 1 and names[0].lower() in CLASS_PRESETS:
        names = list(CLASS_PRESETS[names[0].lower()])
    ignore = None if args.ignore_index < 0 else args.ignore_index
    background = None if args.background < 0 else args.background
    try:
        result = evaluate_seg_folders(
            pred_dirs, args.label, args.classes, names, ignore, background, progress=not args.no_progress
        )
        reported = resolve_classes(args.report_classes, result.class_names) if args.report_classes else None
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in result.failure_lines():
        print(f"error: {line}", file=sys.stderr)

    if reported is not None:
        shown, mean_key = [result.class_names[i] for i in reported], "reported"
    elif args.exclude_background and background is not None:
        shown = [n for i, n in enumerate(result.class_names) if i != background]
        mean_key = "no_background"
    else:
        shown, mean_key = list(result.class_names), "all"
    columns = [f"{n} {k}" for n in shown for k in ("Acc", "IoU")] + ["mAcc", "mIoU"]
    summaries = result.summaries(reported)
    table = {**_published_rows(args, columns), **{m: table_rows(s, shown, mean_key) for m, s in summaries.items()}}
    mean_text = {"all": "all classes", "no_background": "classes except background", "reported": "reported classes"}
    caption = f"Segmentation (%), means over {mean_text[mean_key]}; ignore index {ignore}; " + ", ".join(
        f"{m}: {result.images[m]} images" for m in result.methods
    )
    _print_table(table, columns, args, 2, caption)

    if args.json:
        write_json(args.json, result.to_json(reported))
    if args.csv:
        write_csv(args.csv, *csv_rows(result, reported))
    if result.any_failed:
        total = sum(len(v) for v in result.failed.values())
        print(f"error: {total} prediction(s) could not be scored (listed above)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the fusion (default, or ``fusion``) or segmentation (``seg``) mode; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "seg":
            return run_seg(argv[1:])
        return run_fusion(argv[1:] if argv and argv[0] == "fusion" else argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
