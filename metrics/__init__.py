"""Evaluation metrics of the paper: infrared-visible fusion metrics (Table I) and segmentation scores (Table II).

Fusion metrics (SPEC section 8) on gray images (H, W) with values in [0, 255]:

- :mod:`metrics.direct`: written from the definitions with plain 2-D convolutions (the yardstick, slow);
- :mod:`metrics.fast`: the same numbers by exact reformulations (separable filters, box filters, vectorised Qabf);
  this is what :func:`fusion_metrics` and the CLI use by default;
- :mod:`metrics.conventions`: how the two sources are combined (``paper``, ``cddfuse``, ``tdfusion``);
- :mod:`metrics.imageio`: the literature's reading convention (OpenCV BGR -> float32 -> Y -> round half to even);
- :mod:`metrics.evaluate`: folders of fused images, pairing by stem, failures per image, process pool;
- :mod:`metrics.report`: tables with best / second-best marks, published rows, JSON / CSV output.

Segmentation (Table II): :mod:`metrics.segmentation`.

Command line: ``python eval_metrics.py --help`` and ``python eval_metrics.py seg --help``.
"""
from __future__ import annotations

import numpy as np

from . import direct, fast
from .conventions import Convention
from .evaluate import METRIC_NAMES, FusionEvaluation, evaluate_folders
from .imageio import ImageReadError, read_gray
from .segmentation import class_scores, confusion_matrix, evaluate_seg_folders, summarise

__all__ = [
    "METRIC_NAMES",
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
    "read_gray",
    "summarise",
]


def fusion_metrics(
    fused: np.ndarray,
    ir: np.ndarray,
    vi: np.ndarray,
    convention: Convention | str = Convention.PAPER,
    impl: str = "fast",
) -> dict[str, float]:
    """EN, SF, CC, VIF, Qabf and SSIM of one fused image.

    Args:
        fused: (H, W) fused gray image in [0, 255] (e.g. from :func:`read_gray`).
        ir: (H, W) infrared source.
        vi: (H, W) visible source.
        convention: ``paper`` (default), ``cddfuse`` or ``tdfusion``.
        impl: ``"fast"`` (default) or ``"direct"``.

    Returns:
        metric name -> value.
    """
    if impl == "fast":
        return fast.fusion_metrics(fused, ir, vi, convention)
    if impl == "direct":
        return direct.fusion_metrics(fused, ir, vi, convention)
    raise ValueError(f"unknown implementation {impl!r}; choose fast or direct")
