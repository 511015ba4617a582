"""Evaluate folders of fused images against folders of source pairs (Table I of the paper).

Files are paired by stem (``ir/00004N.png`` with ``vi/00004N.jpg`` and ``fused/00004N.bmp``). Every problem with one
image (missing fused file, size mismatch, empty, truncated or non-image file, two files with one stem) is recorded
as a one-line reason for that (method, image) and the image is left out of that method's means; all other images
are still evaluated. Pairs run in a process pool (``workers > 0``, started with "forkserver" or "spawn", so a script
calling :func:`evaluate_folders` with workers needs the usual ``if __name__ == "__main__":`` guard) or in the calling
process (``workers = 0``).
"""
from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import direct, fast
from .conventions import Convention
from .imageio import ImageReadError, list_images, read_gray
from .report import json_number

METRIC_NAMES = ("EN", "SF", "CC", "VIF", "Qabf", "SSIM")
IMPLEMENTATIONS = {"fast": fast.fusion_metrics, "direct": direct.fusion_metrics}


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
class FusionEvaluation:
    """Per-image metrics and failures of every method, plus the convention they were computed with.

    Attributes:
        convention: how the two sources were combined.
        methods: method names in the order given.
        per_image: method -> image name -> metric -> value (only images that were evaluated).
        failed: method -> image name -> one-line reason (images left out of that method's means).
        notes: further one-line remarks (e.g. fused files without sources, undefined values), for stderr.
    """

    convention: Convention
    methods: list[str]
    per_image: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def means(self) -> dict[str, dict[str, float]]:
        """Method -> metric -> mean over the evaluated images (NaN values left out; NaN if none is left)."""
        return {method: mean_metrics(self.per_image.get(method, {})) for method in self.methods}

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
        """CSV header ``method,image,EN,...`` and rows: every evaluated image, then one ``mean`` row per method."""
        means = self.means()
        rows: list[list] = [
            [m, name, *(values[k] for k in METRIC_NAMES)]
            for m in self.methods
            for name, values in self.per_image[m].items()
        ]
        rows += [[m, "mean", *(means[m][k] for k in METRIC_NAMES)] for m in self.methods]
        return ["method", "image", *METRIC_NAMES], rows

    def to_json(self) -> dict:
        """The JSON document: ``{"convention", "methods": {M: {"per_image", "mean"}}, "failed", "counts"}``.

        NaN values become ``null``.
        """
        means = self.means()
        return {
            "convention": self.convention.value,
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
        }


