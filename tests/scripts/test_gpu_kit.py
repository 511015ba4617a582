"""scripts/gpu_kit.sh run: the GPU machine's half of the kit runs end to end (here on the CPU, at tiny shapes, on
a kit built from generated scenes in the MFNet layout) and leaves a segmenter that pretrain_segmenter --init
accepts. The kit's ImageNet file is tested in tests/models/test_pretrained.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tiny_kit(kit: Path, scenes: int = 3, size: tuple[int, int] = (80, 96)) -> None:
    from models.segmenter import export_encoder_weights

    rng = np.random.default_rng(0)
    for folder in ("MFNet/ir", "MFNet/vi", "MFNet/label", "tone", "whl"):
        (kit / folder).mkdir(parents=True, exist_ok=True)
    for i in range(scenes):
        name = f"{i:05d}D.png"
        cv2.imwrite(str(kit / "MFNet/ir" / name), rng.integers(0, 256, size, dtype=np.uint8))
        cv2.imwrite(str(kit / "MFNet/vi" / name), rng.integers(0, 256, size, dtype=np.uint8))
        cv2.imwrite(str(kit / "MFNet/label" / name), rng.integers(0, 9, size, dtype=np.uint8))
    cv2.imwrite(str(kit / "tone/00556D.png"), rng.integers(0, 256, size, dtype=np.uint8))
    export_encoder_weights("tu-tf_efficientnet_lite0", kit / "lite0_imagenet_encoder.pt")


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_kit_run_quick_trains_and_saves_a_segmenter(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kit, out = tmp_path / "kit", tmp_path / "out"
    _tiny_kit(kit)
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts/gpu_kit.sh"), "run", str(kit), "--quick", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "pretrain.log").read_text().strip().splitlines()[-1])
    assert record["steps"] == 2 and record["sources"] == ["ir", "vi", "avg"] and "val" not in record
    assert record["encoder_weights"].endswith("lite0_imagenet_encoder.pt")
    assert len(record["train"]["avg"]["iou"]) == 9 and record["device"] == "cpu"
    from scripts import pretrain_segmenter

    assert pretrain_segmenter.main(["--root", str(kit / "MFNet"), "--val-root", str(kit / "MFNet"),
                                    "--encoder", "tu-tf_efficientnet_lite0", "--init", str(out / "segmenter.pt"),
                                    "--steps", "0", "--mode", "random_crop", "--patch", "64", "--eval-train", "0",
                                    "--threads", "1", "--quiet"]) == 0


def test_gpu_kit_refuses_a_missing_kit_and_unknown_options(tmp_path):
    script = str(ROOT / "scripts/gpu_kit.sh")
    missing = subprocess.run(["bash", script, "run", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "run: bash scripts/gpu_kit.sh prepare" in missing.stderr
    unknown = subprocess.run(["bash", script, "run", "--frobnicate"], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown option --frobnicate" in unknown.stderr
