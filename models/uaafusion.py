"""UAAFusion as a whole: the fusion network steered by attribution from the jointly trained segmenter.

One forward pass (Fig. 1):
  1. I^(0) = (I_ir + I_vi)/2; regions R = ground-truth labels in training, argmax S(I^(0)) at inference.
  2. w_ir, w_vi = class-wise IG weights of I_ir and I_vi over R (Eq. 5–8).
  3. The fusion network runs its K stages; before each one, the path attention (Eq. 9–12) of the
     outputs so far gives A.
Attribution uses an eval-mode scoring copy of the segmenter (paper) or the live segmenter in whatever mode
it is in (release row 15); it is computed in float32 outside autocast, and all of it is detached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.attribution import (
    AttributionSettings,
    PathAttention,
    apply_score_activation,
    ig_attribution_weights,
    masked_mean_score_fn,
    prepare_scoring_model,
    region_one_hot,
    region_score_fn,
)
from models.fusion_net import FusionOutput, UAAFusionNet
from models.segmenter import build_segmenter


@dataclass
class UAAFusionOutput:
    """Everything one pass produces. Images (N, 1, H, W); ``regions`` (N, H, W) long."""

    fused: torch.Tensor
    initial: torch.Tensor
    stages: list[torch.Tensor]
    attention: list[torch.Tensor]
    w_ir: torch.Tensor
    w_vi: torch.Tensor
    regions: torch.Tensor
    a_ir: torch.Tensor
    a_vi: torch.Tensor
    extras: dict = field(default_factory=dict)


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
        key = (self._weights_version(), self.attribution.fold_batchnorm)
        if self._scoring_cache is None or self._scoring_cache[0] != key:
            self._scoring_cache = (key, prepare_scoring_model(self.segmenter, self.attribution.fold_batchnorm))
        return self._scoring_cache[1]

    def predict_regions(
        self, image: torch.Tensor, scoring: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions (argmax, (N, H, W)) and scores (N, C, H, W) of the segmenter on ``image`` (no gradient)."""
        scoring = scoring or self.scoring_model()
        with torch.no_grad():
            scores = apply_score_activation(scoring(image), self.attribution.score_activation)
        return scores.argmax(dim=1), scores

    def attribute(
        self, ir: torch.Tensor, vi: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[dict, PathAttention | None]:
        """IG weights and the (not yet started) path attention for one batch. Float32, detached."""
        settings = self.attribution
        scoring = self.scoring_model()
        initial = self.fusion.initial_estimate(ir, vi)
        if labels is None:
            regions, soft_mask = self.predict_regions(initial, scoring)
            mask = soft_mask  # release row 4 at inference: the segmenter's output on I^(0)
        else:
            regions = labels
            mask = region_one_hot(labels, self.num_classes, settings.ignore_index, ir.dtype)
        weights = ig_attribution_weights(scoring, ir, vi, regions, self.num_classes, settings)
        weights["regions"] = regions
        attention = None
        if self.fusion.uses_attention:
            if settings.attention_score == "region":
                score_fn = region_score_fn(scoring, regions, self.num_classes, settings.score_activation,
                                           settings.ignore_index)
            else:
                score_fn = masked_mean_score_fn(scoring, mask.detach(), settings.score_activation)
            attention = PathAttention(score_fn, settings.attention, settings.attention_substeps,
                                      settings.attention_reduction)
        return weights, attention

    # ------------------------------------------------------------------------------------ forward

    def forward(self, ir: torch.Tensor, vi: torch.Tensor, labels: torch.Tensor | None = None) -> UAAFusionOutput:
        """Fuse a batch. ir, vi: (N, 1, H, W) in [0, 1]; labels: (N, H, W) long (training) or None (inference)."""
        with torch.autocast(device_type=ir.device.type, enabled=False):
            weights, attention = self.attribute(ir.float(), vi.float(), labels)
        out: FusionOutput = self.fusion(
            ir, vi, weights["w_ir"], weights["w_vi"], _Float32Attention(attention) if attention else None
        )
        return UAAFusionOutput(
            fused=out.fused, initial=out.initial, stages=out.stages, attention=out.attention,
            w_ir=weights["w_ir"], w_vi=weights["w_vi"], regions=weights["regions"],
            a_ir=weights["a_ir"], a_vi=weights["a_vi"],
        )


class _Float32Attention:
    """Runs every attention gradient in float32 with autocast off, whatever the caller's context."""

    def __init__(self, inner: PathAttention) -> None:
        self.inner = inner

    def start(self, initial: torch.Tensor) -> None:
        self.inner.start(initial.float())

    def observe(self, stage_output: torch.Tensor) -> None:
        self.inner.observe(stage_output.float())

    def map_for_next_stage(self) -> torch.Tensor:
        with torch.autocast(device_type=self.inner.path[0].device.type, enabled=False):
            return self.inner.map_for_next_stage()


def build_model(cfg: dict, num_classes: int) -> UAAFusion:
    """Build UAAFusion from the ``fusion``, ``segmenter`` and ``attribution`` blocks of a config dict.

    Each block's keys are the constructor arguments of :class:`UAAFusionNet`, :func:`build_segmenter` and
    :class:`AttributionSettings`; an unknown key raises a TypeError naming it.
    """
    fusion = UAAFusionNet(**cfg.get("fusion", {}))
    segmenter = build_segmenter(num_classes=num_classes, **cfg.get("segmenter", {}))
    attribution = AttributionSettings(**cfg.get("attribution", {}))
    return UAAFusion(fusion, segmenter, num_classes, attribution)
