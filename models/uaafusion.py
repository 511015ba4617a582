"""UAAFusion as a whole: the fusion network steered by attribution from the jointly trained segmenter.

One forward pass (Fig. 1):
  1. I^(0) = (I_ir + I_vi)/2; regions R = ground-truth labels in training, argmax S(I^(0)) at inference.
  2. w_ir, w_vi = class-wise IG weights of I_ir and I_vi over R (Eq. 5–8).
  3. The fusion network runs its K stages; before each one, the path attention (Eq. 9–12) of the
     outputs so far gives A.
Attribution uses an eval-mode scoring copy of the segmenter (paper) or the live segmenter in whatever mode
it is in (release row 15); it is computed in float32 (float64 for float64 inputs) outside autocast, and all of
it is detached. With ``per_image=True`` (inference) the segmenter passes run one image at a time, so that a
batch gives exactly what each image gives alone (batched convolutions round differently, and the ReLU/ratio of
Eq. 8 can magnify such round-off; docs/DECISIONS.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from models.attribution import (
    AttributionSettings,
    PathAttention,
    apply_score_activation,
    ig_attribution_weights,
    masked_mean_score_fn,
    region_one_hot,
    region_score_fn,
)
from models.fusion_net import FusionOutput, UAAFusionNet
from models.scoring import prepare_scoring_model
from models.segmenter import build_segmenter, segmenter_stride, view_scores


@dataclass
class UAAFusionOutput(FusionOutput):
    """Everything one pass produces: the fusion network's :class:`FusionOutput` (fused, initial, stages,
    attention) and the attribution that steered it. Images (N, 1, H, W); ``regions`` (N, H, W) long;
    ``a_ir``/``a_vi`` the region attributions before the ReLU, (N, C) per image or (C,) pooled (release row 5)."""

    w_ir: torch.Tensor | None = None
    w_vi: torch.Tensor | None = None
    regions: torch.Tensor | None = None
    a_ir: torch.Tensor | None = None
    a_vi: torch.Tensor | None = None

    def map_images(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> UAAFusionOutput:
        """A copy with ``fn`` applied to every per-pixel tensor (images, maps, regions), e.g. a crop."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("a_ir", "a_vi") or value is None:
                values[f.name] = value
            elif isinstance(value, list):
                values[f.name] = [fn(v) for v in value]
            else:
                values[f.name] = fn(value)
        return UAAFusionOutput(**values)


