"""Validate the configured dataset before a training run starts (missing partners, sizes, labels, classes)."""
from __future__ import annotations

import sys

from data.check import check_dataset


def check_before_training(cfg: dict) -> bool:
    """Print the report of :func:`data.check.check_dataset` for the config's dataset; True when training may start."""
    d = cfg["data"]
    layout = {"fmb": "fmb", "msrs": "msrs", "roadscene": "roadscene"}.get(d["name"], "folders")
    splits = tuple(s for s in (d["train_split"], d["val_split"]) if s)
    report = check_dataset(d["root"], layout=layout, ir_dir=d["ir_dir"], vi_dir=d["vi_dir"], label_dir=d["label_dir"],
                           num_classes=d["num_classes"], splits=splits, ignore_index=d["ignore_index"])
    text = str(report)
    if not report.ok:
        print(f"dataset check failed (fix the files or pass --skip-check):\n{text}", file=sys.stderr)
        return False
    if text.strip():
        print(text)
    return True
