"""Evaluation metrics of the paper: infrared-visible fusion metrics (Table I) and segmentation scores (Table II).

Fusion metrics (docs/METRICS.md and ``docs/METRICS.md``) on gray images (H, W) with values in [0, 255]: the six of
Table I (EN, SF, CC, VIF, Qabf, SSIM) and the rest of the community evaluators' set (SD, AG, MI, MSE, PSNR, SCD).

- :mod:`metrics.catalog`: metric names, which way each is better, ``--metrics`` selections;
- :mod:`metrics.direct`: written from the definitions with plain 2-D convolutions (the yardstick, slow);
- :mod:`metrics.fast`: the same numbers by exact reformulations (separable filters, box filters, vectorised Qabf);
  this is what :func:`fusion_metrics` and the CLI use by default;
- :mod:`metrics.conventions`: how the two sources are combined (``paper``, ``cddfuse``, ``tdfusion``);
- :mod:`metrics.evaluate`: folders of fused images, pairing by stem, reference rows, failures per image, pool;
- :mod:`metrics.report`: tables with best / second-best marks and better-direction arrows, published rows,
  JSON / CSV output;
- :mod:`metrics.cli`: the ``eval_metrics.py`` command line.

Images are read by :mod:`data.io` (the project's one IO module), fusion metrics with
:func:`data.io.read_gray_0_255_metric_convention`, the literature's convention (OpenCV BGR -> float32 -> Y ->
round half to even).

Segmentation (Table II): :mod:`metrics.segmentation`.

Command line: ``python eval_metrics.py --help`` and ``python eval_metrics.py seg --help``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data.io import ImageReadError, read_gray_0_255_metric_convention

from . import direct, fast
from .catalog import ALL_METRICS, METRICS, TABLE1_METRICS
from .conventions import Convention
from .evaluate import METRIC_NAMES, REFERENCES, FusionEvaluation, evaluate_folders
from .segmentation import class_scores, confusion_matrix, evaluate_seg_folders, summarise

__all__ = [
    "ALL_METRICS",
    "METRICS",
    "METRIC_NAMES",
    "REFERENCES",
    "TABLE1_METRICS",
    "Convention",
    "FusionEvaluation",
    "ImageReadError",
    "class_scores",
    "confusion_matrix",
    "direct",
    "evaluate_folders",
    "evaluate_seg_folders",
    "fast",
    "fusion_metrics",
    "read_gray_0_255_metric_convention",
    "summarise",
]


def fusion_metrics(
    fused: np.ndarray,
    ir: np.ndarray,
    vi: np.ndarray,
    convention: Convention | str = Convention.PAPER,
    impl: str = "fast",
    metrics: str | Sequence[str] | None = None,
) -> dict[str, float]:
    """Fusion metrics of one fused image: by default EN, SF, CC, VIF, Qabf and SSIM (Table I).

    Args:
        fused: (H, W) fused gray image in [0, 255] (e.g. from :func:`read_gray_0_255_metric_convention`).
        ir: (H, W) infrared source.
        vi: (H, W) visible source.
        convention: ``paper`` (default), ``cddfuse`` or ``tdfusion``.
        impl: ``"fast"`` (default) or ``"direct"``.
        metrics: names from :data:`METRICS`, ``"all"`` (:data:`ALL_METRICS`), or None for Table I's six.

    Returns:
        metric name -> value, in the order asked for.
    """
    if impl == "fast":
        return fast.fusion_metrics(fused, ir, vi, convention, metrics)
    if impl == "direct":
        return direct.fusion_metrics(fused, ir, vi, convention, metrics)
    raise ValueError(f"unknown implementation {impl!r}; choose fast or direct")
