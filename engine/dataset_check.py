"""Validate the configured dataset before a training run starts (missing partners, sizes, labels, classes)."""
from __future__ import annotations

import sys

from data.check import check_dataset
from data.layouts import LAYOUTS


def check_before_training(cfg: dict) -> bool:
    """Print the report of :func:`data.check.check_dataset` for the config's dataset(s) (training, and validation
    when it lives elsewhere); True when training may start."""
    d = cfg["data"]
    separate_val = bool(d["val_root"] or d["val_name"])
    jobs = [(d["name"], d["root"], tuple(s for s in (d["train_split"], None if separate_val else d["val_split"]) if s))]
    if separate_val and d["val_split"]:
        jobs.append((d["val_name"] or d["name"], d["val_root"] or d["root"], (d["val_split"],)))
    ok = True
    for name, root, splits in jobs:
        layout = name if name in LAYOUTS else "folders"
        dirs = (d["ir_dir"], d["vi_dir"], d["label_dir"])
        per_split = layout == "folders" and any(x and "{split}" in x for x in dirs)
        for split_group in ([(s,) for s in splits] if per_split else [splits]):
            fill = (lambda x, sp=split_group[0]: x.replace("{split}", sp) if x else x) if per_split else (lambda x: x)
            report = check_dataset(root, layout=layout, ir_dir=fill(dirs[0]), vi_dir=fill(dirs[1]),
                                   label_dir=fill(dirs[2]), num_classes=d["num_classes"], splits=split_group,
                                   ignore_index=d["ignore_index"])
            ok = _print_report(report) and ok
    return ok


def _print_report(report) -> bool:
    text = str(report)
    if not report.ok:
        print(f"dataset check failed (fix the files or pass --skip-check):\n{text}", file=sys.stderr)
        return False
    if text.strip():
        print(text)
    return True