def mean_metrics(per_image: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over images, leaving NaN out; NaN when no finite value is left."""
    out = {}
    for metric in METRIC_NAMES:
        values = np.array([v[metric] for v in per_image.values() if metric in v], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[metric] = float(values.mean()) if values.size else math.nan
    return out


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def plan_pairs(
    ir_dir: str | os.PathLike, vi_dir: str | os.PathLike, fused_dirs: Mapping[str, str | os.PathLike]
) -> tuple[list[PairTask], dict[str, dict[str, str]], list[str]]:
    """Pair files by stem and find what is missing or ambiguous before anything is read.

    Args:
        ir_dir: folder of infrared sources.
        vi_dir: folder of visible sources.
        fused_dirs: method name -> folder of fused images.

    Returns:
        ``(tasks, failed, notes)``: one task per name that has both sources, method -> name -> reason for pairs that
        cannot be evaluated, and remarks for stderr (e.g. a fused folder with no images at all).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: the source folders have no image in common.
    """
    folders = [("infrared", ir_dir), ("visible", vi_dir), *[(f"fused ({m})", d) for m, d in fused_dirs.items()]]
    for label, folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
    ir_files, ir_dups = list_images(ir_dir)
    vi_files, vi_dups = list_images(vi_dir)
    failed: dict[str, dict[str, str]] = {m: {} for m in fused_dirs}
    notes: list[str] = []
    names = sorted(set(ir_files) | set(vi_files) | set(ir_dups) | set(vi_dups))
    if not names:
        raise ValueError(f"no images found in {ir_dir} or {vi_dir}")

    fused_files = {}
    for method, folder in fused_dirs.items():
        files, dups = list_images(folder)
        fused_files[method] = (files, dups)
        if not files and not dups:
            notes.append(f"[{method}] fused folder {folder} contains no images")
        extra = sorted(set(files) - set(names))
        if extra:
            example = files[extra[0]].name
            notes.append(f"[{method}] {len(extra)} fused image(s) without sources ignored (e.g. {example})")

    tasks = []
    for name in names:
        source_problem = None
        sources = [("infrared", ir_files, ir_dups, ir_dir), ("visible", vi_files, vi_dups, vi_dir)]
        for label, files, dups, folder in sources:
            if name in dups:
                source_problem = f"ambiguous {label} source: {', '.join(p.name for p in dups[name])}"
            elif name not in files:
                source_problem = f"no {label} source ({name}.* not in {folder})"
            if source_problem:
                break
        task_fused = {}
        for method, folder in fused_dirs.items():
            files, dups = fused_files[method]
            if source_problem:
                failed[method][name] = source_problem
            elif name in dups:
                failed[method][name] = f"ambiguous fused image: {', '.join(p.name for p in dups[name])}"
            elif name not in files:
                failed[method][name] = f"missing fused image ({name}.* not in {folder})"
            else:
                task_fused[method] = files[name]
        if not source_problem and task_fused:
            tasks.append(PairTask(name, ir_files[name], vi_files[name], task_fused))
    return tasks, failed, notes


def evaluate_task(
    task: PairTask, convention: Convention | str, impl: str = "fast"
) -> dict[str, dict[str, float] | str]:
    """Read one source pair and every method's fused image, and compute the six metrics.

    Args:
        task: the files of one image name.
        convention: source-combination convention.
        impl: ``"fast"`` or ``"direct"``.

    Returns:
        method -> metrics dict, or method -> one-line reason when that fused image could not be evaluated.
    """
    compute = IMPLEMENTATIONS[impl]
    try:
        ir = read_gray(task.ir)
    except ImageReadError as err:
        return dict.fromkeys(task.fused, f"infrared source {task.ir}: {err}")
    try:
        vi = read_gray(task.vi)
    except ImageReadError as err:
        return dict.fromkeys(task.fused, f"visible source {task.vi}: {err}")
    if ir.shape != vi.shape:
        reason = f"sources differ in size: infrared {_size(ir.shape)}, visible {_size(vi.shape)} (WxH)"
        return dict.fromkeys(task.fused, reason)
    out: dict[str, dict[str, float] | str] = {}
    for method, path in task.fused.items():
        try:
            fused = read_gray(path)
        except ImageReadError as err:
            out[method] = f"{path}: {err}"
            continue
        if fused.shape != ir.shape:
            shapes = f"fused {path.name} is {_size(fused.shape)}, sources are {_size(ir.shape)} (WxH)"
            out[method] = f"size mismatch: {shapes}"
            continue
        try:
            out[method] = compute(fused, ir, vi, convention)
        except Exception as err:  # one bad image must not stop the others
            out[method] = f"metric computation failed: {type(err).__name__}: {err}"
    return out


def _init_worker() -> None:
    """Keep each pool process on one thread: the pool is the parallelism."""
    import cv2

    cv2.setNumThreads(1)


def _run_task(args: tuple[PairTask, str, str]) -> tuple[str, dict]:
    task, convention, impl = args
    return task.name, evaluate_task(task, convention, impl)


def evaluate_folders(
    ir_dir: str | os.PathLike,
    vi_dir: str | os.PathLike,
    fused_dirs: Mapping[str, str | os.PathLike],
    convention: Convention | str = Convention.PAPER,
    workers: int = 0,
    impl: str = "fast",
    progress: bool = False,
) -> FusionEvaluation:
    """Evaluate every method's fused folder against the source folders.

    Args:
        ir_dir: infrared sources.
        vi_dir: visible sources.
        fused_dirs: method name -> fused folder (order kept in the result).
        convention: ``paper``, ``cddfuse`` or ``tdfusion``.
        workers: processes in the pool; 0 evaluates in the calling process.
        impl: ``"fast"`` (default) or ``"direct"``.
        progress: show a tqdm bar on stderr.

    Returns:
        A :class:`FusionEvaluation`; failures are recorded in it, never raised.

    Raises:
        FileNotFoundError, ValueError: see :func:`plan_pairs`; ValueError for an unknown convention or impl.
    """
    conv = Convention.parse(convention)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    tasks, failed, notes = plan_pairs(ir_dir, vi_dir, fused_dirs)
    result = FusionEvaluation(conv, list(fused_dirs), {m: {} for m in fused_dirs}, failed, notes)

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

    jobs = [(task, conv.value, impl) for task in tasks]
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
        for name, values in result.per_image[method].items():
            undefined = [k for k, v in values.items() if not math.isfinite(v)]
            if undefined:
                listed = ", ".join(undefined)
                notes.append(f"[{method}] {name}: {listed} undefined (e.g. a constant image); left out of the mean")
    return result
