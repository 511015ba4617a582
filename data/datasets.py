"""Paired infrared/visible datasets with optional segmentation labels.

Every dataset returns a dict per sample::

    {"ir": (1, H, W) float32 in [0, 1],       # infrared (luminance of a colour file)
     "vi": (1, H, W) float32 in [0, 1],       # visible luminance (Y of YCrCb)
     "label": (H, W) int64,                   # only when the dataset has labels; out-of-range -> ignore_index
     "name": str}                             # file stem (patch id in "release_patches" mode)

Modes:

- ``"random_crop"`` (the paper's training): a random ``patch_size`` crop (default 128) with random horizontal and
  vertical flips, identical for ir, vi and label. Images smaller than the patch are reflect-padded (the label is
  padded with ``ignore_index``). Randomness comes from torch: with ``seed`` set, sample ``i`` of epoch ``e``
  (see :meth:`PairedFolderDataset.set_epoch`) uses its own generator seeded from ``(seed, e, i)``, so the samples
  do not depend on worker count or order; without a seed the global torch RNG is used, which the DataLoader seeds
  per worker.
- ``"release_patches"`` (SPEC section 6 row 10): the release's pre-cut patches, indexed as (image, patch) pairs;
  see :func:`cut_release_patches`. No flips (the release has none).
- ``"full"``: whole images (evaluation, testing).
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from data.io import PairError, load_fusion_pair, read_label, to_tensor_1hw

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
Mode = Literal["random_crop", "release_patches", "full"]
MODES: tuple[str, ...] = ("random_crop", "release_patches", "full")

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_IGNORE_INDEX = 255
DEFAULT_PATCH_SIZE = {"random_crop": 128, "release_patches": 256}

FMB_CLASSES: tuple[str, ...] = (
    "unlabeled", "road", "sidewalk", "building", "lamp", "sign", "vegetation", "sky",
    "person", "car", "truck", "bus", "motorcycle", "bicycle", "pole",
)
MSRS_CLASSES: tuple[str, ...] = (
    "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
)
CLASSES_FILE = "classes.yaml"


class LabelRangeWarning(UserWarning):
    """Label files hold values outside 0..num_classes-1; they were mapped to the ignore index."""


class UnpairedFilesWarning(UserWarning):
    """Some files have no partner (or no label) and were left out of a dataset."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset folder.

    Attributes:
        kind: short category, e.g. ``missing-partner``, ``missing-label``, ``duplicate-stem``, ``empty-folder``,
            ``missing-folder``, ``unreadable``, ``size-mismatch``, ``label-range``, ``absent-class``.
        path: the file or folder the problem is about.
        detail: what is wrong, in words.
    """

    kind: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass(frozen=True)
class PairPaths:
    """The files of one sample; ``name`` is the common file stem."""

    name: str
    ir: Path
    vi: Path
    label: Path | None = None


# ----------------------------------------------------------------------------------------------------------------
# Pairing
# ----------------------------------------------------------------------------------------------------------------


def list_images(folder: PathLike) -> tuple[dict[str, Path], list[Problem]]:
    """Map file stem -> image path for the image files directly inside ``folder`` (extensions case-insensitive).

    Returns:
        (stems, problems): problems report a missing or empty folder and stems present under two extensions
        (the first in sorted order is kept).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}, [Problem("missing-folder", str(folder), "folder does not exist")]
    stems: dict[str, Path] = {}
    problems: list[Problem] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in stems:
            problems.append(Problem("duplicate-stem", str(path),
                                    f"same stem as '{stems[path.stem].name}'; only that file is used"))
            continue
        stems[path.stem] = path
    if not stems:
        problems.append(Problem("empty-folder", str(folder),
                                f"no image files ({', '.join(IMAGE_EXTENSIONS)})"))
    return stems, problems


