"""Where training samples come from in an image: random crops with flips, tiles, and the release's contrast-filtered
patches (release row 10). Plain NumPy on (H, W) arrays; randomness from a torch generator."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import cv2
import numpy as np
import torch

DEFAULT_IGNORE_INDEX = 255


def _pair_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def pad_to_min_size(
    image: np.ndarray, size: int | Sequence[int], *, mode: Literal["reflect", "constant"] = "reflect", value: float = 0
) -> np.ndarray:
    """Pad the first two axes of ``image`` (evenly on both sides) up to at least ``size`` = (h, w) or an int."""
    ph, pw = _pair_size(size)
    h, w = image.shape[:2]
    dh, dw = max(ph - h, 0), max(pw - w, 0)
    if dh == 0 and dw == 0:
        return image
    widths = [(dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)] + [(0, 0)] * (image.ndim - 2)
    if mode == "constant":
        return np.pad(image, widths, mode="constant", constant_values=value)
    return np.pad(image, widths, mode="reflect")


def check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    """``scale_range`` as (lo, hi) floats; ValueError unless it holds two numbers with 0 < lo ≤ hi."""
    values = tuple(float(v) for v in scale_range)
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {tuple(scale_range)}")
    return values


def random_rescale(
    ir: np.ndarray,
    vi: np.ndarray,
    label: np.ndarray | None,
    scale_range: Sequence[float],
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The same random resize of ir, vi and label by a factor drawn uniformly from ``scale_range`` = (lo, hi).

    The usual scale augmentation of segmentation training (DeepLab draws from 0.5 to 2). Images are resized
    bilinearly, labels by nearest neighbour (class indices stay class indices). One draw from ``generator``.

    Args:
        ir, vi: (H, W) float32 images; label: (H, W) int64 or None.
        scale_range: 0 < lo ≤ hi.

    Returns:
        (ir, vi, label) of shape (round(s·H), round(s·W)), at least 1 × 1.
    """
    lo, hi = check_scale_range(scale_range)
    factor = lo + (hi - lo) * float(torch.rand(1, generator=generator))
    height, width = ir.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))  # OpenCV's (width, height)
    if size == (width, height):
        return ir, vi, label
    ir, vi = (cv2.resize(a, size, interpolation=cv2.INTER_LINEAR) for a in (ir, vi))
    if label is not None:  # OpenCV's nearest-neighbour resize takes at most 32-bit integers
        label = cv2.resize(label.astype(np.int32), size, interpolation=cv2.INTER_NEAREST).astype(label.dtype)
    return ir, vi, label


