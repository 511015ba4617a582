"""Fuse every infrared/visible pair of two folders and write the results (the work behind test.py).

Colour visible images are fused through their luminance and written as RGB (chroma from the visible image,
or the release's saturation-weighted chroma of both sources); gray ones are written gray. A missing
partner, a size mismatch or an unreadable file is reported by name and skipped. A pair's outputs (image,
``.npy``, maps) are written all or nothing, each atomically, and never over an input.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data.datasets import pair_files
from data.io import (
    IMAGE_EXTENSIONS,
    INPUT_READINGS,
    ImageReadError,
    ImageWriteError,
    PairError,
    encode_image,
    float_to_uint8,
    fuse_chroma_release,
    load_fusion_pair,
    read_label,
    recombine_color,
    same_file,
)
from data.layouts import colorize_labels
from engine.inference import MIN_TILE, TILE_OVERLAP, fuse, tile_for_budget
from models.uaafusion import UAAFusion, UAAFusionOutput
from utils.atomic import atomic_write_group

log = logging.getLogger("uaafusion.test")

OUTPUTS = ("clamp", "stretch")
CHROMAS = ("visible", "release")
PRECISIONS = ("float32", "float64")
AMPS = ("none", "bf16", "fp16")
DEFAULT_MAX_MEMORY_GB = 8.0
# output formats: lossless, and read back by every tool of the project (data.io.IMAGE_EXTENSIONS)
OUTPUT_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
assert set(OUTPUT_EXTENSIONS) <= set(IMAGE_EXTENSIONS)


@dataclass
class FuseSettings:
    """How ``fuse_folder`` fuses and what it writes (``test.py`` options; ``test:`` config block).

    Attributes:
        output: ``clamp`` (default) or ``stretch`` (the release's per-image min–max, release row 14).
        chroma: ``visible`` (chroma of the visible image) or ``release`` (row 14's weighted chroma of both).
        tile: fuse in tiles of this side (at least 64, twice the 32-pixel overlap, so that every tile advances by
            at least 32 pixels); None: whole images, or automatic tiles (at least 64) when an image would need more
            than ``max_memory_gb``.
        max_memory_gb: memory budget that chooses tiles automatically (None: never tile automatically).
        save_npy: also write ``out/npy/NAME.npy``, the raw (H, W) output before clamping/stretching (float32,
            float64 with ``precision: float64``).
        save_maps: also write ``out/maps/NAME_w_ir/_w_vi/_att{k}.npy`` and PNG heat-maps, and the regions of the
            attribution (the segmenter's classes on I^(0), or the given labels) as ``NAME_regions.png`` (uint8
            class index, the input's size) and ``NAME_regions_color.png`` (the class palette of ``data.layouts``),
            and ``NAME_attribution.json`` (per region: pixels, a_ir, a_vi before the ReLU, w_ir; not when tiled,
            nor with uniform weights).
        extension: output image extension, one of :data:`OUTPUT_EXTENSIONS` (lossless formats that the project's
            readers, ``eval_metrics.py`` included, read back unchanged).
        batch_size: consecutive pairs of the same size fused together (attribution runs per image, so results
            equal single-pair fusion up to float32 round-off of the batched fusion network; docs/DECISIONS.md).
        amp: ``none`` (float32), ``bf16`` or ``fp16`` autocast for the fusion network (engine.runtime).
        precision: ``float32`` or ``float64`` (model and inputs; the exact mode for comparing implementations).
        labels_dir: regions from ground-truth label maps paired by file stem (the training path) instead of the
            segmenter's argmax on I^(0).
        input_reading: ``exact`` (v / 255 for 8-bit gray files) or ``release`` (the luminance as the authors'
            release reads it: float32 YCrCb of 8-bit RGB in [0, 255], Y / 255; release row 16).
        show_progress: progress bars (over pairs, and over the tiles of a tiled image).
    """

    output: str = "clamp"
    chroma: str = "visible"
    tile: int | None = None
    max_memory_gb: float | None = DEFAULT_MAX_MEMORY_GB
    save_npy: bool = False
    save_maps: bool = False
    extension: str = ".png"
    batch_size: int = 1
    amp: str = "none"
    precision: str = "float32"
    labels_dir: str | None = None
    input_reading: str = "exact"
    show_progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first unusable setting (checked before any work)."""
        choices = {"output": OUTPUTS, "chroma": CHROMAS, "precision": PRECISIONS, "amp": AMPS,
                   "input_reading": INPUT_READINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.tile is not None and self.tile < 2 * TILE_OVERLAP:
            raise ValueError(f"tile (--tile, test.tile) must be at least {2 * TILE_OVERLAP}, twice the {TILE_OVERLAP}-"
                             f"pixel overlap of neighbouring tiles (each tile then advances by at least {TILE_OVERLAP} "
                             f"pixels; automatic tiles are at least {MIN_TILE}), got {self.tile}")
        if self.max_memory_gb is not None and not (math.isfinite(self.max_memory_gb) and self.max_memory_gb > 0):
            raise ValueError(f"--max-memory (test.max_memory_gb) must be a positive finite number of GB (0 on the "
                             f"command line: never tile automatically), got {self.max_memory_gb}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not re.fullmatch(r"\.[A-Za-z0-9]{1,5}", self.extension):
            raise ValueError(f"extension must look like '.png' (a dot and 1-5 letters/digits), got {self.extension!r}")
        if self.extension.lower() not in OUTPUT_EXTENSIONS or not cv2.haveImageWriter(f"x{self.extension}"):
            raise ValueError(f"--ext {self.extension} is not allowed: outputs are written in a lossless format "
                             "that the project's readers (eval_metrics.py included) read back: "
                             f"{', '.join(OUTPUT_EXTENSIONS)}")
        if self.precision == "float64" and self.amp != "none":
            raise ValueError("precision float64 and amp autocast exclude each other")
        if self.labels_dir is not None and not Path(self.labels_dir).is_dir():
            raise ValueError(f"labels folder not found: {self.labels_dir}")


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


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file of ``array`` (its dtype kept)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    return buffer.getvalue()


def _map_files(out_dir: Path, name: str, result: UAAFusionOutput, index: int, dtype: np.dtype,
               attributed: bool = True) -> dict[Path, bytes]:
    maps = {"w_ir": result.w_ir, "w_vi": result.w_vi}
    # att1 is A^(1) = 0 by construction (the path has no segment before stage 1); kept so that k matches the stage
    maps.update({f"att{k + 1}": a for k, a in enumerate(result.attention)})
    files: dict[Path, bytes] = {}
    for key, tensor in maps.items():
        array = tensor[index, 0].cpu().numpy().astype(dtype)
        files[out_dir / "maps" / f"{name}_{key}.npy"] = npy_bytes(array)
        if key.startswith("w_"):  # weights live in [0, 1]: keep that scale so images compare
            image = cv2.cvtColor(cv2.applyColorMap(float_to_uint8(array), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
        else:  # attention: each map scaled to its own range
            image = heatmap_uint8(array)
        files[out_dir / "maps" / f"{name}_{key}.png"] = encode_image(image, ".png")
    if result.regions is not None:  # what the segmenter saw (or the given labels): one class index per pixel
        regions = result.regions[index].cpu().numpy()
        if regions.min() < 0 or regions.max() > 255:
            raise ValueError(f"region classes outside 0..255 ({regions.min()}..{regions.max()}) cannot be saved")
        regions = regions.astype(np.uint8)
        files[out_dir / "maps" / f"{name}_regions.png"] = encode_image(regions, ".png")
        files[out_dir / "maps" / f"{name}_regions_color.png"] = encode_image(colorize_labels(regions), ".png")
        if attributed and result.a_ir is not None and result.a_vi is not None:
            files[out_dir / "maps" / f"{name}_attribution.json"] = attribution_record(result, index)
    return files


def region_attributions(regions: np.ndarray, a_ir: np.ndarray, a_vi: np.ndarray,
                        w_ir: np.ndarray) -> list[dict[str, float | int]]:
    """Per class present in ``regions`` ((H, W) class indices; values outside 0..C-1, such as the ignore index,
    are no region): its pixel count, Eq. 8's region attributions ``a_ir[c]``, ``a_vi[c]`` ((C,), before the ReLU)
    and the region's mean of ``w_ir`` ((H, W), float64 mean)."""
    classes, counts = np.unique(regions, return_counts=True)
    return [{"class": int(c), "pixels": int(n), "a_ir": float(a_ir[c]), "a_vi": float(a_vi[c]),
             "w_ir": float(w_ir[regions == c].astype(np.float64).mean())}
            for c, n in zip(classes.tolist(), counts.tolist()) if 0 <= c < len(a_ir)]


def attribution_record(result: UAAFusionOutput, index: int) -> bytes:
    """Why each region of pair ``index`` got its weight, as JSON bytes: per class present in its region map, the
    pixel count, Eq. 8's region attributions a_ir, a_vi before the ReLU, and the region's w_ir
    (:func:`region_attributions`).

    A region whose a_ir and a_vi are both ≤ 0 takes w_ir = 0.5 exactly (ε / 2ε): neither source raises the class
    score above the zero baseline's. Not written with ``attribution.weights: uniform`` (nothing is attributed).
    """
    pooled = result.a_ir.dim() == 1  # (C,) pooled over the batch (release row 5), else (N, C)
    a_ir = result.a_ir if pooled else result.a_ir[index]
    a_vi = result.a_vi if pooled else result.a_vi[index]
    entries = region_attributions(result.regions[index].cpu().numpy(), a_ir.detach().cpu().double().numpy(),
                                  a_vi.detach().cpu().double().numpy(), result.w_ir[index, 0].detach().cpu().numpy())
    return (json.dumps({"pooled_over_batch": pooled, "regions": entries}, indent=1) + "\n").encode()


def pair_outputs(out_dir: Path, name: str, sample: dict, result: UAAFusionOutput, index: int,
                 settings: FuseSettings, attributed: bool = True) -> dict[Path, bytes]:
    """Every file of pair ``index`` of a fused batch, encoded in memory: path → bytes. ``attributed``: the weights
    came from attribution (not ``attribution.weights: uniform``), so there are region attributions to record."""
    raw = result.fused[index, 0].cpu().numpy()
    if not np.all(np.isfinite(raw)):
        raise ValueError("the network produced NaN/Inf values")
    dtype = np.float64 if settings.precision == "float64" else np.float32
    files: dict[Path, bytes] = {}
    if settings.save_npy:
        files[out_dir / "npy" / f"{name}.npy"] = npy_bytes(raw.astype(dtype))
    luma = float_to_uint8(raw.astype(np.float32), settings.output).astype(np.float32) / 255.0
    crcb = sample["vi_crcb"] if settings.chroma == "visible" else fuse_chroma_release(sample["ir_crcb"],
                                                                                      sample["vi_crcb"])
    files[out_dir / f"{name}{settings.extension}"] = encode_image(float_to_uint8(recombine_color(luma, crcb)),
                                                                  settings.extension)
    if settings.save_maps:
        files.update(_map_files(out_dir, name, result, index, dtype, attributed))
    return files


def _check_not_inputs(files: dict[Path, bytes], inputs: list[Path]) -> None:
    for path in files:
        for source in inputs:
            if same_file(path, source):
                raise ImageWriteError(f"refusing to write '{path}': it is an input file ('{source}')")


def _load_labels(labels_dir: Path, name: str, shape: tuple[int, int], num_classes: int,
                 ignore_index: int) -> np.ndarray:
    """The label map of pair ``name``: same size as the images, every value a class of the model or the ignore value."""
    matches = sorted(p for p in labels_dir.glob(f"{name}.*") if p.is_file())
    if not matches:
        raise PairError(f"no label named '{name}.*' in {labels_dir}")
    label = read_label(matches[0])
    if label.shape != shape:
        raise PairError(f"label '{matches[0]}' is {label.shape[1]}x{label.shape[0]} (WxH) but the images are "
                        f"{shape[1]}x{shape[0]}")
    values = np.unique(label)
    foreign = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if foreign.size:
        shown = ", ".join(str(v) for v in foreign[:8]) + (", ..." if foreign.size > 8 else "")
        raise PairError(f"label '{matches[0]}' holds class ids the model does not have: {shown} (its classes are "
                        f"0..{num_classes - 1}; {ignore_index} marks unlabelled pixels)")
    return label


def prepare_output(out_dir: Path, settings: FuseSettings) -> None:
    """Create ``out_dir`` (and ``maps/``, ``npy/`` when asked for) and check that files can be created in each, before
    any pair is fused; on failure, folders created here are removed again.

    Raises:
        OSError: a folder cannot be created or written into (the message names it).
    """
    folders = [out_dir] + [out_dir / sub for sub, wanted in (("maps", settings.save_maps),
                                                             ("npy", settings.save_npy)) if wanted]
    created: list[Path] = []
    try:
        for folder in folders:
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(f"cannot create output folder {folder}: {err.strerror or err}") from None
            created += reversed(missing)
            try:
                handle, probe = tempfile.mkstemp(prefix=".write-test-", suffix=".tmp", dir=folder)
            except OSError as err:
                raise OSError(f"cannot write into output folder {folder}: {err.strerror or err}") from None
            os.close(handle)
            os.unlink(probe)
    except OSError:
        for folder in reversed(created):  # deepest first; only folders this call created (empty)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def fuse_folder(
    model: UAAFusion,
    ir_dir: str | Path,
    vi_dir: str | Path,
    out_dir: str | Path,
    settings: FuseSettings | None = None,
    device: torch.device | str = "cpu",
) -> FuseReport:
    """Fuse all pairs found by file stem in ``ir_dir`` and ``vi_dir`` into ``out_dir`` (see :class:`FuseSettings`).

    Raises:
        ValueError: unusable settings, or ``out_dir`` is one of the input folders (nothing is written then).
        FileNotFoundError: an input folder is missing.
        OSError: ``out_dir`` (or ``maps/``, ``npy/``) cannot be created or written into (checked before fusing).
    """
    settings = settings or FuseSettings()
    settings.validate()
    report = FuseReport()
    out_dir = Path(out_dir)
    for folder in (ir_dir, vi_dir):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"input folder not found: {folder}")
        if same_file(out_dir, Path(folder)):
            raise ValueError(f"output folder {out_dir} is an input folder ({folder}); choose another --out")
    pairs, problems = pair_files(ir_dir, vi_dir)
    folder_problems = [p for p in problems if p.kind in ("empty-folder", "missing-folder")] if not pairs else []
    for problem in problems:
        if problem not in folder_problems:
            report.failed.append((problem.path, str(problem)))
            tqdm.write(f"skipped: {problem}", file=sys.stderr)
    if not pairs:  # one failure, one line (the folder problems folded in)
        reasons = "".join(f"; {p.path}: {p.detail.split(' (')[0]}" for p in folder_problems)
        known = f" (image files: {', '.join(IMAGE_EXTENSIONS)})" if folder_problems else ""
        message = f"no image pairs found in {ir_dir} and {vi_dir}{reasons}{known}"
        report.failed.append((str(ir_dir), message))
        print(f"error: {message}", file=sys.stderr)
        return report
    prepare_output(out_dir, settings)
    model.eval()
    dtype = torch.float64 if settings.precision == "float64" else torch.float32
    budget = None if settings.max_memory_gb is None else int(settings.max_memory_gb * 2**30)
    labels_dir = Path(settings.labels_dir) if settings.labels_dir else None
    pending: list[tuple] = []  # (pair, sample) of one image size, fused together

    def fail(name: str, err: Exception) -> None:
        report.failed.append((name, str(err)))
        tqdm.write(f"failed: {name}: {err}", file=sys.stderr)

    def flush() -> None:
        if not pending:
            return
        names = [pair.name for pair, _ in pending]
        try:
            ir = torch.stack([torch.from_numpy(s["ir"])[None] for _, s in pending]).to(device, dtype)
            vi = torch.stack([torch.from_numpy(s["vi_y"])[None] for _, s in pending]).to(device, dtype)
            labels = None
            if labels_dir is not None:
                labels = torch.stack([torch.from_numpy(s["label"]) for _, s in pending]).to(device)
            tile = settings.tile or tile_for_budget(*ir.shape[-2:], budget, ir.shape[0], dtype)
            result = fuse(model, ir, vi, tile=tile, amp=settings.amp, labels=labels,
                          show_progress=settings.show_progress and tile is not None)
        except (ValueError, RuntimeError) as err:
            for name in names:
                fail(name, err)
            pending.clear()
            return
        for index, (pair, sample) in enumerate(pending):
            try:
                files = pair_outputs(out_dir, pair.name, sample, result, index, settings,
                                     attributed=model.attribution.weights != "uniform")
                _check_not_inputs(files, [Path(pair.ir), Path(pair.vi)])
                atomic_write_group(files)
                report.written.append(pair.name)
            except (ImageWriteError, ValueError, OSError) as err:
                fail(pair.name, err)
        pending.clear()

    for pair in tqdm(pairs, desc="fusing", disable=not settings.show_progress, unit="pair"):
        try:
            sample = load_fusion_pair(pair.ir, pair.vi, settings.input_reading)
            if labels_dir is not None:
                sample["label"] = _load_labels(labels_dir, pair.name, sample["ir"].shape, model.num_classes,
                                               model.attribution.ignore_index)
        except (ImageReadError, PairError, ValueError, OSError) as err:
            fail(pair.name, err)
            continue
        if pending and pending[0][1]["ir"].shape != sample["ir"].shape:
            flush()
        pending.append((pair, sample))
        if len(pending) >= settings.batch_size:
            flush()
    flush()
    return report