def pair_files(
    ir_dir: PathLike, vi_dir: PathLike, label_dir: PathLike | None = None
) -> tuple[list[PairPaths], list[Problem]]:
    """Pair infrared, visible (and label) files by stem, with any image extension.

    Returns:
        (pairs, problems): ``pairs`` sorted by name, complete only (ir, vi and, when ``label_dir`` is given,
        label); ``problems`` names every file whose partner is missing, plus folder problems.
    """
    ir_files, problems = list_images(ir_dir)
    vi_files, vi_problems = list_images(vi_dir)
    problems += vi_problems
    label_files: dict[str, Path] = {}
    if label_dir is not None:
        label_files, label_problems = list_images(label_dir)
        problems += label_problems
    pairs: list[PairPaths] = []
    for stem in sorted(set(ir_files) | set(vi_files)):
        ir, vi = ir_files.get(stem), vi_files.get(stem)
        if ir is None:
            problems.append(Problem("missing-partner", str(vi), f"no infrared image named '{stem}.*' in {ir_dir}"))
            continue
        if vi is None:
            problems.append(Problem("missing-partner", str(ir), f"no visible image named '{stem}.*' in {vi_dir}"))
            continue
        label = None
        if label_dir is not None:
            label = label_files.get(stem)
            if label is None:
                problems.append(Problem("missing-label", str(vi), f"no label named '{stem}.*' in {label_dir}"))
                continue
        pairs.append(PairPaths(stem, ir, vi, label))
    for stem in sorted(set(label_files) - set(ir_files) - set(vi_files)):
        problems.append(Problem("missing-partner", str(label_files[stem]),
                                f"label without infrared or visible image named '{stem}.*'"))
    return pairs, problems


# ----------------------------------------------------------------------------------------------------------------
# Classes
# ----------------------------------------------------------------------------------------------------------------