def random_crop_flip(
    ir: np.ndarray,
    vi: np.ndarray,
    label: np.ndarray | None = None,
    size: int | Sequence[int] = 128,
    *,
    flips: bool = True,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    generator: torch.Generator | None = None,
    vertical: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The same random crop and random horizontal / vertical flips for ir, vi and label.

    Args:
        ir, vi: (H, W) float32 images.
        label: (H, W) int64 or None.
        size: crop size, int or (h, w). Smaller images are reflect-padded first (label padded with ignore_index).
        flips: draw the two flips (each with probability 1/2); the random draws are made either way, so turning
            flips off does not change the crop positions.
        vertical: allow the vertical flip (False: horizontal flips only, as for road-scene segmentation).
        generator: torch generator; None uses the global torch RNG.

    Returns:
        (ir, vi, label) contiguous crops of shape (h, w).
    """
    ph, pw = _pair_size(size)
    ir = pad_to_min_size(ir, (ph, pw))
    vi = pad_to_min_size(vi, (ph, pw))
    if label is not None:
        label = pad_to_min_size(label, (ph, pw), mode="constant", value=ignore_index)
    height, width = ir.shape[:2]
    top = int(torch.randint(0, height - ph + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - pw + 1, (1,), generator=generator))
    coins = torch.rand(2, generator=generator)
    hflip, vflip = flips and bool(coins[0] < 0.5), flips and vertical and bool(coins[1] < 0.5)

    def take(array: np.ndarray) -> np.ndarray:
        out = array[top:top + ph, left:left + pw]
        if hflip:
            out = out[:, ::-1]
        if vflip:
            out = out[::-1, :]
        return np.ascontiguousarray(out)

    return take(ir), take(vi), (take(label) if label is not None else None)


def random_flips(
    ir: np.ndarray,
    vi: np.ndarray,
    label: np.ndarray | None,
    generator: torch.Generator | None = None,
    vertical: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The same random horizontal and vertical flips (each with probability 1/2) for ir, vi and label.

    ``vertical=False`` drops the upside-down flip only; both coins are drawn either way, so the horizontal flips
    stay those of ``vertical=True`` for the same generator.
    """
    coins = torch.rand(2, generator=generator)

    def flip(array: np.ndarray) -> np.ndarray:
        if coins[0] < 0.5:
            array = array[:, ::-1]
        if vertical and coins[1] < 0.5:
            array = array[::-1, :]
        return np.ascontiguousarray(array)

    return flip(ir), flip(vi), (flip(label) if label is not None else None)


ContrastReference = Literal["p90", "range"]


def patch_spread(patch: np.ndarray, relative_to: ContrastReference = "p90") -> float:
    """Relative 10-90 percentile spread of a patch in [0, 1].

    ``"p90"`` (the release's rule): (p90 - p10) / p90, with an all-dark patch (p90 = 0) counting as spread 0.
    ``"range"``: (p90 - p10) / 1, the spread as a fraction of the [0, 1] data range.
    """
    p10, p90 = np.percentile(patch, [10, 90])
    if relative_to == "range":
        return float(p90 - p10)
    if relative_to != "p90":
        raise ValueError(f"relative_to must be 'p90' or 'range', not {relative_to!r}")
    return float((p90 - p10) / p90) if p90 > 0 else 0.0


def release_patch_origins(
    ir: np.ndarray,
    vi: np.ndarray,
    size: int = 256,
    min_spread: float = 0.1,
    relative_to: ContrastReference = "p90",
) -> list[tuple[int, int]]:
    """Top-left corners of the release's kept patches; see :func:`cut_release_patches`."""
    height, width = ir.shape[:2]
    origins = []
    for top in range(0, height - size + 1, size):
        for left in range(0, width - size + 1, size):
            window = (slice(top, top + size), slice(left, left + size))
            if (patch_spread(ir[window], relative_to) >= min_spread
                    and patch_spread(vi[window], relative_to) >= min_spread):
                origins.append((top, left))
    return origins


class ReleasePatch(NamedTuple):
    """One kept patch: its top-left corner and the (size, size) crops."""

    top: int
    left: int
    ir: np.ndarray
    vi: np.ndarray
    label: np.ndarray | None


def cut_release_patches(
    ir: np.ndarray,
    vi: np.ndarray,
    label: np.ndarray | None = None,
    size: int = 256,
    min_spread: float = 0.1,
    relative_to: ContrastReference = "p90",
) -> list[ReleasePatch]:
    """Cut an image pair into the release's training patches (release row 10).

    Non-overlapping ``size`` x ``size`` windows on a grid from the top-left corner (stride = size; a remainder
    narrower than ``size`` at the right / bottom is dropped, and an image smaller than ``size`` gives none).
    A window is **skipped when either** the infrared or the visible patch is low-contrast, i.e. kept only when
    both have :func:`patch_spread` >= ``min_spread``. The release measures the spread relative to the patch's own
    90th percentile, (p90 - p10) / p90 (``relative_to="p90"``, default); ``"range"`` measures it as a fraction
    of the [0, 1] range instead. Deviation: the release keeps all-dark patches (its 0/0 gives NaN, which never
    compares below the threshold); here they are skipped.

    Args:
        ir, vi: (H, W) float32 in [0, 1] (vi is the visible luminance).
        label: (H, W) int64 or None.

    Returns:
        Kept patches in row-major order.
    """
    out = []
    for top, left in release_patch_origins(ir, vi, size, min_spread, relative_to):
        window = (slice(top, top + size), slice(left, left + size))
        out.append(ReleasePatch(top, left, ir[window].copy(), vi[window].copy(),
                                None if label is None else label[window].copy()))
    return out


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # SplitMix-style mixing keeps neighbouring (epoch, index) seeds far apart.
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    value ^= value >> 31
    return value & (2**63 - 1)
