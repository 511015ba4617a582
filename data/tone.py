"""Histogram matching of infrared images onto reference images (an extension, not in the paper).

MFNet's raw thermal images and MSRS's infrared images are the same scenes under different tone curves: MFNet's are
mid-gray with low contrast (mean about 70 of 255), MSRS's were contrast-enhanced into dark backgrounds with bright
warm objects (mean about 20). A model trained on the first and evaluated on the second meets a domain shift.
``data.ir_tone_reference`` (training) and ``scripts.pretrain_segmenter --ir-tone-reference`` map every training
infrared image, by the monotone look-up table of histogram specification, onto the pooled histogram of a few
reference images (docs/DECISIONS.md D14: the 4 MSRS *training-split* infrared images in ``../shared/data/MSRS``,
named file by file, since most of that folder's images are test scenes; no evaluation image is used).

Images are float32 in [0, 1] as :mod:`data.io` reads them; the histograms have 256 bins (8-bit files map exactly;
16-bit files are rounded to 256 levels first, so their matched images have at most 256 values).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.io import list_images, luminance, read_image

PathLike = str | os.PathLike
LEVELS = 256
MIN_REFERENCE_LEVELS = 16  # fewer occupied levels than this: the matched images lose most of their tones

logger = logging.getLogger(__name__)


def _levels(image: np.ndarray) -> np.ndarray:
    """[0, 1] float image → integer levels 0..255 (exact for images read from 8-bit files)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * (LEVELS - 1)), 0, LEVELS - 1).astype(np.int64)


def level_histogram(images: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled pixel counts per level of [0, 1] gray images: (256,) float64."""
    counts = np.zeros(LEVELS, dtype=np.float64)
    for image in images:
        counts += np.bincount(_levels(image).ravel(), minlength=LEVELS)
    return counts


def matching_table(source_counts: np.ndarray, reference_counts: np.ndarray) -> np.ndarray:
    """Histogram specification: the monotone map of levels that carries the source's distribution onto the reference's.

    Each source level goes to the reference value at the same cumulative share, taken at the middle of the level's
    own share, cdf(l) − count(l)/2, so a level holding the whole image lands on the reference's median; the reference's
    quantile function is linear between its occupied levels. Returns (256,) float64 values in [0, 1].
    """
    source = np.asarray(source_counts, dtype=np.float64)
    reference = np.asarray(reference_counts, dtype=np.float64)
    if source.shape != (LEVELS,) or reference.shape != (LEVELS,):
        raise ValueError(f"histograms must have {LEVELS} bins, got {source.shape} and {reference.shape}")
    if source.sum() <= 0 or reference.sum() <= 0:
        raise ValueError("histogram matching needs non-empty histograms")
    source_share = (np.cumsum(source) - source / 2) / source.sum()
    occupied = np.flatnonzero(reference)
    reference_share = (np.cumsum(reference) - reference / 2)[occupied] / reference.sum()
    values = np.interp(source_share, reference_share, occupied.astype(np.float64))
    return values / (LEVELS - 1)


class ToneReference:
    """The pooled 256-bin histogram of reference gray images, and the matching of other images onto it.

    Args:
        paths: image files, or folders whose images (every file :func:`data.io.list_images` finds) all count;
            relative paths are relative to the working directory. Colour files count by their luminance.
    Raises:
        ValueError: no image among the paths; :class:`data.io.ImageReadError` for a file that cannot be read.
    """

    def __init__(self, paths: PathLike | Sequence[PathLike]) -> None:
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files: list[Path] = []
        for item in map(Path, items):
            if item.is_dir():
                files.extend(sorted(list_images(item).files.values()))
            elif item.is_file():
                files.append(item)
            else:
                raise FileNotFoundError(f"ir_tone_reference: '{item}' is neither an image file nor a folder")
        if not files:
            raise ValueError(f"ir_tone_reference: no images in {[str(p) for p in items]}")
        self.files = files
        self.counts = level_histogram([luminance(read_image(f)) for f in files])
        occupied = int(np.count_nonzero(self.counts))
        if occupied < MIN_REFERENCE_LEVELS:
            logger.warning("ir_tone_reference: the reference images use only %d of %d levels, so every matched image "
                           "will have at most %d values", occupied, LEVELS, occupied)

    def match(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W) float in [0, 1] with its histogram mapped onto the reference's: (H, W) float32."""
        levels = _levels(image)
        table = matching_table(np.bincount(levels.ravel(), minlength=LEVELS), self.counts)
        return table[levels].astype(np.float32)

    def __repr__(self) -> str:
        return f"ToneReference({len(self.files)} images: {', '.join(f.name for f in self.files[:4])}...)"
