"""The one table of dataset layouts and class lists (with their colour palette).

Every loader, the dataset check, the data preparation script and the metrics read folder names and class names
from here. A layout is ``root/{split}/{ir,vi,label}`` (``split_folders``) or ``root/{ir,vi,label}``.

| name | folders (ir, vi, label) | splits | classes |
|---|---|---|---|
| ``fmb`` | Infrared, Visible, Label | train, test | 15 (FMB) |
| ``msrs`` | ir, vi, Segmentation_labels | train, test | 9 (MSRS = MFNet) |
| ``mfnet`` | ir, vi, label | none (one folder set) | 9 (MFNet = MSRS) |
| ``roadscene`` | cropinfrared, crop_LR_visible (or ir, vi) | none | unlabelled |
| ``folders`` | given (``ir_dir``, ``vi_dir``, ``label_dir``) | ``{split}`` in the paths | from classes.yaml |

``mfnet`` is the layout of ``../shared/data/MFNet`` and ``../shared/data/MSRS_labelled`` (and of anything
written as ``ir/``, ``vi/``, ``label/`` side by side).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

PathLike = str | os.PathLike
CLASSES_FILE = "classes.yaml"

FMB_CLASSES: tuple[str, ...] = (
    "unlabeled", "road", "sidewalk", "building", "lamp", "sign", "vegetation", "sky",
    "person", "car", "truck", "bus", "motorcycle", "bicycle", "pole",
)  # fmt: skip
MSRS_CLASSES: tuple[str, ...] = (
    "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
)  # fmt: skip
MFNET_CLASSES = MSRS_CLASSES  # MSRS is built from MFNet and keeps its labels
CLASS_PRESETS: dict[str, tuple[str, ...]] = {"fmb": FMB_CLASSES, "msrs": MSRS_CLASSES, "mfnet": MFNET_CLASSES}

# RGB rendering of label maps (the common road-scene colour convention; FMB's own palette may differ).
LABEL_COLORS = np.array([
    (0, 0, 0), (128, 64, 128), (244, 35, 232), (70, 70, 70), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (70, 130, 180), (220, 20, 60), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 0, 230), (119, 11, 32),
    (153, 153, 153),
], dtype=np.uint8)


def colorize_labels(label: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB rendering (indices beyond the palette become white)."""
    palette = np.vstack([LABEL_COLORS, np.full((256 - len(LABEL_COLORS), 3), 255, np.uint8)])
    return palette[np.clip(label, 0, 255).astype(np.intp)]


@dataclass(frozen=True)
class Layout:
    """Where a dataset keeps its files.

    Attributes:
        name: the ``data.name`` / ``--layout`` value.
        folders: (infrared, visible, label) folder names; label None when the layout has no labels.
        split_folders: files live under ``root/{split}/`` (True) or directly under ``root/`` (False).
        classes: the built-in class list (a ``classes.yaml`` in the dataset folder overrides it).
        alternatives: other accepted (infrared, visible, label) folder names, tried in order.
    """

    name: str
    folders: tuple[str, str, str | None]
    split_folders: bool
    classes: tuple[str, ...] | None
    alternatives: tuple[tuple[str, str, str | None], ...] = ()

    def describe(self, root: str | Path = "ROOT", split: str = "{split}") -> str:
        """``ROOT/{split}/{ir,vi,label}`` in words."""
        base = f"{root}/{split}" if self.split_folders else str(root)
        names = ",".join(n for n in self.folders if n)
        return f"{base}/{{{names}}}"

    def dirs(self, root: str | Path, split: str | None = None) -> tuple[Path, Path, Path | None]:
        """The (infrared, visible, label) folders for ``split``; the first variant whose infrared and visible
        folders exist, else the main one (so that errors name the expected folders)."""
        base = Path(root) / split if self.split_folders and split else Path(root)
        for ir, vi, label in (self.folders, *self.alternatives):
            if (base / ir).is_dir() and (base / vi).is_dir():
                return base / ir, base / vi, (base / label if label else None)
        ir, vi, label = self.folders
        return base / ir, base / vi, (base / label if label else None)


LAYOUTS: dict[str, Layout] = {
    "fmb": Layout("fmb", ("Infrared", "Visible", "Label"), True, FMB_CLASSES),
    "msrs": Layout("msrs", ("ir", "vi", "Segmentation_labels"), True, MSRS_CLASSES),
    "mfnet": Layout("mfnet", ("ir", "vi", "label"), False, MFNET_CLASSES),
    "roadscene": Layout("roadscene", ("cropinfrared", "crop_LR_visible", None), False, None,
                        alternatives=(("ir", "vi", None),)),
}
DATASET_NAMES: tuple[str, ...] = (*LAYOUTS, "folders")


def detect_layout(root: str | Path) -> str:
    """Guess the layout of ``root``: fmb, msrs, mfnet, roadscene, or folders."""
    root = Path(root)
    splits = [root / s for s in ("train", "test")]
    if any((s / "Infrared").is_dir() for s in splits):
        return "fmb"
    if any((s / "ir").is_dir() and (s / "vi").is_dir() for s in splits):
        return "msrs"
    if (root / "cropinfrared").is_dir():
        return "roadscene"
    if all((root / f).is_dir() for f in ("ir", "vi", "label")):
        return "mfnet"
    return "folders"


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