def load_class_names(path: PathLike) -> list[str]:
    """Read a ``classes.yaml``: a YAML list of class names, index = position (``{names: [...]}`` works too)."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle)
    if isinstance(content, Mapping):
        content = content.get("names", content.get("classes"))
    if not isinstance(content, list) or not content or not all(isinstance(n, str | int) for n in content):
        raise ValueError(f"{path}: expected a non-empty YAML list of class names")
    return [str(n) for n in content]


def resolve_class_names(
    class_names: Sequence[str] | PathLike | None = None,
    num_classes: int | None = None,
    search_dirs: Iterable[PathLike] = (),
    default: Sequence[str] | None = None,
) -> list[str] | None:
    """Decide the class list: explicit names (or a path to a classes.yaml) > ``classes.yaml`` in the first of
    ``search_dirs`` that has one > ``default`` (the layout's built-in list) > ``num_classes`` generic names > None.

    Raises:
        ValueError: ``num_classes`` contradicts the chosen names.
    """
    names: list[str] | None = None
    if isinstance(class_names, str | os.PathLike):
        names = load_class_names(class_names)
    elif class_names is not None:
        names = [str(n) for n in class_names]
    else:
        for folder in search_dirs:
            candidate = Path(folder) / CLASSES_FILE
            if candidate.is_file():
                names = load_class_names(candidate)
                break
        else:
            if default is not None:
                names = list(default)
            elif num_classes is not None:
                names = [f"class{i}" for i in range(num_classes)]
    if names is not None and num_classes is not None and num_classes != len(names):
        raise ValueError(f"num_classes={num_classes} but the class list has {len(names)} names: {names}")
    return names


# ----------------------------------------------------------------------------------------------------------------
# Sampling helpers
# ----------------------------------------------------------------------------------------------------------------


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


def random_crop_flip(
    ir: np.ndarray,
    vi: np.ndarray,
    label: np.ndarray | None = None,
    size: int | Sequence[int] = 128,
    *,
    flips: bool = True,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The same random crop and random horizontal / vertical flips for ir, vi and label.

    Args:
        ir, vi: (H, W) float32 images.
        label: (H, W) int64 or None.
        size: crop size, int or (h, w). Smaller images are reflect-padded first (label padded with ignore_index).
        flips: draw the two flips (each with probability 1/2); the random draws are made either way, so turning
            flips off does not change the crop positions.
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
    hflip, vflip = flips and bool(coins[0] < 0.5), flips and bool(coins[1] < 0.5)

    def take(array: np.ndarray) -> np.ndarray:
        out = array[top:top + ph, left:left + pw]
        if hflip:
            out = out[:, ::-1]
        if vflip:
            out = out[::-1, :]
        return np.ascontiguousarray(out)

    return take(ir), take(vi), (take(label) if label is not None else None)


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
    """Cut an image pair into the release's training patches (SPEC section 6, row 10).

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


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    # SplitMix-style mixing keeps neighbouring (epoch, index) seeds far apart.
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    value ^= value >> 31
    return value & (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LabelScan:
    """What a pass over all label files found.

    Attributes:
        files: number of label files read.
        out_of_range: (file name, sorted out-of-range values) for every file holding values outside the classes.
        class_pixels: (num_classes,) pixel count per class over all files.
    """

    files: int = 0
    out_of_range: list[tuple[str, list[int]]] = field(default_factory=list)
    class_pixels: np.ndarray | None = None


class PairedFolderDataset(Dataset):
    """Infrared / visible (/ label) images in three folders, paired by file stem.

    Args:
        ir_dir, vi_dir: image folders; label_dir: class-index label folder or None.
        mode: ``"random_crop"``, ``"release_patches"`` or ``"full"`` (see the module docstring).
        patch_size: crop / patch size; default 128 for random_crop, 256 for release_patches.
        flips: random flips in random_crop mode.
        class_names: list of names or a path to a classes.yaml; otherwise ``classes.yaml`` in ``label_dir`` or
            its parent is used, then ``default_classes``, then ``num_classes`` generic names.
        num_classes: number of classes, when no names are available (checked against the names otherwise).
        ignore_index: value given to label pixels outside 0..num_classes-1 (and to padding); must not be a class.
        seed: makes random_crop samples a function of (seed, epoch, index); None uses the global torch RNG.
        min_spread, contrast_relative_to: release_patches contrast filter (:func:`cut_release_patches`).
        strict: raise on unpaired files instead of warning and leaving them out.
        scan_labels: read all labels once at construction, to warn once about out-of-range values and to
            count class pixels (:attr:`label_scan`); when False a lazy warning is given on the first bad file.
        cache: keep decoded images in memory.
        return_chroma: ("full" mode only) add ``vi_crcb`` and ``ir_crcb`` (2, H, W) chroma (0.5 = neutral for a
            gray file) and ``vi_is_color`` / ``ir_is_color`` (bool tensors) to each sample.
        default_classes: the layout's built-in class list (used by the subclasses).
    """

    layout = "folders"

    def __init__(
        self,
        ir_dir: PathLike,
        vi_dir: PathLike,
        label_dir: PathLike | None = None,
        *,
        mode: Mode = "full",
        patch_size: int | None = None,
        flips: bool = True,
        class_names: Sequence[str] | PathLike | None = None,
        num_classes: int | None = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        seed: int | None = None,
        min_spread: float = 0.1,
        contrast_relative_to: ContrastReference = "p90",
        strict: bool = False,
        scan_labels: bool = True,
        cache: bool = False,
        return_chroma: bool = False,
        default_classes: Sequence[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if return_chroma and mode != "full":
            raise ValueError("return_chroma is only available in 'full' mode")
        self.ir_dir, self.vi_dir = Path(ir_dir), Path(vi_dir)
        self.label_dir = Path(label_dir) if label_dir is not None else None
        self.mode = mode
        self.patch_size = int(patch_size) if patch_size is not None else DEFAULT_PATCH_SIZE.get(mode, 0)
        if mode != "full" and self.patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.flips = flips
        self.ignore_index = int(ignore_index)
        self.seed = seed
        self.epoch = 0
        self.min_spread = float(min_spread)
        self.contrast_relative_to = contrast_relative_to
        self.cache = cache
        self.return_chroma = return_chroma
        self._cache: dict[int, dict[str, Any]] = {}
        self._warned_lazy = False

        search = [self.label_dir, self.label_dir.parent] if self.label_dir is not None else []
        names = resolve_class_names(class_names, num_classes, search, default_classes)
        self.class_names: list[str] = names or []
        self.num_classes: int = len(self.class_names)
        if self.label_dir is not None and not self.class_names:
            raise ValueError(f"labels in {self.label_dir} but the number of classes is unknown: pass class_names or "
                             f"num_classes, or put a {CLASSES_FILE} (a list of names) in the dataset folder")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} is a class index (0..{self.num_classes - 1})")

        self.pairs, self.problems = pair_files(self.ir_dir, self.vi_dir, self.label_dir)
        if not self.pairs:
            details = "; ".join(str(p) for p in self.problems[:3]) or "no files"
            raise ValueError(f"no complete image pairs in {self.ir_dir} / {self.vi_dir}"
                             + (f" / {self.label_dir}" if self.label_dir else "") + f": {details}")
        if self.problems:
            listing = "\n  ".join(str(p) for p in self.problems[:10])
            more = f"\n  ... and {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
            message = f"{len(self.problems)} problem(s) pairing files; {len(self.pairs)} pairs kept:\n  {listing}{more}"
            if strict:
                raise ValueError(message)
            warnings.warn(message, UnpairedFilesWarning, stacklevel=2)

        self.label_scan: LabelScan | None = None
        if self.label_dir is not None and scan_labels:
            self.label_scan = self._scan_labels()

        self._patch_index: list[tuple[int, int, int]] = []
        if mode == "release_patches":
            self._patch_index = self._index_release_patches()

    # -- labels ------------------------------------------------------------------------------------------------

    @property
    def has_labels(self) -> bool:
        return self.label_dir is not None

    def _scan_labels(self) -> LabelScan:
        scan = LabelScan(class_pixels=np.zeros(self.num_classes, dtype=np.int64))
        for pair in self.pairs:
            label = read_label(pair.label)
            scan.files += 1
            valid = (label >= 0) & (label < self.num_classes)
            if not valid.all():
                scan.out_of_range.append((pair.label.name, sorted(int(v) for v in np.unique(label[~valid]))))
            scan.class_pixels += np.bincount(label[valid].ravel(), minlength=self.num_classes)[: self.num_classes]
        if scan.out_of_range:
            first_name, first_values = scan.out_of_range[0]
            warnings.warn(
                f"{len(scan.out_of_range)} of {scan.files} label files in {self.label_dir} hold values outside "
                f"0..{self.num_classes - 1} (first: '{first_name}' with {first_values[:5]}); they are mapped to "
                f"ignore index {self.ignore_index}",
                LabelRangeWarning,
                stacklevel=3,
            )
        return scan

    def _map_label(self, label: np.ndarray, name: str) -> np.ndarray:
        invalid = (label < 0) | (label >= self.num_classes)
        if invalid.any():
            if self.label_scan is None and not self._warned_lazy:
                self._warned_lazy = True
                warnings.warn(f"label '{name}' in {self.label_dir} holds values outside 0..{self.num_classes - 1} "
                              f"({sorted(int(v) for v in np.unique(label[invalid]))[:5]}); such values are mapped to "
                              f"ignore index {self.ignore_index} (further files are not reported)",
                              LabelRangeWarning, stacklevel=3)
            label = np.where(invalid, self.ignore_index, label)
        return label

    # -- loading -----------------------------------------------------------------------------------------------

    def load_pair(self, index: int) -> dict[str, Any]:
        """Read pair ``index`` in full: the :func:`data.io.load_fusion_pair` dict plus ``label`` (H, W) int64 or
        None (already mapped to the ignore index)."""
        if index in self._cache:
            return self._cache[index]
        pair = self.pairs[index]
        sample = load_fusion_pair(pair.ir, pair.vi)
        sample["name"] = pair.name
        sample["label"] = None
        if pair.label is not None:
            label = read_label(pair.label)
            if label.shape != sample["ir"].shape:
                (lh, lw), (h, w) = label.shape, sample["ir"].shape
                raise PairError(f"label '{pair.label}' is {lw}x{lh} (WxH) but images '{pair.ir}' and '{pair.vi}' "
                                f"are {w}x{h}")
            sample["label"] = self._map_label(label, pair.label.name)
        if self.cache:
            self._cache[index] = sample
        return sample

    def _index_release_patches(self) -> list[tuple[int, int, int]]:
        index = []
        for i in range(len(self.pairs)):
            arrays = self.load_pair(i)
            for top, left in release_patch_origins(arrays["ir"], arrays["vi_y"], self.patch_size, self.min_spread,
                                                   self.contrast_relative_to):
                index.append((i, top, left))
        if not index:
            raise ValueError(f"release_patches: no {self.patch_size}x{self.patch_size} patch of {len(self.pairs)} "
                             f"images in {self.ir_dir} passes the contrast filter (min_spread={self.min_spread})")
        logger.info("release_patches: %d patches from %d images", len(index), len(self.pairs))
        return index

    # -- Dataset protocol ----------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch for seeded random crops (call before building each epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._patch_index) if self.mode == "release_patches" else len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        if self.mode == "release_patches":
            pair_index, top, left = self._patch_index[index]
        else:
            pair_index, top, left = index, 0, 0
        arrays = self.load_pair(pair_index)
        ir, vi, label = arrays["ir"], arrays["vi_y"], arrays["label"]
        name = arrays["name"]
        if self.mode == "random_crop":
            generator = None
            if self.seed is not None:
                generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, index))
            ir, vi, label = random_crop_flip(ir, vi, label, self.patch_size, flips=self.flips,
                                             ignore_index=self.ignore_index, generator=generator)
        elif self.mode == "release_patches":
            window = (slice(top, top + self.patch_size), slice(left, left + self.patch_size))
            ir, vi = ir[window], vi[window]
            label = label[window] if label is not None else None
            name = f"{name}_y{top}_x{left}"
        sample: dict[str, Any] = {"ir": to_tensor_1hw(ir), "vi": to_tensor_1hw(vi), "name": name}
        if label is not None:
            sample["label"] = torch.from_numpy(np.array(label, dtype=np.int64, order="C", copy=True))
        if self.return_chroma:
            for key in ("vi", "ir"):
                crcb = arrays[f"{key}_crcb"]
                sample[f"{key}_is_color"] = torch.tensor(crcb is not None)
                if crcb is None:
                    crcb = np.full((*ir.shape, 2), 0.5, dtype=np.float32)
                sample[f"{key}_crcb"] = to_tensor_1hw(crcb)
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(pairs={len(self.pairs)}, samples={len(self)}, mode={self.mode!r}, "
                f"patch_size={self.patch_size}, classes={self.num_classes}, ir_dir='{self.ir_dir}')")


def _layout_dirs(root: Path, split: str, names: tuple[str, str, str], layout: str, labels: bool) -> list[Path]:
    dirs = [root / split / name for name in names]
    needed = dirs if labels else dirs[:2]
    missing = [str(d) for d in needed if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"{layout} layout: missing folder(s) {missing} (expected {root}/{split}/"
                                f"{{{','.join(names)}}}); for other folder names use the 'folders' dataset with "
                                "ir_dir / vi_dir / label_dir")
    return dirs


class _SplitLayoutDataset(PairedFolderDataset):
    """A fixed ``root/{split}/{ir, vi, label}`` layout; subclasses name the folders and the default classes."""

    folders: tuple[str, str, str]
    default_classes: Sequence[str]

    def __init__(self, root: PathLike, split: str = "train", *, labels: bool = True, **kwargs: Any) -> None:
        self.root, self.split = Path(root), split
        ir, vi, lab = _layout_dirs(self.root, split, self.folders, self.layout, labels)
        if kwargs.get("class_names") is None:
            kwargs["class_names"] = _root_classes(self.root)
        super().__init__(ir, vi, lab if labels else None, default_classes=self.default_classes, **kwargs)


class FMBDataset(_SplitLayoutDataset):
    """FMB: ``root/{train,test}/{Infrared,Visible,Label}/NNNNN.png``; 15 classes (``root/classes.yaml`` overrides).

    Args:
        root: the FMB folder; split: ``"train"`` or ``"test"``; labels: read the Label folder.
        **kwargs: see :class:`PairedFolderDataset`.
    """

    layout = "fmb"
    folders = ("Infrared", "Visible", "Label")
    default_classes = FMB_CLASSES



class MSRSDataset(_SplitLayoutDataset):
    """MSRS: ``root/{train,test}/{ir,vi,Segmentation_labels}/NNNNN{D,N}.png``; 9 classes (classes.yaml overrides)."""

    layout = "msrs"
    folders = ("ir", "vi", "Segmentation_labels")
    default_classes = MSRS_CLASSES



class RoadSceneDataset(PairedFolderDataset):
    """RoadScene: ``root/cropinfrared`` + ``root/crop_LR_visible`` (also ``root/ir`` + ``root/vi``); no labels."""

    layout = "roadscene"

    def __init__(self, root: PathLike, **kwargs: Any) -> None:
        self.root, self.split = Path(root), None
        if (self.root / "cropinfrared").is_dir():
            ir, vi = self.root / "cropinfrared", self.root / "crop_LR_visible"
        elif (self.root / "ir").is_dir():
            ir, vi = self.root / "ir", self.root / "vi"
        else:
            raise FileNotFoundError(f"RoadScene layout: neither '{self.root}/cropinfrared' (with crop_LR_visible) nor "
                                    f"'{self.root}/ir' (with vi) exists")
        super().__init__(ir, vi, None, **kwargs)


def _root_classes(root: Path) -> Path | None:
    candidate = root / CLASSES_FILE
    return candidate if candidate.is_file() else None


_CFG_KEYS = {
    "name", "root", "ir_dir", "vi_dir", "label_dir", "patch_size", "mode", "flips", "ignore_index", "seed",
    "classes", "num_classes", "min_spread", "contrast_relative_to", "strict", "scan_labels", "cache",
    "return_chroma", "labels",
}


def build_dataset(cfg: Mapping[str, Any], split: str, mode: Mode | None = None) -> PairedFolderDataset:
    """Build a dataset from a plain config dict.

    Keys (None values count as absent): ``name`` (``fmb`` | ``msrs`` | ``roadscene`` | ``folders``), ``root``,
    ``ir_dir`` / ``vi_dir`` / ``label_dir`` (``folders`` only; relative to ``root`` when it is given; ``{split}``
    is replaced by the split), ``patch_size``, ``mode``, ``flips``, ``ignore_index``, ``seed``, ``classes``
    (list of names or a classes.yaml path), ``num_classes``, ``min_spread``, ``contrast_relative_to``, ``strict``,
    ``scan_labels``, ``cache``, ``return_chroma``, ``labels`` (fmb / msrs: read the label folder, default true).

    Mode: the ``mode`` argument, else ``cfg["mode"]``, else ``"random_crop"`` for the ``train`` split and
    ``"full"`` otherwise.

    Raises:
        ValueError: unknown keys or dataset name, or keys that do not apply to the named layout.
    """
    cfg = {k: v for k, v in cfg.items() if v is not None}
    unknown = sorted(set(cfg) - _CFG_KEYS)
    if unknown:
        raise ValueError(f"unknown dataset config key(s) {unknown}; known: {sorted(_CFG_KEYS)}")
    name = str(cfg.pop("name", "folders")).lower()
    root = Path(cfg.pop("root")) if "root" in cfg else None
    kwargs: dict[str, Any] = {"mode": mode or cfg.pop("mode", "random_crop" if split == "train" else "full")}
    cfg.pop("mode", None)
    if "classes" in cfg:
        kwargs["class_names"] = cfg.pop("classes")
    dirs = {k: cfg.pop(k) for k in ("ir_dir", "vi_dir", "label_dir") if k in cfg}
    labels = cfg.pop("labels", True)
    kwargs.update(cfg)
    if name in ("fmb", "msrs", "roadscene"):
        if dirs:
            raise ValueError(f"{sorted(dirs)} only apply to name 'folders'; '{name}' uses its fixed layout under root")
        if root is None:
            raise ValueError(f"dataset '{name}' needs 'root'")
        if name == "fmb":
            return FMBDataset(root, split, labels=labels, **kwargs)
        if name == "msrs":
            return MSRSDataset(root, split, labels=labels, **kwargs)
        return RoadSceneDataset(root, **kwargs)
    if name != "folders":
        raise ValueError(f"unknown dataset name {name!r}; use fmb, msrs, roadscene or folders")
    if "ir_dir" not in dirs or "vi_dir" not in dirs:
        raise ValueError("dataset 'folders' needs 'ir_dir' and 'vi_dir'")

    def locate(value: Any) -> Path:
        path = Path(str(value).replace("{split}", split))
        return root / path if root is not None and not path.is_absolute() else path

    label_dir = locate(dirs["label_dir"]) if "label_dir" in dirs and labels else None
    return PairedFolderDataset(locate(dirs["ir_dir"]), locate(dirs["vi_dir"]), label_dir, **kwargs)