class UAAFusion(nn.Module):
    """Fusion network + segmenter + attribution settings.

    Args:
        fusion: the unfolded fusion network.
        segmenter: maps (B, 1, H, W) to raw scores (B, C, H, W).
        num_classes: C.
        attribution: :class:`AttributionSettings`.
    """

    def __init__(
        self, fusion: UAAFusionNet, segmenter: nn.Module, num_classes: int, attribution: AttributionSettings
    ) -> None:
        super().__init__()
        self.fusion = fusion
        self.segmenter = segmenter
        self.num_classes = num_classes
        self.attribution = attribution
        self._scoring_cache: tuple[tuple, nn.Module] | None = None

    # -------------------------------------------------------------------------------- attribution

    def _weights_version(self) -> tuple:
        return tuple((id(t), t._version) for t in (*self.segmenter.parameters(), *self.segmenter.buffers()))

    def scoring_model(self) -> nn.Module:
        """The network attribution differentiates (see the module docstring)."""
        if self.attribution.segmenter_mode == "follow":
            return self.segmenter
        settings = self.attribution
        key = (self._weights_version(), settings.fold_batchnorm, settings.fast_scoring)
        if self._scoring_cache is None or self._scoring_cache[0] != key:
            scoring = prepare_scoring_model(self.segmenter, settings.fold_batchnorm, settings.fast_scoring)
            self._scoring_cache = (key, scoring)
        return self._scoring_cache[1]

    def predict_regions(
        self, image: torch.Tensor, scoring: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions (argmax, (N, H, W)) and scores (N, C, H, W) of the segmenter on ``image`` (no gradient).

        With several views (``attribution.region_scales`` / ``region_flip``, an extension): the argmax of the mean
        softmax of the views' raw scores, and the mean of their activated scores.
        """
        scoring = scoring or self.scoring_model()
        settings = self.attribution
        with torch.no_grad():
            if settings.single_region_view:
                scores = apply_score_activation(scoring(image), settings.score_activation)
                return scores.argmax(dim=1), scores
            views = view_scores(scoring, image, tuple(settings.region_scales), settings.region_flip,
                                segmenter_stride(self.segmenter))
            regions = torch.stack([v.softmax(dim=1) for v in views]).mean(dim=0).argmax(dim=1)
            scores = torch.stack([apply_score_activation(v, settings.score_activation) for v in views]).mean(dim=0)
        return regions, scores

    def attribute(
        self, ir: torch.Tensor, vi: torch.Tensor, labels: torch.Tensor | None = None, per_image: bool = False
    ) -> tuple[dict, PathAttention | None]:
        """IG weights and the (not yet started) path attention for one batch. Float32 (or float64), detached.

        ``per_image``: run the segmenter passes image by image (batch-invariant results) when the settings treat
        batch items independently (not with the release's batch pooling, masked-mean score or train-mode IG).
        """
        settings = self.attribution
        couples_batch = (settings.region_pooling == "batch" or settings.attention_score == "masked_mean"
                         or settings.segmenter_mode == "follow")
        if per_image and ir.shape[0] > 1 and not couples_batch:
            parts = [self.attribute(ir[i:i + 1], vi[i:i + 1], None if labels is None else labels[i:i + 1])
                     for i in range(ir.shape[0])]
            weights = {key: torch.cat([w[key] for w, _ in parts]) for key in parts[0][0]}
            attentions = [a for _, a in parts]
            return weights, (PerImageAttention(attentions) if attentions[0] is not None else None)
        scoring = self.scoring_model()
        initial = self.fusion.initial_estimate(ir, vi)
        if labels is None:
            regions, soft_mask = self.predict_regions(initial, scoring)
            mask = soft_mask  # release row 4 at inference: the segmenter's output on I^(0)
        else:
            regions = labels
            mask = region_one_hot(labels, self.num_classes, settings.ignore_index, ir.dtype)
        if settings.weights == "uniform":  # the ablation: no class-wise attribution
            half = torch.full_like(ir, 0.5)
            zeros = ir.new_zeros(ir.shape[0], self.num_classes)
            weights = {"w_ir": half, "w_vi": half.clone(), "a_ir": zeros, "a_vi": zeros.clone()}
        else:
            weights = ig_attribution_weights(scoring, ir, vi, regions, self.num_classes, settings)
        weights["regions"] = regions
        weights["initial"] = initial
        attention = None
        if self.fusion.uses_attention:
            if settings.attention_score == "region":
                score_fn = region_score_fn(scoring, regions, self.num_classes, settings.score_activation,
                                           settings.ignore_index)
            else:
                score_fn = masked_mean_score_fn(scoring, mask.detach(), settings.score_activation)
            attention = PathAttention(score_fn, settings.attention, settings.attention_substeps,
                                      settings.attention_reduction, settings.attention_initial_gradient,
                                      settings.attention_normalize)
        return weights, attention

    # ------------------------------------------------------------------------------------ forward

    def forward(
        self, ir: torch.Tensor, vi: torch.Tensor, labels: torch.Tensor | None = None, per_image: bool = False
    ) -> UAAFusionOutput:
        """Fuse a batch. ir, vi: (N, 1, H, W) in [0, 1]; labels: (N, H, W) long (training) or None (inference,
        regions from the segmenter); ``per_image``: batch-invariant attribution (see :meth:`attribute`)."""
        with torch.autocast(device_type=ir.device.type, enabled=False):
            dtype = attribution_dtype(ir)
            weights, attention = self.attribute(ir.to(dtype), vi.to(dtype), labels, per_image)
        out: FusionOutput = self.fusion(
            ir, vi, weights["w_ir"], weights["w_vi"], _FullPrecisionAttention(attention, dtype) if attention else None,
            initial=weights["initial"],
        )
        return UAAFusionOutput(
            fused=out.fused, initial=out.initial, stages=out.stages, attention=out.attention,
            w_ir=weights["w_ir"], w_vi=weights["w_vi"], regions=weights["regions"],
            a_ir=weights["a_ir"], a_vi=weights["a_vi"],
        )


class PerImageAttention:
    """Path attention of a batch computed image by image (one :class:`PathAttention` per image)."""

    def __init__(self, parts: list[PathAttention]) -> None:
        self.parts = parts

    def start(self, initial: torch.Tensor) -> None:
        for i, part in enumerate(self.parts):
            part.start(initial[i:i + 1])

    def observe(self, stage_output: torch.Tensor) -> None:
        for i, part in enumerate(self.parts):
            part.observe(stage_output[i:i + 1])

    def map_for_next_stage(self) -> torch.Tensor:
        return torch.cat([part.map_for_next_stage() for part in self.parts])


def attribution_dtype(image: torch.Tensor) -> torch.dtype:
    """Attribution runs in float32 (float64 when the inputs are float64), never in a reduced precision."""
    return torch.float64 if image.dtype == torch.float64 else torch.float32


class _FullPrecisionAttention:
    """Runs every attention gradient in float32 (or float64) with autocast off, whatever the caller's context."""

    def __init__(self, inner: PathAttention, dtype: torch.dtype = torch.float32) -> None:
        self.inner = inner
        self.dtype = dtype
        self.device_type = "cpu"

    def start(self, initial: torch.Tensor) -> None:
        self.device_type = initial.device.type
        with torch.autocast(device_type=self.device_type, enabled=False):  # start may take a gradient (row 15)
            self.inner.start(initial.to(self.dtype))

    def observe(self, stage_output: torch.Tensor) -> None:
        self.inner.observe(stage_output.to(self.dtype))

    def map_for_next_stage(self) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, enabled=False):
            return self.inner.map_for_next_stage()


def build_model(cfg: dict, num_classes: int, encoder_weights: bool = True) -> UAAFusion:
    """Build UAAFusion from the ``fusion``, ``segmenter`` and ``attribution`` blocks of a config dict.

    Each block's keys are the constructor arguments of :class:`UAAFusionNet`, :func:`build_segmenter` and
    :class:`AttributionSettings`; an unknown key raises a TypeError naming it. The attribution's ignore index is
    the dataset's (``data.ignore_index``, one key for labels, regions and L_seg). ``encoder_weights=False`` leaves
    ``segmenter.encoder_weights`` unread (random initial weights, the same random draws), for callers that fill
    every segmenter weight from a file next, so that file needs no encoder package, download or weight file.
    """
    fusion = UAAFusionNet(**cfg.get("fusion", {}))
    segmenter_cfg = dict(cfg.get("segmenter", {}))
    if not encoder_weights:
        segmenter_cfg["encoder_weights"] = None
    segmenter = build_segmenter(num_classes=num_classes, **segmenter_cfg)
    attribution_cfg = dict(cfg.get("attribution", {}))
    if "data" in cfg and "ignore_index" in cfg["data"]:
        attribution_cfg.setdefault("ignore_index", cfg["data"]["ignore_index"])
    attribution = AttributionSettings(**attribution_cfg)
    return UAAFusion(fusion, segmenter, num_classes, attribution)
