"""Semantic-segmentation scores for Table II: confusion matrix, per-class Acc and IoU, mAcc and mIoU.

Definitions (confusion matrix ``cm[label, prediction]`` accumulated over all images of a split):

- per-class Acc (recall) = TP / (TP + FN) = ``cm[c, c] / cm[c, :].sum()``;
- per-class IoU = TP / (TP + FP + FN);
- mAcc, mIoU = mean over classes of the per-class values, leaving out undefined ones (NaN): a class with no
  labelled pixel has no Acc, and no IoU unless it was predicted somewhere (then its IoU is 0). The FMB test split,
  for example, has no bicycle pixels.
- "without background": the means leave out the background/unlabeled class (class 0 by default); its pixels stay in
  the confusion matrix, so predicting a class on unlabeled pixels still counts as a false positive of that class.
- Pixels whose label is the ignore index (255 by default) are not counted at all.
- "reported classes": the paper's Table II shows 8 of FMB's 15 classes and its mAcc/mIoU are the means over those 8
  (UAAFusion: mean of the 8 Acc values = 72.79); :func:`summarise` computes these means when given the subset.

Prediction and label files are single-channel index PNGs paired by stem (a 3-channel file whose channels are equal
is accepted). CLI: ``python eval_metrics.py seg --pred [NAME=]DIR ... --label DIR --classes N`` (see ``--help``).
Scores are fractions in [0, 1] in the library, JSON and CSV, and percentages in the printed tables.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.io import ImageReadError, list_images, read_label
from data.layouts import FMB_CLASSES, MSRS_CLASSES  # noqa: F401  (re-exported for the metrics' users)


def confusion_matrix(
    pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """Confusion matrix of one image.

    Args:
        pred: (H, W) integer class indices in [0, num_classes).
        label: (H, W) integer class indices in [0, num_classes), or ``ignore_index``.
        num_classes: C.
        ignore_index: label value whose pixels are skipped (None: no such value).

    Returns:
        (C, C) int64 counts, rows = label, columns = prediction.

    Raises:
        ValueError: shapes differ, or a value is out of range (the message gives the offending values).
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"size mismatch: prediction {pred.shape[::-1]}, label {label.shape[::-1]} (WxH)")
    keep = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
    lab = label[keep].astype(np.int64)
    prd = pred[keep].astype(np.int64)
    bad_label = (lab < 0) | (lab >= num_classes)
    if bad_label.any():
        raise ValueError(f"label values outside 0..{num_classes - 1}: {sorted(set(lab[bad_label].tolist()))[:5]}")
    bad_pred = (prd < 0) | (prd >= num_classes)
    if bad_pred.any():
        raise ValueError(f"prediction values outside 0..{num_classes - 1}: {sorted(set(prd[bad_pred].tolist()))[:5]}")
    return np.bincount(lab * num_classes + prd, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Acc (recall) and IoU from a confusion matrix.

    Args:
        cm: (C, C) counts, rows = label, columns = prediction.

    Returns:
        ``(acc, iou)``, each (C,) float64 in [0, 1]; NaN where undefined (no labelled pixel / empty union).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    labelled = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = labelled + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(labelled > 0, tp / labelled, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    return acc, iou


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def summarise(
    cm: np.ndarray,
    class_names: Sequence[str],
    background: int | None = 0,
    reported: Sequence[int] | None = None,
) -> dict:
    """Per-class scores and the class means, with and without the background class.

    Args:
        cm: (C, C) confusion matrix (rows = label).
        class_names: C names.
        background: index of the unlabeled/background class (None: there is none).
        reported: class indices whose mean is also returned (e.g. the 8 classes of the paper's Table II).

    Returns:
        ``{"per_class": {name: {"Acc", "IoU", "pixels"}}, "mean": {"all": {"mAcc", "mIoU"},
        "no_background": {...}, "reported": {...} (only with ``reported``)}}``; scores are fractions or NaN.
    """
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for {cm.shape[0]} classes")
    acc, iou = class_scores(cm)
    labelled = np.asarray(cm).sum(axis=1)
    per_class = {
        name: {"Acc": float(acc[i]), "IoU": float(iou[i]), "pixels": int(labelled[i])}
        for i, name in enumerate(class_names)
    }
    keep = np.ones(len(class_names), bool)
    if background is not None:
        keep[background] = False
    mean = {
        "all": {"mAcc": _nanmean(acc), "mIoU": _nanmean(iou)},
        "no_background": {"mAcc": _nanmean(acc[keep]), "mIoU": _nanmean(iou[keep])},
    }
    if reported is not None:
        idx = np.asarray(list(reported), dtype=np.int64)
        mean["reported"] = {"mAcc": _nanmean(acc[idx]), "mIoU": _nanmean(iou[idx])}
    return {"per_class": per_class, "mean": mean}


def read_index_map(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index image (8 or 16 bit, or a palette PNG's indices) with :func:`data.io.read_label`.

    Returns:
        (H, W) int64 class indices; a 3- or 4-channel file whose colour channels are equal is reduced to one.

    Raises:
        ImageReadError: unreadable, or a colour image whose channels differ (an RGB rendering, not indices).
    """
    return read_label(path)


@dataclass
class SegEvaluation:
    """Confusion matrices and failures of every prediction folder.

    Attributes:
        num_classes: C.
        class_names: C names.
        ignore_index: skipped label value.
        background: background class index or None.
        methods: method names in order.
        confusion: method -> (C, C) accumulated counts.
        images: method -> number of images accumulated.
        failed: method -> image name -> one-line reason.
    """

    num_classes: int
    class_names: list[str]
    ignore_index: int | None
    background: int | None
    methods: list[str]
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def any_failed(self) -> bool:
        """True when some image could not be scored."""
        return any(self.failed.get(m) for m in self.methods)

    def failure_lines(self) -> list[str]:
        """One line per failed (method, image)."""
        return [f"[{m}] {n}: {r}" for m in self.methods for n, r in sorted(self.failed.get(m, {}).items())]

    def summaries(self, reported: Sequence[int] | None = None) -> dict[str, dict]:
        """method -> :func:`summarise` output."""
        return {m: summarise(self.confusion[m], self.class_names, self.background, reported) for m in self.methods}

    def to_json(self, reported: Sequence[int] | None = None) -> dict:
        """JSON document (NaN as null): settings, and per method the summary, counts and confusion matrix."""
        summaries = self.summaries(reported)

        def clean(obj):
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, float) and not math.isfinite(obj):
                return None
            return obj

        return {
            "task": "segmentation",
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "ignore_index": self.ignore_index,
            "background": self.background,
            "reported_classes": None if reported is None else [self.class_names[i] for i in reported],
            "methods": {
                m: {
                    **clean(summaries[m]),
                    "images": self.images.get(m, 0),
                    "confusion": self.confusion[m].tolist(),
                }
                for m in self.methods
            },
            "failed": {m: dict(sorted(self.failed.get(m, {}).items())) for m in self.methods},
        }


def evaluate_seg_folders(
    pred_dirs: Mapping[str, str | os.PathLike],
    label_dir: str | os.PathLike,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 255,
    background: int | None = 0,
    progress: bool = False,
) -> SegEvaluation:
    """Accumulate a confusion matrix per prediction folder over all labels of ``label_dir``.

    Every label image is expected in every prediction folder (paired by stem); a missing, unreadable or
    wrongly-sized prediction, or out-of-range values, is recorded as a failure of that image and skipped.

    Args:
        pred_dirs: method -> folder of predicted index maps.
        label_dir: folder of label index maps.
        num_classes: C.
        class_names: C names (default ``class0 ... class{C-1}``).
        ignore_index: label value to skip.
        background: background class index, left out of the "no background" means.
        progress: show a tqdm bar on stderr.

    Raises:
        FileNotFoundError: a folder does not exist. ValueError: no labels, or wrong number of class names.
    """
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    if background is not None and not 0 <= background < num_classes:
        raise ValueError(f"background class {background} outside 0..{num_classes - 1}")
    for label, folder in [("label", label_dir), *[(f"prediction ({m})", d) for m, d in pred_dirs.items()]]:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
    label_list = list_images(label_dir)
    labels = label_list.files
    if not label_list:
        raise ValueError(f"no label images found in {label_dir}")
    result = SegEvaluation(num_classes, names, ignore_index, background, list(pred_dirs))
    preds = {m: list_images(d) for m, d in pred_dirs.items()}
    for m in pred_dirs:
        result.confusion[m] = np.zeros((num_classes, num_classes), np.int64)
        result.images[m] = 0
        result.failed[m] = {
            n: f"ambiguous label: {', '.join(p.name for p in ps)}" for n, ps in label_list.duplicates.items()
        }
        result.failed[m].update({n: f"label {why}" for n, why in label_list.unusable.items()})

    stems = sorted(labels)
    iterator = stems
    if progress:
        from tqdm import tqdm

        iterator = tqdm(stems, desc="segmentation", unit="image", dynamic_ncols=True)
    for stem in iterator:
        try:
            label = read_index_map(labels[stem])
        except ImageReadError as err:
            for m in pred_dirs:
                result.failed[m][stem] = f"label {labels[stem]}: {err.reason}"
            continue
        for m, folder in pred_dirs.items():
            files, dups = preds[m].files, preds[m].duplicates
            if stem in dups:
                result.failed[m][stem] = f"ambiguous prediction: {', '.join(p.name for p in dups[stem])}"
                continue
            if stem in preds[m].unusable:
                result.failed[m][stem] = f"prediction {preds[m].unusable[stem]}"
                continue
            if stem not in files:
                result.failed[m][stem] = f"missing prediction ({stem}.* not in {folder})"
                continue
            try:
                pred = read_index_map(files[stem])
                result.confusion[m] += confusion_matrix(pred, label, num_classes, ignore_index)
                result.images[m] += 1
            except ImageReadError as err:
                result.failed[m][stem] = f"{files[stem]}: {err.reason}"
            except ValueError as err:  # size mismatch or values out of range
                result.failed[m][stem] = f"{files[stem]}: {err}"
    return result


def resolve_classes(selection: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class indices from names (case-insensitive) or integer indices.

    Raises:
        ValueError: an unknown name or an index out of range.
    """
    lower = [n.lower() for n in class_names]
    out = []
    for item in selection:
        if item.lower() in lower:
            out.append(lower.index(item.lower()))
        elif item.isdigit() and int(item) < len(class_names):
            out.append(int(item))
        else:
            raise ValueError(f"unknown class {item!r}; classes are {', '.join(class_names)}")
    return out


def table_rows(summary: Mapping, classes: Sequence[str], mean_key: str) -> dict[str, float]:
    """One table row in percent: ``"<class> Acc"``, ``"<class> IoU"`` for ``classes``, then ``mAcc`` and ``mIoU``."""
    row: dict[str, float] = {}
    for name in classes:
        row[f"{name} Acc"] = 100.0 * summary["per_class"][name]["Acc"]
        row[f"{name} IoU"] = 100.0 * summary["per_class"][name]["IoU"]
    row["mAcc"] = 100.0 * summary["mean"][mean_key]["mAcc"]
    row["mIoU"] = 100.0 * summary["mean"][mean_key]["mIoU"]
    return row


def csv_rows(evaluation: SegEvaluation, reported: Sequence[int] | None = None) -> tuple[list[str], list[list]]:
    """CSV header and rows: one row per (method, class), then one per (method, mean kind)."""
    header = ["method", "class", "index", "Acc", "IoU", "pixels"]
    rows: list[list] = []
    for m, summary in evaluation.summaries(reported).items():
        for i, (name, scores) in enumerate(summary["per_class"].items()):
            rows.append([m, name, i, scores["Acc"], scores["IoU"], scores["pixels"]])
        for kind, means in summary["mean"].items():
            rows.append([m, f"mean ({kind})", "", means["mAcc"], means["mIoU"], ""])
    return header, rows
