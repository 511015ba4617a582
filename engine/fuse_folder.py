"""Fuse every infrared/visible pair of two folders and write the results (the work behind test.py).

Colour visible images are fused through their luminance and written as RGB (chroma from the visible image,
or the release's saturation-weighted chroma of both sources); gray ones are written gray. A missing
partner, a size mismatch or an unreadable file is reported by name and skipped; outputs are written
atomically and never over an input.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data.datasets import pair_files
from data.io import (
    ImageReadError,
    ImageWriteError,
    PairError,
    float_to_uint8,
    fuse_chroma_release,
    load_fusion_pair,
    recombine_color,
    write_image_atomic,
)
from engine.inference import FusedImage, fuse
from models.uaafusion import UAAFusion
from utils.atomic import atomic_open

log = logging.getLogger("uaafusion.test")


@dataclass
class FuseReport:
    """What happened: names written, and (name, reason) for every pair or file that failed."""

    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def heatmap_uint8(values: np.ndarray) -> np.ndarray:
    """(H, W) float → (H, W, 3) RGB uint8 heat-map of the map's own min..max (a constant map is dark)."""
    lo, hi = float(values.min()), float(values.max())
    scaled = np.zeros_like(values, dtype=np.float32) if hi <= lo else (values - lo) / (hi - lo)
    bgr = cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))


def _write_maps(out_dir: Path, name: str, result: FusedImage, index: int, inputs: list[str]) -> None:
    maps = {"w_ir": result.w_ir, "w_vi": result.w_vi}
    maps.update({f"att{k + 1}": a for k, a in enumerate(result.attention)})
    for key, tensor in maps.items():
        array = tensor[index, 0].cpu().numpy().astype(np.float32)
        save_npy_atomic(out_dir / "maps" / f"{name}_{key}.npy", array)
        if key.startswith("w_"):  # weights live in [0, 1]: keep that scale so images compare
            image = cv2.cvtColor(cv2.applyColorMap(float_to_uint8(array), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
        else:  # attention: each map scaled to its own range
            image = heatmap_uint8(array)
        write_image_atomic(out_dir / "maps" / f"{name}_{key}.png", image, forbid=inputs)


def _write_outputs(out_dir: Path, pair, sample: dict, result: FusedImage, index: int, output: str, chroma: str,
                   save_npy: bool, save_maps: bool, extension: str) -> None:
    """Write image ``index`` of a fused batch (and its raw output and maps when asked)."""
    inputs = [str(pair.ir), str(pair.vi)]
    fused = result.fused[index, 0].cpu().numpy().astype(np.float32)
    if not np.all(np.isfinite(fused)):
        raise ValueError("the network produced NaN/Inf values")
    if save_npy:
        save_npy_atomic(out_dir / "npy" / f"{pair.name}.npy", fused)
    luma = float_to_uint8(fused, output).astype(np.float32) / 255.0
    crcb = sample["vi_crcb"] if chroma == "visible" else fuse_chroma_release(sample["ir_crcb"], sample["vi_crcb"])
    write_image_atomic(out_dir / f"{pair.name}{extension}", float_to_uint8(recombine_color(luma, crcb)),
                       forbid=inputs)
    if save_maps:
        _write_maps(out_dir, pair.name, result, index, inputs)


def fuse_folder(
    model: UAAFusion,
    ir_dir: str | Path,
    vi_dir: str | Path,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    output: str = "clamp",
    chroma: str = "visible",
    tile: int | None = None,
    save_npy: bool = False,
    save_maps: bool = False,
    extension: str = ".png",
    show_progress: bool = True,
    batch_size: int = 1,
) -> FuseReport:
    """Fuse all pairs found by file stem in ``ir_dir`` and ``vi_dir`` into ``out_dir``.

    Args:
        output: ``clamp`` (default) or ``stretch`` (the release's per-image min–max, row 14).
        chroma: ``visible`` (chroma of the visible image) or ``release`` (row 14's weighted chroma).
        tile: fuse in tiles of this side for bounded memory on large images.
        save_npy: write ``out/npy/NAME.npy``, the float32 (H, W) network output before clamping/stretching.
        save_maps: write ``out/maps/NAME_w_ir.npy``, ``NAME_w_vi.npy``, ``NAME_att{k}.npy`` and PNG heat-maps.
        batch_size: consecutive pairs of the same size fused together (results do not depend on it in the
            paper profile: attribution treats batch items independently).
    """
    if output not in ("clamp", "stretch") or chroma not in ("visible", "release"):
        raise ValueError(f"output must be clamp|stretch and chroma visible|release, got {output!r}, {chroma!r}")
    report = FuseReport()
    out_dir = Path(out_dir)
    for folder in (ir_dir, vi_dir):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"input folder not found: {folder}")
        if out_dir.resolve() == Path(folder).resolve():
            raise ValueError(f"output folder {out_dir} is an input folder; choose another --out")
    pairs, problems = pair_files(ir_dir, vi_dir)
    for problem in problems:
        report.failed.append((problem.path, str(problem)))
        print(f"skipped: {problem}", file=sys.stderr)
    if not pairs:
        if not problems:
            report.failed.append((str(ir_dir), "no image pairs found"))
        print(f"error: no image pairs found in {ir_dir} and {vi_dir}", file=sys.stderr)
        return report
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create output folder {out_dir}: {err}") from err
    model.eval()
    pending: list[tuple] = []  # (pair, sample) of one image size, fused together

    def flush() -> None:
        if not pending:
            return
        names = [pair.name for pair, _ in pending]
        try:
            ir = torch.stack([torch.from_numpy(s["ir"])[None] for _, s in pending]).to(device)
            vi = torch.stack([torch.from_numpy(s["vi_y"])[None] for _, s in pending]).to(device)
            result = fuse(model, ir, vi, tile=tile)
        except (ValueError, RuntimeError) as err:
            for name in names:
                report.failed.append((name, str(err)))
                print(f"failed: {name}: {err}", file=sys.stderr)
            pending.clear()
            return
        for index, (pair, sample) in enumerate(pending):
            try:
                _write_outputs(out_dir, pair, sample, result, index, output, chroma, save_npy, save_maps, extension)
                report.written.append(pair.name)
            except (ImageWriteError, ValueError, OSError) as err:
                report.failed.append((pair.name, str(err)))
                print(f"failed: {pair.name}: {err}", file=sys.stderr)
        pending.clear()

    for pair in tqdm(pairs, desc="fusing", disable=not show_progress, unit="pair"):
        try:
            sample = load_fusion_pair(pair.ir, pair.vi)
        except (ImageReadError, PairError, ValueError, OSError) as err:
            report.failed.append((pair.name, str(err)))
            print(f"failed: {pair.name}: {err}", file=sys.stderr)
            continue
        if pending and pending[0][1]["ir"].shape != sample["ir"].shape:
            flush()
        pending.append((pair, sample))
        if len(pending) >= max(batch_size, 1):
            flush()
    flush()
    return report
