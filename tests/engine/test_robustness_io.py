"""test.py and eval_metrics.py on folders full of trouble: each bad file gets one clear line naming it, every
other pair is still processed, the exit code is non-zero, no partial output is left and inputs are untouched."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine.checkpoint import save_checkpoint
from engine.config import load_config
from models.uaafusion import build_model
from tests.helpers.scripts import test_cli

REPO = Path(__file__).resolve().parents[2]
H, W = 40, 36


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(None, ["fusion.stages=2", "fusion.channels=8", "attribution.ig_steps=1", "device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "num_classes": 4})
    return path


def _gray(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())  # bytes, so non-ASCII names work everywhere


def build_trouble(root: Path) -> tuple[Path, Path, dict[str, str], list[str]]:
    """Folders with every case of the issue. Returns (ir, vi, {bad name: expected words}, good names)."""
    ir, vi = root / "ir", root / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    good = []
    _write(ir / "plain.png", _gray(1))
    _write(vi / "plain.png", cv2.cvtColor(_gray(2), cv2.COLOR_GRAY2BGR) // 2 + 40)
    good.append("plain")
    _write(ir / "deep16.png", (_gray(3).astype(np.uint16) * 257))  # 16-bit
    _write(vi / "deep16.png", (_gray(4).astype(np.uint16) * 257))
    good.append("deep16")
    rgba = np.dstack([_gray(5), _gray(6), _gray(7), np.full((H, W), 200, np.uint8)])
    _write(ir / "alpha.png", _gray(8))
    _write(vi / "alpha.png", rgba)  # RGBA visible
    good.append("alpha")
    palette = Image.fromarray(_gray(9) // 64).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    _write(ir / "pal.png", _gray(10))
    palette.save(vi / "pal.png")  # palette visible
    good.append("pal")
    _write(ir / "swap.png", cv2.cvtColor(_gray(11), cv2.COLOR_GRAY2BGR) + np.array([0, 30, 60], np.uint8))
    _write(vi / "swap.png", _gray(12))  # colour infrared, gray visible
    good.append("swap")
    _write(ir / "straße_夜.png", _gray(13))  # non-ASCII name
    _write(vi / "straße_夜.png", _gray(14))
    good.append("straße_夜")
    bad = {}
    _write(ir / "lonely.png", _gray(15))
    bad["lonely"] = "no visible image"
    _write(ir / "sizes.png", _gray(16))
    _write(vi / "sizes.png", _gray(17, h=30))
    bad["sizes"] = "same size"
    (ir / "zero.png").write_bytes(b"")
    _write(vi / "zero.png", _gray(18))
    bad["zero"] = "empty"
    data = cv2.imencode(".png", _gray(19))[1].tobytes()
    (ir / "cut.png").write_bytes(data[: len(data) // 2])
    _write(vi / "cut.png", _gray(20))
    bad["cut"] = "cut.png"
    (ir / "text.png").write_text("this is not an image\n")
    _write(vi / "text.png", _gray(21))
    bad["text"] = "text.png"
    return ir, vi, bad, good


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in f.iterdir()}


def test_test_py_on_a_folder_of_trouble(tiny_checkpoint, tmp_path, capsys):
    ir, vi, bad, good = build_trouble(tmp_path / "in")
    before = _snapshot(ir, vi)
    out = tmp_path / "out"
    code = test_cli.main(["--checkpoint", str(tiny_checkpoint), "--ir", str(ir), "--vi", str(vi), "--out", str(out),
                          "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    for name, words in bad.items():
        lines = [line for line in err.splitlines() if name in line]
        assert lines, f"no message names {name}"
        assert any(words in line for line in lines), f"{name}: {lines}"
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(good)
    for name in good:
        image = cv2.imdecode(np.fromfile(out / f"{name}.png", np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape[:2] == (H, W)
    colour = cv2.imdecode(np.fromfile(out / "alpha.png", np.uint8), cv2.IMREAD_UNCHANGED)
    assert colour.ndim == 3 and colour.shape[2] == 3  # RGBA visible → RGB output (alpha dropped)
    assert cv2.imread(str(out / "swap.png"), cv2.IMREAD_UNCHANGED).ndim == 2  # gray visible → gray output
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert _snapshot(ir, vi) == before, "inputs were modified"


def test_test_py_empty_folder_and_unwritable_output(tiny_checkpoint, tmp_path, capsys):
    empty_ir, empty_vi = tmp_path / "eir", tmp_path / "evi"
    empty_ir.mkdir()
    empty_vi.mkdir()
    code = test_cli.main(["--checkpoint", str(tiny_checkpoint), "--ir", str(empty_ir), "--vi", str(empty_vi),
                          "--out", str(tmp_path / "o"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "eir" in captured.err and "evi" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "; 1 failed" in captured.out  # said once, counted once
    assert not (tmp_path / "o").exists()
    ir, vi, _, _ = build_trouble(tmp_path / "in")
    blocker = tmp_path / "a_file"
    blocker.write_text("occupied")
    code = test_cli.main(["--checkpoint", str(tiny_checkpoint), "--ir", str(ir), "--vi", str(vi),
                          "--out", str(blocker / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create output folder" in err and "a_file" in err
    code = test_cli.main(["--checkpoint", str(tiny_checkpoint), "--ir", str(ir), "--vi", str(ir),
                          "--out", str(ir), "--quiet"])
    assert code == 2 and "input" in capsys.readouterr().err  # writing into an input folder is refused


def test_an_ambiguous_stem_is_refused_by_both_tools(tiny_checkpoint, tmp_path, capsys):
    """dup.png and dup.jpg of different content: test.py and eval_metrics.py follow one rule (data.pairing):
    neither file is used, and both name the two files."""
    import eval_metrics

    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir()
    vi.mkdir()
    for name in ("dup", "fine"):
        _write(ir / f"{name}.png", _gray(1))
        _write(vi / f"{name}.png", _gray(2))
    _write(ir / "dup.jpg", _gray(3))
    out = tmp_path / "out"
    code = test_cli.main(["--checkpoint", str(tiny_checkpoint), "--ir", str(ir), "--vi", str(vi), "--out", str(out),
                          "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "dup.jpg, dup.png share the stem; none is used" in err
    assert sorted(p.name for p in out.iterdir()) == ["fine.png"]
    _write(out / "dup.png", _gray(4))  # a fused image for the ambiguous name: still not scored
    code = eval_metrics.main(["--ir", str(ir), "--vi", str(vi), "--fused", str(out), "--workers", "0",
                              "--no-progress", "--metrics", "EN"])
    err = capsys.readouterr().err
    assert code == 1 and "dup.jpg, dup.png share the stem; none is used" in err


def test_eval_metrics_on_a_folder_of_trouble(tmp_path):
    ir, vi, _, _ = build_trouble(tmp_path / "in")
    fused = tmp_path / "fused"
    fused.mkdir()
    for name, image in {"plain": _gray(30), "alpha": np.dstack([_gray(31)] * 3 + [_gray(32)]),
                        "straße_夜": _gray(33), "deep16": _gray(34).astype(np.uint16) * 257}.items():
        _write(fused / f"{name}.png", image)
    Image.fromarray(_gray(35) // 64).convert("P").save(fused / "pal.png")
    data = cv2.imencode(".png", _gray(36))[1].tobytes()
    (fused / "swap.png").write_bytes(data[: len(data) // 3])  # truncated fused file
    before = _snapshot(ir, vi, fused)
    json_out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(REPO / "eval_metrics.py"), "--ir", str(ir), "--vi", str(vi),
                           "--fused", f"ours={fused}", "--json", str(json_out), "--no-progress", "--workers", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "swap" in proc.stderr  # truncated fused file named
    assert "lonely" in proc.stderr or "sizes" in proc.stderr  # source problems named
    import json

    per_image = json.loads(json_out.read_text())["methods"]["ours"]["per_image"]
    assert {"plain", "alpha", "straße_夜", "deep16", "pal"} <= set(per_image)
    assert "swap" not in per_image
    assert _snapshot(ir, vi, fused) == before
    blocked = tmp_path / "a_file"
    blocked.write_text("occupied")
    proc = subprocess.run([sys.executable, str(REPO / "eval_metrics.py"), "--ir", str(ir), "--vi", str(vi),
                           "--fused", f"ours={fused}", "--json", str(blocked / "m.json"), "--no-progress",
                           "--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    # checked before any image is read (exit 2, one line, no traceback, nothing evaluated)
    assert proc.returncode == 2 and "a_file" in proc.stderr and "cannot create output folder" in proc.stderr
    assert "Traceback" not in proc.stderr and "swap" not in proc.stderr
