"""Evaluate folders of fused images against folders of source pairs (Table I of the paper, and more metrics).

Files are paired by stem (``ir/00004N.png`` with ``vi/00004N.jpg`` and ``fused/00004N.bmp``), listed and read by
:mod:`data.io` (the project's one IO module). Every problem with one image (missing fused file, size mismatch,
empty, truncated or non-image file, a folder or broken link named like an image, two files with one stem) is
recorded as a one-line reason for that (method, image) and the image is left out of that method's means; all other
images are still evaluated. Pairs run in a process pool (``workers > 0``, started with "forkserver" or "spawn", so
a script calling :func:`evaluate_folders` with workers needs the usual ``if __name__ == "__main__":`` guard) or in
the calling process (``workers = 0``).

Reference rows (``references=True``): the infrared source, the visible source and their rounded pixel mean are
scored as if they were fused images, exactly like the methods, and come first in the results. They show what the
numbers of a method mean: a fusion that does not beat the plain average on a metric gains nothing there.

Methods scored on different image sets cannot be ranked on their own means; :meth:`FusionEvaluation.comparison`
gives means over the images every row has a value for, and says where the sets differed.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.io import ImageListing, ImageReadError, list_images
from data.io import read_gray_0_255_metric_convention as read_gray
from data.pairing import ambiguous_stem

from . import direct, fast
from .catalog import TABLE1_METRICS, parse_metrics
from .conventions import Convention
from .report import json_number

METRIC_NAMES = TABLE1_METRICS  # the default selection (kept under its old name for the scripts that import it)
REFERENCES: tuple[str, ...] = ("infrared", "visible", "average")
IMPLEMENTATIONS: dict[str, Callable[..., dict[str, float]]] = {
    "fast": fast.fusion_metrics,
    "direct": direct.fusion_metrics,
}


@dataclass
class PairTask:
    """One image name to evaluate: its two sources and the fused file of every method that has one.

    Attributes:
        name: file stem shared by the images.
        ir: infrared source file.
        vi: visible source file.
        fused: method -> fused file.
    """

    name: str
    ir: Path
    vi: Path
    fused: dict[str, Path]


@dataclass
class Comparison:
    """Means that can be compared across rows (see :meth:`FusionEvaluation.comparison`).

    Attributes:
        means: row -> metric -> mean (NaN where a row has no value).
        common: metric -> the images every row had a finite value for, only for metrics where the rows' image
            sets differed (there the means are over these images).
        unranked: metrics whose rows share no image at all; their means are each row's own and do not compare.
    """

    means: dict[str, dict[str, float]]
    common: dict[str, list[str]] = field(default_factory=dict)
    unranked: list[str] = field(default_factory=list)

    @property
    def sets_differ(self) -> bool:
        """True when some column was not computed over one and the same image set for every row."""
        return bool(self.common or self.unranked)


@dataclass
class FusionEvaluation:
    """Per-image metrics and failures of every method, plus the convention they were computed with.

    Attributes:
        convention: how the two sources were combined.
        methods: row names in order: the reference rows first (when asked for), then the methods as given.
        per_image: method -> image name -> metric -> value (only images that were evaluated).
        failed: method -> image name -> one-line reason (images left out of that method's means).
        notes: further one-line remarks (e.g. fused files without sources, undefined values), for stderr.
        metrics: the metric names computed, in order.
        references: which of ``methods`` are reference rows.
    """

    convention: Convention
    methods: list[str]
    per_image: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    metrics: tuple[str, ...] = METRIC_NAMES
    references: list[str] = field(default_factory=list)

    def means(self) -> dict[str, dict[str, float]]:
        """Method -> metric -> mean over its own evaluated images (non-finite values left out; NaN if none left)."""
        return {method: mean_metrics(self.per_image.get(method, {}), self.metrics) for method in self.methods}

    def comparison(self, rows: Sequence[str] | None = None) -> Comparison:
        """Means over a common image set per metric, so that ``rows`` can be ranked against each other.

        For each metric, the images where every row (that has any value) has a finite value. When all rows have
        the same set, the means are the plain :meth:`means`.

        Args:
            rows: the rows to compare (default: all methods and references).
        """
        rows = list(self.methods if rows is None else rows)
        result = Comparison({row: {} for row in rows})
        for metric in self.metrics:
            finite = {
                row: {name for name, values in self.per_image.get(row, {}).items() if _finite(values.get(metric))}
                for row in rows
            }
            present = [names for names in finite.values() if names]
            common = set.intersection(*present) if present else set()
            differ = any(names != common for names in present)
            if differ and common:
                result.common[metric] = sorted(common)
            elif differ:
                result.unranked.append(metric)
            for row in rows:
                use = common if differ and common and finite[row] else finite[row]  # a row with no value stays NaN
                values = [self.per_image[row][name][metric] for name in use]
                result.means[row][metric] = float(np.mean(values)) if values else math.nan
        return result

    def counts(self) -> dict[str, dict[str, int]]:
        """Method -> ``{"evaluated": n, "failed": m}``."""
        return {
            m: {"evaluated": len(self.per_image.get(m, {})), "failed": len(self.failed.get(m, {}))}
            for m in self.methods
        }

    @property
    def any_failed(self) -> bool:
        """True when at least one (method, image) could not be evaluated."""
        return any(self.failed.get(m) for m in self.methods)

    def failure_lines(self) -> list[str]:
        """One line per failed (method, image), sorted by method order then name."""
        return [
            f"[{m}] {name}: {reason}" for m in self.methods for name, reason in sorted(self.failed.get(m, {}).items())
        ]

    def csv_rows(self) -> tuple[list[str], list[list]]:
        """CSV header ``method,image,<metrics>`` and rows: every evaluated image, then one ``mean`` row per method.

        Non-finite values are empty cells (see :func:`metrics.report.csv_text`).
        """
        means = self.means()
        rows: list[list] = [
            [m, name, *(values[k] for k in self.metrics)]
            for m in self.methods
            for name, values in self.per_image.get(m, {}).items()
        ]
        rows += [[m, "mean", *(means[m][k] for k in self.metrics)] for m in self.methods]
        return ["method", "image", *self.metrics], rows

    def to_json(self) -> dict:
        """The JSON document.

        Keys: ``convention``, ``metrics`` (names in order), ``references`` (the reference rows among the
        methods), ``methods`` ({M: {"per_image", "mean"}}, references first; means over each method's own images),
        ``failed``, ``counts``, ``notes`` (includes every value written as null and why), and, only when the
        methods were scored on different image sets, ``common`` ({"images": {metric: names}, "mean": {M: {...}},
        "unranked": [...]}: the means that compare). NaN and infinities become ``null``.
        """
        means = self.means()
        document = {
            "convention": self.convention.value,
            "metrics": list(self.metrics),
            "references": list(self.references),
            "methods": {
                m: {
                    "per_image": {
                        name: {k: json_number(v) for k, v in values.items()}
                        for name, values in sorted(self.per_image.get(m, {}).items())
                    },
                    "mean": {k: json_number(v) for k, v in means[m].items()},
                }
                for m in self.methods
            },
            "failed": {m: dict(sorted(self.failed.get(m, {}).items())) for m in self.methods},
            "counts": self.counts(),
            "notes": list(self.notes),
        }
        comparison = self.comparison()
        if comparison.sets_differ:
            document["common"] = {
                "images": comparison.common,
                "mean": {m: {k: json_number(v) for k, v in vals.items()} for m, vals in comparison.means.items()},
                "unranked": comparison.unranked,
            }
        return document


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def mean_metrics(
    per_image: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = METRIC_NAMES
) -> dict[str, float]:
    """Mean of every metric over images, leaving non-finite values out; NaN when no finite value is left."""
    out = {}
    for metric in metrics:
        values = np.array([v[metric] for v in per_image.values() if metric in v], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[metric] = float(values.mean()) if values.size else math.nan
    return out


def reference_images(ir: np.ndarray, vi: np.ndarray) -> dict[str, np.ndarray]:
    """The stand-in "fused" images of the reference rows.

    Args:
        ir, vi: (H, W) sources in [0, 255] as read by the metric convention.

    Returns:
        ``{"infrared": ir, "visible": vi, "average": round((ir + vi) / 2)}`` (half to even, like the reading).
    """
    return {"infrared": ir, "visible": vi, "average": np.round((ir + vi) / 2.0)}


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _problem(listing: ImageListing, name: str, label: str) -> str | None:
    """Why ``name`` has no usable file in ``listing`` (``label`` says which folder), or None."""
    if name in listing.duplicates:
        return f"{label} {name}: {ambiguous_stem(listing.duplicates[name])}"
    if name in listing.unusable:
        return f"{label} {listing.unusable[name]}"
    if name not in listing.files:
        return None if label == "fused image" else f"no {label} ({name}.* not in {listing.folder})"
    return None


def plan_pairs(
    ir_dir: str | os.PathLike,
    vi_dir: str | os.PathLike,
    fused_dirs: Mapping[str, str | os.PathLike],
    references: Sequence[str] = (),
) -> tuple[list[PairTask], dict[str, dict[str, str]], list[str]]:
    """Pair files by stem and find what is missing or ambiguous before anything is read.

    Args:
        ir_dir: folder of infrared sources.
        vi_dir: folder of visible sources.
        fused_dirs: method name -> folder of fused images.
        references: reference rows to score (they need only the sources).

    Returns:
        ``(tasks, failed, notes)``: one task per name that has both sources (and a fused file or a reference row to
        score), row -> name -> reason for pairs that cannot be evaluated, and remarks for stderr (e.g. a fused
        folder with no images at all).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: the source folders have no image in common.
        OSError: a folder cannot be listed.
    """
    folders = [("infrared", ir_dir), ("visible", vi_dir), *[(f"fused ({m})", d) for m, d in fused_dirs.items()]]
    for label, folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
    ir_list = list_images(ir_dir)
    vi_list = list_images(vi_dir)
    rows = [*references, *fused_dirs]
    failed: dict[str, dict[str, str]] = {m: {} for m in rows}
    notes: list[str] = []
    names = sorted({*ir_list.files, *ir_list.duplicates, *ir_list.unusable,
                    *vi_list.files, *vi_list.duplicates, *vi_list.unusable})  # fmt: skip
    if not names:
        raise ValueError(f"no images found in {ir_dir} or {vi_dir}")

    fused_lists = {}
    for method, folder in fused_dirs.items():
        listing = list_images(folder)
        fused_lists[method] = listing
        if not listing:
            notes.append(f"[{method}] fused folder {folder} contains no images")
        extra = sorted(set(listing.files) - set(names))
        if extra:
            example = listing.files[extra[0]].name
            notes.append(f"[{method}] {len(extra)} fused image(s) without sources ignored (e.g. {example})")

    tasks = []
    for name in names:
        source_problem = _problem(ir_list, name, "infrared source") or _problem(vi_list, name, "visible source")
        if source_problem:
            for row in rows:
                failed[row][name] = source_problem
            continue
        task_fused = {}
        for method, folder in fused_dirs.items():
            listing = fused_lists[method]
            problem = _problem(listing, name, "fused image")
            if problem:
                failed[method][name] = problem
            elif name not in listing.files:
                failed[method][name] = f"missing fused image ({name}.* not in {folder})"
            else:
                task_fused[method] = listing.files[name]
        if task_fused or references:
            tasks.append(PairTask(name, ir_list.files[name], vi_list.files[name], task_fused))
    return tasks, failed, notes


def _score(
    compute: Callable[..., dict[str, float]], fused: np.ndarray, ir: np.ndarray, vi: np.ndarray,
    convention: str, metrics: Sequence[str],
) -> dict[str, float] | str:
    try:
        return compute(fused, ir, vi, convention, metrics)
    except Exception as err:  # one bad image must not stop the others
        return f"metric computation failed: {type(err).__name__}: {err}"


def evaluate_task(
    task: PairTask,
    convention: Convention | str,
    impl: str = "fast",
    metrics: Sequence[str] | str | None = None,
    references: Sequence[str] = (),
) -> dict[str, dict[str, float] | str]:
    """Read one source pair and every method's fused image, and compute the metrics.

    Args:
        task: the files of one image name.
        convention: source-combination convention.
        impl: ``"fast"`` or ``"direct"``.
        metrics: names, ``"all"``, or None for the six of Table I.
        references: reference rows to score as well (names from :data:`REFERENCES`).

    Returns:
        row -> metrics dict, or row -> one-line reason when that image could not be evaluated.
    """
    compute = IMPLEMENTATIONS[impl]
    names = parse_metrics(metrics)
    rows = [*references, *task.fused]
    conv = Convention.parse(convention).value
    try:
        ir = read_gray(task.ir)
    except ImageReadError as err:
        return dict.fromkeys(rows, f"infrared source {task.ir}: {err.reason}")
    try:
        vi = read_gray(task.vi)
    except ImageReadError as err:
        return dict.fromkeys(rows, f"visible source {task.vi}: {err.reason}")
    if ir.shape != vi.shape:
        reason = f"sources differ in size: infrared {_size(ir.shape)}, visible {_size(vi.shape)} (WxH)"
        return dict.fromkeys(rows, reason)
    out: dict[str, dict[str, float] | str] = {}
    stand_ins = reference_images(ir, vi) if references else {}
    for row in references:
        out[row] = _score(compute, stand_ins[row], ir, vi, conv, names)
    for method, path in task.fused.items():
        try:
            fused = read_gray(path)
        except ImageReadError as err:
            out[method] = f"{path}: {err.reason}"
            continue
        if fused.shape != ir.shape:
            shapes = f"fused {path.name} is {_size(fused.shape)}, sources are {_size(ir.shape)} (WxH)"
            out[method] = f"size mismatch: {shapes}"
            continue
        out[method] = _score(compute, fused, ir, vi, conv, names)
    return out


def _init_worker() -> None:
    """Keep each pool process on one thread (OpenCV and, if loaded, torch): the pool is the parallelism."""
    import sys

    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _run_task(args: tuple[PairTask, str, str, tuple[str, ...], tuple[str, ...]]) -> tuple[str, dict]:
    task, convention, impl, metrics, references = args
    return task.name, evaluate_task(task, convention, impl, metrics, references)


def _nonfinite_text(values: Mapping[str, float]) -> str | None:
    """Which values of one image JSON writes as null, and why they are not numbers; None when all are finite."""
    undefined = [k for k, v in values.items() if math.isnan(v)]
    infinite = [f"{k} = {'+' if v > 0 else '-'}inf" for k, v in values.items() if math.isinf(v)]
    parts = []
    if undefined:
        parts.append(f"{', '.join(undefined)} undefined (NaN: a correlation with a constant image, e.g. a constant "
                     "fused image, or for SCD a fused image equal to a source)")
    if infinite:
        parts.append(f"{', '.join(infinite)} (MSE 0: the fused image equals both sources; -inf: a black fused image)")
    return "; ".join(parts) or None


def _nonfinite_notes(method: str, per_image: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One note per kind of non-finite result of ``method``, naming its images (the first five)."""
    groups: dict[str, list[str]] = {}
    for name, values in per_image.items():
        text = _nonfinite_text(values)
        if text:
            groups.setdefault(text, []).append(name)
    notes = []
    for text, names in groups.items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        notes.append(f"[{method}] {shown}: {text}; null in JSON, left out of the mean")
    return notes


def evaluate_folders(
    ir_dir: str | os.PathLike,
    vi_dir: str | os.PathLike,
    fused_dirs: Mapping[str, str | os.PathLike],
    convention: Convention | str = Convention.PAPER,
    workers: int = 0,
    impl: str = "fast",
    progress: bool = False,
    metrics: Sequence[str] | str | None = None,
    references: bool = False,
) -> FusionEvaluation:
    """Evaluate every method's fused folder against the source folders.

    Args:
        ir_dir: infrared sources.
        vi_dir: visible sources.
        fused_dirs: method name -> fused folder (order kept in the result); may be empty with ``references``.
        convention: ``paper``, ``cddfuse`` or ``tdfusion``.
        workers: processes in the pool; 0 evaluates in the calling process.
        impl: ``"fast"`` (default) or ``"direct"``.
        progress: show a tqdm bar on stderr.
        metrics: names (see :mod:`metrics.catalog`), ``"all"``, or None for the six of Table I.
        references: also score the rows of :data:`REFERENCES` (before the methods).

    Returns:
        A :class:`FusionEvaluation`; failures are recorded in it, never raised.

    Raises:
        FileNotFoundError, ValueError, OSError: see :func:`plan_pairs`; ValueError for an unknown convention,
            implementation or metric, a method named like a reference row, or nothing to evaluate.
    """
    conv = Convention.parse(convention)
    names = parse_metrics(metrics)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    refs = REFERENCES if references else ()
    clash = sorted(set(refs) & set(fused_dirs))
    if clash:
        raise ValueError(f"method name {clash[0]!r} is taken by a reference row; name the folder differently")
    if not fused_dirs and not refs:
        raise ValueError("nothing to evaluate: give a fused folder or ask for the reference rows")
    tasks, failed, notes = plan_pairs(ir_dir, vi_dir, fused_dirs, refs)
    rows = [*refs, *fused_dirs]
    result = FusionEvaluation(conv, rows, {m: {} for m in rows}, failed, notes, names, list(refs))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="metrics", unit="pair", dynamic_ncols=True)

    def record(name: str, outcome: Mapping[str, dict[str, float] | str]) -> None:
        for method, value in outcome.items():
            if isinstance(value, str):
                result.failed[method][name] = value
            else:
                result.per_image[method][name] = value
        if bar is not None:
            bar.update(1)

    jobs = [(task, conv.value, impl, names, refs) for task in tasks]
    if workers <= 0 or len(jobs) <= 1:
        for job in jobs:
            record(*_run_task(job))
    else:
        # Not "fork": the parent may already run OpenCV / OpenMP thread pools, which a forked child can inherit in a
        # locked state (a hang). A fork server or fresh interpreters start clean.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker)
        with pool:
            futures = [pool.submit(_run_task, job) for job in jobs]
            for future in as_completed(futures):
                record(*future.result())
    if bar is not None:
        bar.close()

    for method in result.methods:
        result.per_image[method] = dict(sorted(result.per_image[method].items()))
        notes += _nonfinite_notes(method, result.per_image[method])
    return result
