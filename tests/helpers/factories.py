"""Tiny models, checkpoints, configs and image folders for tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from engine.checkpoint import save_checkpoint
from engine.config import load_config
from models.uaafusion import build_model
from tests.helpers.scripts import REPO

TINY_MODEL = ["fusion.stages=2", "fusion.channels=8", "attribution.ig_steps=1", "device=cpu"]
TINY_TRAIN = ["fusion.stages=2", "fusion.channels=8", "attribution.ig_steps=2", "data.patch_size=48",
              "train.batch_size=4", "data.val_pairs=4", "train.lr=3e-3", "train.log_every=1",
              "train.image_log_every=4"]


def tiny_train_config(root: Path, *extra: str) -> dict:
    """The demo config shrunk to seconds, on the dataset at ``root``."""
    return load_config(REPO / "configs" / "demo.yaml", [f"data.root={root}", *TINY_TRAIN, *extra])


def write_tiny_checkpoint(path: Path, *overrides: str, num_classes: int = 4, seed: int = 0) -> Path:
    """A model-only checkpoint of a 2-stage, 8-channel model with random weights."""
    cfg = load_config(None, [*TINY_MODEL, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=num_classes)
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "num_classes": num_classes})
    return path


def gray(seed: int, h: int = 40, w: int = 36) -> np.ndarray:
    """A random (h, w) uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    """Encode with OpenCV by the file's extension and write the bytes (non-ASCII names work everywhere)."""
    ok, data = cv2.imencode(path.suffix, image)
    assert ok, path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return path


def pair_folders(root: Path, names: list[str], h: int = 40, w: int = 36, colour: bool = True) -> tuple[Path, Path]:
    """``root/ir`` and ``root/vi`` with one random pair per name (visible in colour unless ``colour=False``)."""
    ir, vi = root / "ir", root / "vi"
    for i, name in enumerate(names):
        write_image(ir / f"{name}.png", gray(2 * i, h, w))
        visible = gray(2 * i + 1, h, w)
        if colour:
            visible = np.dstack([visible, gray(100 + i, h, w), visible // 2])
        write_image(vi / f"{name}.png", visible)
    return ir, vi
