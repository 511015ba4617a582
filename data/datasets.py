"""Paired infrared/visible datasets with optional segmentation labels.

Every dataset returns a dict per sample::

    {"ir": (1, H, W) float32 in [0, 1],       # infrared (luminance of a colour file)
     "vi": (1, H, W) float32 in [0, 1],       # visible luminance (Y of YCrCb)
     "label": (H, W) int64,                   # only when the dataset has labels; out-of-range -> ignore_index
     "name": str}                             # file stem (patch id in "release_patches" mode)

Modes:

- ``"random_crop"`` (the paper's training): a random ``patch_size`` crop (default 128) with random horizontal and
  vertical flips, identical for ir, vi and label (``vertical_flips=False``: horizontal only; ``scale_range=(lo,
  hi)``: the scene is first resized by a random factor in that range, an extension for segmenter pre-training).
  Images smaller than the patch are reflect-padded (the label is padded with ``ignore_index``). Randomness comes
  from torch: with ``seed`` set, sample ``i`` of epoch ``e``
  (see :meth:`PairedFolderDataset.set_epoch`) uses its own generator seeded from ``(seed, e, i)``, so the samples
  do not depend on worker count or order; without a seed the global torch RNG is used, which the DataLoader seeds
  per worker.
- ``"release_patches"`` (release row 10): the release's pre-cut patches, indexed as (image, patch) pairs;
  see :func:`cut_release_patches`. No flips (the release has none).
- ``"tiles"``: every non-overlapping ``patch_size`` tile of every image (row-major grid from the top-left corner,
  a remainder narrower than a tile dropped), no contrast filter; random flips as in random_crop when ``flips``
  (drawn per (seed, epoch, index)). See docs/DECISIONS.md (D1) for how it relates to the paper's wording.
- ``"full"``: whole images (evaluation, testing).
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from data.io import PairError, load_fusion_pair, read_label, to_tensor_1hw
from data.layouts import (
    CLASSES_FILE,
    DATASET_NAMES,
    FMB_CLASSES,
    LAYOUTS,
    MFNET_CLASSES,
    MSRS_CLASSES,
    Layout,
    load_class_names,
    resolve_class_names,
)
from data.pairing import IMAGE_EXTENSIONS, PairPaths, Problem, list_images, pair_files
from data.sampling import (
    DEFAULT_IGNORE_INDEX,
    ContrastReference,
    ReleasePatch,
    check_scale_range,
    cut_release_patches,
    pad_to_min_size,
    patch_spread,
    random_crop_flip,
    random_flips,
    random_rescale,
    release_patch_origins,
    sample_seed,
)
from data.tone import ToneReference

# Re-exported so that ``from data.datasets import ...`` keeps working; each lives in the module named above.
__all__ = [
    "CLASSES_FILE", "DEFAULT_IGNORE_INDEX", "FMB_CLASSES", "IMAGE_EXTENSIONS", "MFNET_CLASSES", "MSRS_CLASSES",
    "ContrastReference", "PairPaths", "Problem", "ReleasePatch", "cut_release_patches", "list_images",
    "load_class_names", "pad_to_min_size", "pair_files", "patch_spread", "random_crop_flip", "random_flips",
    "random_rescale", "release_patch_origins", "resolve_class_names", "PairedFolderDataset", "LayoutDataset",
    "FMBDataset", "MSRSDataset", "MFNetDataset", "RoadSceneDataset", "build_dataset",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
Mode = Literal["random_crop", "release_patches", "tiles", "full"]
MODES: tuple[str, ...] = ("random_crop", "release_patches", "tiles", "full")

DEFAULT_PATCH_SIZE = {"random_crop": 128, "release_patches": 256, "tiles": 128}



class LabelRangeWarning(UserWarning):
    """Label files hold values outside 0..num_classes-1; they were mapped to the ignore index."""


class UnpairedFilesWarning(UserWarning):
    """Some files have no partner (or no label) and were left out of a dataset."""


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
        flips: random flips in random_crop and tiles modes.
        vertical_flips: with ``flips``, also flip upside down; False keeps the crops' positions and the
            horizontal flips and drops the vertical ones.
        scale_range: (lo, hi): resize each scene by a random factor in this range before its random crop
            (random_crop mode; label by nearest neighbour); None (default) leaves the scale alone and the draws as
            they were.
        crops_per_scene: random_crop mode: samples per scene and epoch (sample i crops scene i mod n with its own
            draws), so that an epoch of random crops can be as long as one of tiles; 1 (default): one each.
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
        ir_tone_reference: image files or folders; when given, every infrared image is histogram-matched onto their
            pooled histogram as it is read (:class:`data.tone.ToneReference`; an extension for training on raw MFNet
            thermal images that look like MSRS's, docs/DECISIONS.md D14).
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
        vertical_flips: bool = True,
        scale_range: Sequence[float] | None = None,
        crops_per_scene: int = 1,
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
        ir_tone_reference: PathLike | Sequence[PathLike] | None = None,
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
        self.vertical_flips = bool(vertical_flips)
        self.scale_range = None if scale_range is None else check_scale_range(scale_range)
        if self.scale_range is not None and mode != "random_crop":
            raise ValueError(f"scale_range applies to mode 'random_crop' only, not {mode!r}")
        self.crops_per_scene = int(crops_per_scene)
        if self.crops_per_scene < 1 or self.crops_per_scene != 1 and mode != "random_crop":
            raise ValueError(f"crops_per_scene must be 1, or more in mode 'random_crop'; got {crops_per_scene} in "
                             f"mode {mode!r}")
        self.ignore_index = int(ignore_index)
        self.seed = seed
        self.epoch = 0
        self.min_spread = float(min_spread)
        self.contrast_relative_to = contrast_relative_to
        self.cache = cache
        self.return_chroma = return_chroma
        self._cache: dict[int, dict[str, Any]] = {}
        self._warned_lazy = False
        self.ir_tone = ToneReference(ir_tone_reference) if ir_tone_reference else None

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
        elif mode == "tiles":
            self._patch_index = self._index_tiles()

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
        if self.ir_tone is not None:
            sample["ir"] = self.ir_tone.match(sample["ir"])
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

    def _index_tiles(self) -> list[tuple[int, int, int]]:
        index = []
        size = self.patch_size
        for i in range(len(self.pairs)):
            height, width = self.load_pair(i)["ir"].shape[:2]
            index.extend((i, top, left) for top in range(0, height - size + 1, size)
                         for left in range(0, width - size + 1, size))
        if not index:
            raise ValueError(f"tiles: every image in {self.ir_dir} is smaller than one {size}x{size} tile")
        logger.info("tiles: %d tiles of %dx%d from %d images", len(index), size, size, len(self.pairs))
        return index

    # -- Dataset protocol ----------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch for seeded random crops (call before building each epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.mode in ("release_patches", "tiles"):
            return len(self._patch_index)
        return len(self.pairs) * self.crops_per_scene  # 1 outside random_crop mode

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        if self.mode in ("release_patches", "tiles"):
            pair_index, top, left = self._patch_index[index]
        else:
            pair_index, top, left = index % len(self.pairs), 0, 0
        arrays = self.load_pair(pair_index)
        ir, vi, label = arrays["ir"], arrays["vi_y"], arrays["label"]
        name = arrays["name"]
        generator = None
        if self.seed is not None and self.mode in ("random_crop", "tiles"):
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        if self.mode == "random_crop":
            if self.scale_range is not None:
                ir, vi, label = random_rescale(ir, vi, label, self.scale_range, generator)
            ir, vi, label = random_crop_flip(ir, vi, label, self.patch_size, flips=self.flips,
                                             vertical=self.vertical_flips, ignore_index=self.ignore_index,
                                             generator=generator)
        elif self.mode in ("release_patches", "tiles"):
            window = (slice(top, top + self.patch_size), slice(left, left + self.patch_size))
            ir, vi = ir[window], vi[window]
            label = label[window] if label is not None else None
            name = f"{name}_y{top}_x{left}"
            if self.mode == "tiles" and self.flips:
                ir, vi, label = random_flips(ir, vi, label, generator, vertical=self.vertical_flips)
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


class LayoutDataset(PairedFolderDataset):
    """A dataset in one of the fixed layouts of :data:`data.layouts.LAYOUTS` (subclasses name the layout).

    Args:
        root: the dataset folder; split: ``"train"`` / ``"test"`` for layouts with split folders (ignored otherwise).
        labels: read the label folder (layouts that have one).
        **kwargs: see :class:`PairedFolderDataset`; the layout's class list is the default (``root/classes.yaml``
            overrides it).
    """

    layout = "folders"

    def __init__(self, root: PathLike, split: str | None = "train", *, labels: bool = True, **kwargs: Any) -> None:
        spec: Layout = LAYOUTS[self.layout]
        self.root, self.split = Path(root), split if spec.split_folders else None
        ir, vi, lab = spec.dirs(self.root, split)
        needed = [ir, vi] + ([lab] if labels and lab is not None else [])
        missing = [str(d) for d in needed if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"{self.layout} layout: missing folder(s) {missing} (expected "
                                    f"{spec.describe(self.root, split or '{split}')}); for other folder names use "
                                    "the 'folders' dataset with ir_dir / vi_dir / label_dir")
        if kwargs.get("class_names") is None:
            kwargs["class_names"] = _root_classes(self.root)
        super().__init__(ir, vi, lab if labels else None, default_classes=spec.classes, **kwargs)


class FMBDataset(LayoutDataset):
    """FMB: ``root/{train,test}/{Infrared,Visible,Label}/NNNNN.png``; 15 classes (``root/classes.yaml`` overrides)."""

    layout = "fmb"


class MSRSDataset(LayoutDataset):
    """MSRS: ``root/{train,test}/{ir,vi,Segmentation_labels}/NNNNN{D,N}.png``; 9 classes (classes.yaml overrides)."""

    layout = "msrs"


class MFNetDataset(LayoutDataset):
    """MFNet-style flat folders ``root/{ir,vi,label}/NAME.png``, 9 classes: ``../shared/data/MFNet`` (training)
    and ``../shared/data/MSRS_labelled`` (evaluation). There are no split folders; ``split`` is ignored."""

    layout = "mfnet"


class RoadSceneDataset(LayoutDataset):
    """RoadScene: ``root/cropinfrared`` + ``root/crop_LR_visible`` (also ``root/ir`` + ``root/vi``); no labels."""

    layout = "roadscene"

    def __init__(self, root: PathLike, split: str | None = None, **kwargs: Any) -> None:
        super().__init__(root, split, labels=False, **kwargs)


LAYOUT_DATASETS: dict[str, type[LayoutDataset]] = {
    "fmb": FMBDataset, "msrs": MSRSDataset, "mfnet": MFNetDataset, "roadscene": RoadSceneDataset,
}


def _root_classes(root: Path) -> Path | None:
    candidate = root / CLASSES_FILE
    return candidate if candidate.is_file() else None


_CFG_KEYS = {
    "name", "root", "ir_dir", "vi_dir", "label_dir", "patch_size", "mode", "flips", "vertical_flips", "scale_range",
    "crops_per_scene", "ignore_index", "seed",
    "classes", "num_classes", "min_spread", "contrast_relative_to", "strict", "scan_labels", "cache",
    "return_chroma", "labels", "ir_tone_reference",
}


def build_dataset(cfg: Mapping[str, Any], split: str, mode: Mode | None = None) -> PairedFolderDataset:
    """Build a dataset from a plain config dict.

    Keys (None values count as absent): ``name`` (``fmb`` | ``msrs`` | ``mfnet`` | ``roadscene`` | ``folders``; see
    :mod:`data.layouts`), ``root``,
    ``ir_dir`` / ``vi_dir`` / ``label_dir`` (``folders`` only; relative to ``root`` when it is given; ``{split}``
    is replaced by the split), ``patch_size``, ``mode``, ``flips``, ``vertical_flips``, ``scale_range``,
    ``crops_per_scene``, ``ignore_index``, ``seed``, ``classes``
    (list of names or a classes.yaml path), ``num_classes``, ``min_spread``, ``contrast_relative_to``, ``strict``,
    ``scan_labels``, ``cache``, ``return_chroma``, ``labels`` (fmb / msrs: read the label folder, default true),
    ``ir_tone_reference`` (image files or folders: every infrared image is histogram-matched onto them,
    :mod:`data.tone`).

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
    if name in LAYOUT_DATASETS:
        if dirs:
            raise ValueError(f"{sorted(dirs)} only apply to name 'folders'; '{name}' uses its fixed layout under root")
        if root is None:
            raise ValueError(f"dataset '{name}' needs 'root' (data.root: the dataset folder)")
        if name == "roadscene":
            return RoadSceneDataset(root, **kwargs)
        return LAYOUT_DATASETS[name](root, split, labels=labels, **kwargs)
    if name != "folders":
        raise ValueError(f"unknown dataset name {name!r}; use one of {', '.join(DATASET_NAMES)}")
    if "ir_dir" not in dirs or "vi_dir" not in dirs:
        raise ValueError("dataset 'folders' needs 'ir_dir' and 'vi_dir'")

    def locate(value: Any) -> Path:
        path = Path(str(value).replace("{split}", split))
        return root / path if root is not None and not path.is_absolute() else path

    label_dir = locate(dirs["label_dir"]) if "label_dir" in dirs and labels else None
    return PairedFolderDataset(locate(dirs["ir_dir"]), locate(dirs["vi_dir"]), label_dir, **kwargs)
