"""The auxiliary segmenter: DeepLabV3+ from segmentation-models-pytorch (paper) or the release's own network.

The segmenter returns raw class scores (B, C, H, W): logits for DeepLabV3+, sigmoid outputs for the release's
network (release row 8). Input: (B, 1, H, W) in [0, 1]. DeepLabV3+ needs H and W divisible by its output
stride; :func:`pad_to_multiple` and :func:`segmenter_stride` give what callers need to pad and crop back.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import tv_compat  # noqa: F401  (must run before segmentation_models_pytorch imports torchvision)
from models.pretrained import PACKAGED_IMAGENET, PretrainedWeightsError, load_packaged_imagenet_

log = logging.getLogger(__name__)

SEGMENTER_ARCHS = ("deeplabv3plus", "release_mobilenetv2")


class SegmenterWeightsError(RuntimeError):
    """A local weight file for the segmenter is missing or does not fit the network."""


def _load_local_weights(model: nn.Module, path: Path) -> None:
    """Load a local file holding a full-model or encoder-only state dict (optionally under 'state_dict')."""
    if not path.is_file():
        raise SegmenterWeightsError(f"segmenter.encoder_weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — report any unreadable file the same way
        raise SegmenterWeightsError(f"segmenter.encoder_weights: cannot read {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SegmenterWeightsError(f"segmenter.encoder_weights: {path} does not hold a state dict")
    target = model
    if not any(k.startswith("encoder.") for k in state) and hasattr(model, "encoder"):
        target = model.encoder  # an encoder-only file
    own = target.state_dict()
    adapted = {}
    for key, value in state.items():
        if key in own and own[key].shape != value.shape and value.dim() == 4 and own[key].shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)  # RGB stem → one channel, as smp does for in_channels=1
        adapted[key] = value
    if target is not model:  # classification heads of ImageNet encoder files are not part of the segmenter
        adapted = {k: v for k, v in adapted.items() if not k.startswith(("classifier.", "fc.", "head."))}
    # nn.Module's own method: smp encoders override load_state_dict without returning the key report
    missing, unexpected = nn.Module.load_state_dict(target, adapted, strict=False)
    if unexpected or (target is model and missing):
        raise SegmenterWeightsError(
            f"segmenter.encoder_weights: {path} does not fit the network "
            f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]})"
        )
    if missing:
        raise SegmenterWeightsError(f"segmenter.encoder_weights: {path} lacks encoder keys, e.g. {missing[:3]}")


def build_segmenter(
    num_classes: int,
    arch: str = "deeplabv3plus",
    encoder: str = "mobilenet_v2",
    encoder_weights: str | None = None,
    in_channels: int = 1,
    output: str | None = None,
) -> nn.Module:
    """Build the segmenter.

    Args:
        num_classes: C (15 for FMB, 9 for MSRS).
        arch: ``deeplabv3plus`` (smp) or ``release_mobilenetv2`` (the release's network, its profile only).
        encoder: any smp encoder name (default the light ``mobilenet_v2``).
        encoder_weights: None (random init), ``imagenet``, or a path to a local state-dict file (full model or
            encoder only). ``imagenet`` comes from an installed package for the encoders of
            ``models.pretrained.PACKAGED_IMAGENET`` (``tu-tf_efficientnet_lite0``, ``timm-tf_efficientnet_lite0``,
            ``tu-tf_efficientnet_lite1``, ``tu-tf_efficientnet_lite2``: no network needed); for the others it
            needs the hub and falls back to random init with a warning when offline.
        in_channels: input channels (1: gray images; an RGB ImageNet stem is summed over its channels).
        output: ``logits`` (default for DeepLabV3+) or ``sigmoid`` (default for the release network).
    """
    if arch == "release_mobilenetv2":
        from models.release.segmenter import ReleaseSegmenter

        model = ReleaseSegmenter(num_classes=num_classes, in_channels=in_channels, output=output or "sigmoid")
        if encoder_weights not in (None, "", "none"):
            _load_local_weights(model, Path(encoder_weights))
        return model
    if arch != "deeplabv3plus":
        raise ValueError(f"segmenter.arch must be one of {SEGMENTER_ARCHS}, got {arch!r}")
    import segmentation_models_pytorch as smp

    activation = {None: None, "logits": None, "sigmoid": "sigmoid"}.get(output, "invalid")
    if activation == "invalid":
        raise ValueError(f"segmenter.output must be 'logits' or 'sigmoid', got {output!r}")
    kwargs = dict(encoder_name=encoder, in_channels=in_channels, classes=num_classes, activation=activation)
    local = encoder_weights not in (None, "", "none", "imagenet") or (
        isinstance(encoder_weights, str) and os.path.sep in encoder_weights
    )
    packaged = encoder_weights == "imagenet" and encoder in PACKAGED_IMAGENET
    if encoder_weights in (None, "", "none") or local or packaged:
        model = smp.DeepLabV3Plus(encoder_weights=None, **kwargs)
        if local:
            _load_local_weights(model, Path(encoder_weights))
        if packaged:
            try:
                load_packaged_imagenet_(encoder, model.encoder)
            except PretrainedWeightsError as err:
                raise SegmenterWeightsError(str(err)) from err
        return model
    try:
        return smp.DeepLabV3Plus(encoder_weights=encoder_weights, **kwargs)
    except Exception as err:  # noqa: BLE001 — offline hub errors come in several types
        warnings.warn(
            f"segmenter.encoder_weights={encoder_weights!r} could not be fetched ({type(err).__name__}); "
            "using random initialisation instead. Put a local weight file path in segmenter.encoder_weights "
            "to start from pretrained weights offline.",
            stacklevel=2,
        )
        return smp.DeepLabV3Plus(encoder_weights=None, **kwargs)


def export_encoder_weights(encoder: str, path: str | os.PathLike, in_channels: int = 1) -> int:
    """Write the encoder of ``build_segmenter(..., encoder_weights="imagenet")`` (packaged weights, mapped, input
    normalisation folded, ``in_channels`` stem) as an encoder-only state-dict file that ``encoder_weights`` accepts
    as a local file: the same weights on machines without the weight package (scripts/gpu_kit.sh). The file is
    written atomically; returns its size in bytes."""
    import io

    from utils.atomic import atomic_write_bytes

    if encoder not in PACKAGED_IMAGENET:
        raise SegmenterWeightsError(f"no packaged ImageNet weights for encoder {encoder!r}; packaged: "
                                    f"{sorted(PACKAGED_IMAGENET)}")
    model = build_segmenter(2, encoder=encoder, encoder_weights="imagenet", in_channels=in_channels)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.contiguous() for k, v in model.encoder.state_dict().items()}}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return buffer.getbuffer().nbytes


def segmenter_stride(segmenter: nn.Module) -> int:
    """The multiple that input sides must have (16 for DeepLabV3+ at output stride 16, 1 if unconstrained)."""
    if hasattr(segmenter, "encoder") and hasattr(segmenter.encoder, "output_stride"):
        return int(segmenter.encoder.output_stride)
    return int(getattr(segmenter, "input_multiple", 1))


def segment(segmenter: nn.Module, image: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """The segmenter's scores for images of any size: padded to its stride (or ``multiple``), run without
    gradient, cropped back. The one pad-and-crop of the project.

    image: (N, C_in, H, W) in [0, 1] → (N, C, H, W). The segmenter's mode (train/eval) is left as it is.
    """
    padded, (h, w) = pad_to_multiple(image, multiple or segmenter_stride(segmenter))
    with torch.no_grad():
        return segmenter(padded)[..., :h, :w]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (N, C, H, W) at the bottom/right so H and W are multiples; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def view_scores(model: nn.Module, image: torch.Tensor, scales: tuple[float, ...] = (1.0,), flip: bool = False,
                multiple: int | None = None) -> list[torch.Tensor]:
    """The model's raw scores on rescaled and mirrored views of ``image``, each mapped back onto the image.

    A view is ``image`` resized by a factor s of ``scales`` (bilinear) and, with ``flip``, also mirrored left to
    right; it is padded to ``multiple``, scored, cropped, mirrored back and resized (bilinear) to the image's size.
    The view at scale 1 without mirroring is the plain pass: its scores are exactly ``model(image)`` (after the
    pad-and-crop). DeepLabV3+'s multi-scale evaluation (Chen et al., ECCV 2018) averages such views.

    image: (N, C_in, H, W) → a list of (N, C, H, W), one per view: scales in order, each unmirrored then mirrored.
    Runs without gradient; the model's mode is left as it is.
    """
    height, width = image.shape[-2:]
    out = []
    for scale in scales:
        if scale == 1:
            resized = image
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            scores = segment(model, resized.flip(-1) if mirrored else resized, multiple)
            if mirrored:
                scores = scores.flip(-1)
            if scores.shape[-2:] != (height, width):
                scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
            out.append(scores)
    return out
