"""Scoring a model on labelled pairs: fusion metrics of its fused images and its segmenter's IoU on infrared,
visible and fused inputs (the per-epoch validation, and the comparison tables of docs/RESULTS.md)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from engine.inference import fuse
from models.segmenter import segment
from models.uaafusion import UAAFusion

SOURCES = ("ir", "vi", "fused")


def to_0_255(image: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) in [0, 1] → (H, W) float64 integer values 0–255, as the metric evaluators read files."""
    return np.rint(image[0, 0].detach().float().clamp(0, 1).cpu().numpy().astype(np.float64) * 255.0)


def evaluate_model(
    model: UAAFusion,
    dataset,
    num_classes: int,
    device: torch.device,
    ignore_index: int = 255,
    tile: int | None = None,
    amp: str = "none",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Fuse every sample of ``dataset`` ("full" mode: ``ir``, ``vi`` (1, H, W), optional ``label``) and score it.

    Returns:
        Mean fusion metrics (paper convention: EN, SF, CC, VIF, Qabf, SSIM) under their names; with labels,
        ``ir_miou``, ``vi_miou``, ``fused_miou`` (segmenter on each input), ``miou`` (= fused) and ``class_iou``
        ({source: per-class IoU, None for classes absent from labels and predictions}); ``per_image``: the
        fusion metrics of each sample by name. The model is left in eval mode.
    """
    from metrics.fast import fusion_metrics
    from metrics.segmentation import class_scores, confusion_matrix

    model.eval()
    sums: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {}
    confusion = {k: np.zeros((num_classes, num_classes), dtype=np.int64) for k in SOURCES}
    count = 0
    for sample in tqdm(dataset, desc="validation", unit="pair", disable=not show_progress, leave=False):
        ir = sample["ir"].unsqueeze(0).to(device)
        vi = sample["vi"].unsqueeze(0).to(device)
        result = fuse(model, ir, vi, tile=tile, amp=amp)
        values = {k: float(v) for k, v in fusion_metrics(to_0_255(result.fused), to_0_255(ir), to_0_255(vi),
                                                         convention="paper").items()}
        per_image[sample.get("name", str(count))] = values
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if "label" in sample:
            images = {"ir": ir, "vi": vi, "fused": result.fused.clamp(0, 1).to(device)}
            for name, image in images.items():
                pred = segment(model.segmenter, image).argmax(dim=1)
                confusion[name] += confusion_matrix(pred[0].cpu().numpy(), sample["label"].numpy(), num_classes,
                                                    ignore_index)
        count += 1
    stats: dict[str, Any] = {k: v / max(count, 1) for k, v in sums.items()}
    if confusion["fused"].sum() > 0:
        stats["class_iou"] = {}
        for name in SOURCES:
            _, iou = class_scores(confusion[name])
            stats[f"{name}_miou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
            stats["class_iou"][name] = [None if not np.isfinite(v) else float(v) for v in iou]
        stats["miou"] = stats["fused_miou"]
    stats["per_image"] = per_image
    return stats
