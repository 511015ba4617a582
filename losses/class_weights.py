"""Class weights for L_seg's cross-entropy: an extension, not in the paper (its L_seg is plain cross-entropy).

On small real sets the labels can be dominated by one class (MFNet: 93.7 % ``unlabelled``), and a segmenter trained
with plain cross-entropy then predicts that class everywhere, which leaves the class-wise attribution of Eq. 5–8
with one region (docs/RESULTS.md, "A probe of the collapse"). Median-frequency weighting (Eigen & Fergus, 2015)
weights class c by median(f)/f_c, f the classes' pixel shares in the training labels. The milder log weighting
of ENet (Paszke et al., 2016), 1 / ln(1.02 + f_c), is the one MFNet's segmentation papers use (RTFNet and its
successors): on MFNet it weights the rarest class about 30 times the background, median-frequency about 370 times.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SEG_CLASS_WEIGHTINGS = ("median", "log")
MEDIAN_WEIGHT_CAP = 50.0
LOG_WEIGHT_OFFSET = 1.02  # ENet's c: the largest weight is 1 / ln(1.02) ≈ 50.5, for a class with no pixels


def median_frequency_weights(freq: np.ndarray, cap: float = MEDIAN_WEIGHT_CAP) -> torch.Tensor:
    """median(f)/f_c per class (the median over the classes present), at most ``cap``; absent classes get ``cap``.
    freq: (C,) pixel shares. Returns (C,) float32."""
    freq = np.asarray(freq, dtype=np.float64)
    present = freq[freq > 0]
    if present.size == 0:
        raise ValueError("median-frequency class weights need labelled pixels; the training labels have none")
    weights = np.where(freq > 0, np.median(present) / np.maximum(freq, 1e-300), cap)
    return torch.tensor(np.minimum(weights, cap), dtype=torch.float32)


def log_frequency_weights(freq: np.ndarray, offset: float = LOG_WEIGHT_OFFSET) -> torch.Tensor:
    """1 / ln(offset + f_c) per class (ENet's weighting). freq: (C,) pixel shares. Returns (C,) float32."""
    freq = np.asarray(freq, dtype=np.float64)
    if freq.sum() <= 0:
        raise ValueError("log-frequency class weights need labelled pixels; the training labels have none")
    return torch.tensor(1.0 / np.log(offset + freq), dtype=torch.float32)


def check_seg_class_weights(value: object) -> None:
    """Raise a ValueError unless ``value`` is None, one of :data:`SEG_CLASS_WEIGHTINGS` or a list of numbers ≥ 0."""
    if value is None or value in SEG_CLASS_WEIGHTINGS:
        return
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value):
        return
    raise ValueError(f"loss.seg_class_weights must be null, one of {SEG_CLASS_WEIGHTINGS} or a list of "
                     f"non-negative numbers (one per class), got {value!r}")


def resolve_seg_class_weights(value: object, num_classes: int,
                              class_pixels: np.ndarray | None = None) -> torch.Tensor | None:
    """The (C,) weights a setting stands for: None (plain cross-entropy), ``median`` or ``log`` (from
    ``class_pixels``, the training labels' pixel count per class, e.g.
    ``PairedFolderDataset.label_scan.class_pixels``) or an explicit list of C numbers."""
    check_seg_class_weights(value)
    if value is None:
        return None
    if value in SEG_CLASS_WEIGHTINGS:
        if class_pixels is None:
            raise ValueError(f"loss.seg_class_weights: {value} needs the training labels' class pixel counts")
        counts = np.asarray(class_pixels, dtype=np.float64)
        freq = counts / max(counts.sum(), 1.0)
        return median_frequency_weights(freq) if value == "median" else log_frequency_weights(freq)
    if len(value) != num_classes:
        raise ValueError(f"loss.seg_class_weights has {len(value)} values but the dataset has {num_classes} classes")
    return torch.tensor([float(v) for v in value], dtype=torch.float32)
