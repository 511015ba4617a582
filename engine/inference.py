"""Fusing whole images of any size: pad to what the segmenter needs, fuse, crop back; tiling for large images.

Inference runs under ``torch.no_grad()`` (not ``inference_mode``: attribution differentiates the segmenter
inside, which ``inference_mode`` tensors cannot take part in). Attribution runs image by image
(``per_image=True``), so fusing a batch gives what fusing each image alone gives (see models/uaafusion.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.runtime import autocast_context
from models.segmenter import pad_to_multiple, segmenter_stride
from models.uaafusion import UAAFusion, UAAFusionOutput

TILE_OVERLAP = 32
MIN_TILE = 64
# Peak memory of fusing (process RSS), paper model (5 stages, 32 channels, DeepLabV3+/MobileNetV2), float32, CPU:
# about 450 MiB plus 4.4 KB per pixel of what is fused at once, plus 64 B per pixel of the whole image for the
# averaged tile outputs (measured at 640x480, 1024x768 and 2048x1536: docs/PERFORMANCE.md "Memory").
BYTES_PER_PIXEL = 4_400
FIXED_BYTES = 450 * 2**20
TILED_BYTES_PER_PIXEL = 64


def estimated_peak_bytes(height: int, width: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Rough peak memory of fusing a batch of (height, width) images in one piece (see BYTES_PER_PIXEL)."""
    scale = 2 if dtype == torch.float64 else 1
    return FIXED_BYTES + BYTES_PER_PIXEL * scale * height * width * batch


def tile_for_budget(height: int, width: int, budget_bytes: int | None, batch: int = 1,
                    dtype: torch.dtype = torch.float32) -> int | None:
    """The largest square tile (multiple of 32, at least MIN_TILE) whose fusion fits ``budget_bytes``; None when
    the whole image fits (or no budget is set)."""
    if budget_bytes is None or estimated_peak_bytes(height, width, batch, dtype) <= budget_bytes:
        return None
    per_pixel = estimated_peak_bytes(1, 1, batch, dtype) - FIXED_BYTES
    room = budget_bytes - FIXED_BYTES - TILED_BYTES_PER_PIXEL * height * width * batch
    side = int(math.sqrt(max(room, 0) / per_pixel)) // 32 * 32
    return max(side, MIN_TILE)


def pad_inputs(model: UAAFusion, ir: torch.Tensor, vi: torch.Tensor, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """Reflect-pad (N, 1, H, W) sources to the segmenter's stride (labels with the ignore index: padding is no
    region); returns (ir, vi, labels, (H, W)) for cropping back. The release's own segmenter needs no padding."""
    if min(ir.shape[-2:]) < 2:
        raise ValueError(f"image of {ir.shape[-1]}x{ir.shape[-2]} pixels is too small to fuse (at least 2x2)")
    multiple = segmenter_stride(model.segmenter)
    ir_p, (h, w) = pad_to_multiple(ir, multiple)
    vi_p, _ = pad_to_multiple(vi, multiple)
    if labels is not None and labels.shape[-2:] != ir_p.shape[-2:]:
        pad = (0, ir_p.shape[-1] - w, 0, ir_p.shape[-2] - h)
        labels = F.pad(labels, pad, value=model.attribution.ignore_index)
    return ir_p, vi_p, labels, (h, w)


def _fuse_padded(model: UAAFusion, ir: torch.Tensor, vi: torch.Tensor, labels: torch.Tensor | None,
                 amp: str) -> UAAFusionOutput:
    ir_p, vi_p, labels, (h, w) = pad_inputs(model, ir, vi, labels)
    with torch.no_grad(), autocast_context(amp, ir.device):
        out = model(ir_p, vi_p, labels=labels, per_image=True)
    dtype = torch.float64 if ir.dtype == torch.float64 else torch.float32
    return out.map_images(lambda t: t[..., :h, :w] if t.dtype == torch.long else t[..., :h, :w].to(dtype))


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def fuse(
    model: UAAFusion,
    ir: torch.Tensor,
    vi: torch.Tensor,
    tile: int | None = None,
    overlap: int = TILE_OVERLAP,
    amp: str = "none",
    labels: torch.Tensor | None = None,
    show_progress: bool = False,
) -> UAAFusionOutput:
    """Fuse (N, 1, H, W) images in [0, 1]; with ``tile`` set, fuse overlapping tiles and average the overlaps.

    Args:
        tile: tile side (> ``overlap``); None fuses the whole image. Tiling bounds memory on large images;
            attribution then sees each tile separately (regions and weights per tile), a documented approximation
            of whole-image fusion.
        amp: ``none`` | ``bf16`` | ``fp16``: autocast for the fusion network where the device supports it;
            attribution stays float32.
        labels: (N, H, W) long label maps: regions from labels (the training path) instead of the segmenter's
            argmax on I^(0).
        show_progress: a progress bar over the tiles.

    Returns:
        The outputs cropped to (H, W), in the input's float dtype (float32 or float64); ``regions`` long.
        Tiled results average images and maps over overlaps; their regions are the last tile's, ``a_ir``/``a_vi``
        are None.
    """
    h, w = ir.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return _fuse_padded(model, ir, vi, labels, amp)
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than the overlap ({overlap})")
    acc: dict[str, torch.Tensor] = {}
    regions = torch.zeros(ir.shape[0], h, w, dtype=torch.long)
    count = torch.zeros(ir.shape[0], 1, h, w, dtype=ir.dtype)
    origins = [(y, x) for y in _tile_starts(h, tile, overlap) for x in _tile_starts(w, tile, overlap)]
    for y, x in tqdm(origins, desc="tiles", unit="tile", disable=not show_progress, leave=False):
        window = (..., slice(y, y + tile), slice(x, x + tile))
        part = _fuse_padded(model, ir[window], vi[window], None if labels is None else labels[window], amp)
        pieces = {"fused": part.fused, "initial": part.initial, "w_ir": part.w_ir, "w_vi": part.w_vi}
        pieces.update({f"att{k}": a for k, a in enumerate(part.attention)})
        pieces.update({f"stage{k}": s for k, s in enumerate(part.stages)})
        for name, value in pieces.items():
            acc.setdefault(name, torch.zeros(ir.shape[0], 1, h, w, dtype=value.dtype))
            acc[name][window] += value.cpu()
        regions[window] = part.regions.cpu()
        count[window] += 1
    avg = {k: v / count for k, v in acc.items()}
    stages = [avg[f"stage{k}"] for k in range(sum(k.startswith("stage") for k in avg))]
    attention = [avg[f"att{k}"] for k in range(sum(k.startswith("att") for k in avg))]
    return UAAFusionOutput(fused=avg["fused"], initial=avg["initial"], stages=stages, attention=attention,
                           w_ir=avg["w_ir"], w_vi=avg["w_vi"], regions=regions)
