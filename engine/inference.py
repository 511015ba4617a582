"""Fusing whole images of any size: pad to what the segmenter needs, fuse, crop back; optional tiling.

Inference runs under ``torch.no_grad()`` (not ``inference_mode``: attribution differentiates the segmenter
inside, which ``inference_mode`` tensors cannot take part in).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.segmenter import pad_to_multiple, segmenter_stride
from models.uaafusion import UAAFusion


@dataclass
class FusedImage:
    """Network outputs for one batch, cropped to the input size. All (N, 1, H, W) float32.

    ``fused`` is the raw network output (before any clamping or stretching); ``attention`` holds the map
    A each stage used; ``w_ir``/``w_vi`` the attribution weights.
    """

    fused: torch.Tensor
    w_ir: torch.Tensor
    w_vi: torch.Tensor
    attention: list[torch.Tensor]
    stages: list[torch.Tensor]


def _fuse_padded(model: UAAFusion, ir: torch.Tensor, vi: torch.Tensor) -> FusedImage:
    if min(ir.shape[-2:]) < 2:
        raise ValueError(f"image of {ir.shape[-1]}x{ir.shape[-2]} pixels is too small to fuse (at least 2x2)")
    multiple = segmenter_stride(model.segmenter)  # the release's own segmenter runs unpadded (multiple 1)
    ir_p, (h, w) = pad_to_multiple(ir, multiple)
    vi_p, _ = pad_to_multiple(vi, multiple)
    with torch.no_grad():
        out = model(ir_p, vi_p, labels=None)

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[..., :h, :w].float()

    return FusedImage(crop(out.fused), crop(out.w_ir), crop(out.w_vi), [crop(a) for a in out.attention],
                      [crop(s) for s in out.stages])


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def fuse(
    model: UAAFusion, ir: torch.Tensor, vi: torch.Tensor, tile: int | None = None, overlap: int = 32
) -> FusedImage:
    """Fuse (N, 1, H, W) images in [0, 1]; with ``tile`` set, fuse overlapping tiles and average the overlaps.

    Tiling bounds memory on large images; attribution then sees each tile separately (regions and weights
    per tile), which is a documented approximation of whole-image fusion.
    """
    h, w = ir.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return _fuse_padded(model, ir, vi)
    if tile <= overlap:
        raise ValueError(f"test.tile ({tile}) must be larger than the overlap ({overlap})")
    acc: dict[str, torch.Tensor] = {}
    count = torch.zeros(ir.shape[0], 1, h, w)
    for y in _tile_starts(h, tile, overlap):
        for x in _tile_starts(w, tile, overlap):
            part = _fuse_padded(model, ir[..., y:y + tile, x:x + tile], vi[..., y:y + tile, x:x + tile])
            pieces = {"fused": part.fused, "w_ir": part.w_ir, "w_vi": part.w_vi}
            pieces.update({f"att{k}": a for k, a in enumerate(part.attention)})
            pieces.update({f"stage{k}": s for k, s in enumerate(part.stages)})
            for name, value in pieces.items():
                acc.setdefault(name, torch.zeros(ir.shape[0], 1, h, w))
                acc[name][..., y:y + tile, x:x + tile] += value.cpu()
            count[..., y:y + tile, x:x + tile] += 1
    avg = {k: v / count for k, v in acc.items()}
    stages = sorted((k for k in avg if k.startswith("stage")), key=lambda k: int(k[len("stage"):]))
    atts = sorted((k for k in avg if k.startswith("att")), key=lambda k: int(k[len("att"):]))
    return FusedImage(avg["fused"], avg["w_ir"], avg["w_vi"], [avg[k] for k in atts], [avg[k] for k in stages])
