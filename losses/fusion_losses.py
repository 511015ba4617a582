"""L_total = L_int + λ L_grad + μ L_seg (Eq. 16–17), each term switchable, returned one by one in a dict.

Shapes: images (N, 1, H, W) in [0, 1]; weights w_ir, w_vi (N, 1, H, W) constants; labels (N, H, W) long;
segmenter outputs (N, C, H, W).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from losses.class_weights import check_seg_class_weights
from models.blocks import sobel_magnitude

INTENSITY_FORMS = ("weighted", "release_squared_weight")
SEG_SOURCES = ("ir", "vi", "fused")


def intensity_loss(
    fused: torch.Tensor, ir: torch.Tensor, vi: torch.Tensor, w_ir: torch.Tensor, w_vi: torch.Tensor,
    form: str = "weighted",
) -> torch.Tensor:
    """L_int. ``weighted`` (Eq. 17): mean(w1 ⊙ (I_f − I_ir)² + w2 ⊙ (I_f − I_vi)²).

    ``release_squared_weight`` (release row 7): MSE(w1 ⊙ I_f, w1 ⊙ I_ir) + MSE(w2 ⊙ I_f, w2 ⊙ I_vi),
    i.e. the weights enter squared.
    """
    w_ir, w_vi = w_ir.detach(), w_vi.detach()
    if form == "weighted":
        return (w_ir * (fused - ir) ** 2 + w_vi * (fused - vi) ** 2).mean()
    if form == "release_squared_weight":
        return F.mse_loss(w_ir * fused, w_ir * ir) + F.mse_loss(w_vi * fused, w_vi * vi)
    raise ValueError(f"loss.intensity_form must be one of {INTENSITY_FORMS}, got {form!r}")


def gradient_loss(fused: torch.Tensor, ir: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
    """L_grad = mean | |∇I_f| − max(|∇I_ir|, |∇I_vi|) | with |∇·| = |Sobel_x| + |Sobel_y| (zero padding)."""
    target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vi))
    return (sobel_magnitude(fused) - target).abs().mean()


def segmentation_loss(
    outputs: Sequence[torch.Tensor], labels: torch.Tensor, ignore_index: int = 255,
    ignore_classes: Sequence[int] = (), class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the given segmenter outputs of the pixel-mean cross-entropy (Eq. 17's L_seg).

    Labels equal to ``ignore_index`` or in ``ignore_classes`` (release row 9: class 0) do not count.
    The outputs are fed to cross-entropy as they are (logits; the release feeds its sigmoid outputs).
    ``class_weights`` (C,): an extension (``loss.seg_class_weights``): each pixel's loss weighted by its label's
    weight, the mean taken as Σ w_y · CE / Σ w_y (PyTorch's weighted cross-entropy); None is the paper's L_seg.
    """
    if ignore_classes:
        drop = torch.zeros_like(labels, dtype=torch.bool)
        for c in ignore_classes:
            drop |= labels == c
        labels = labels.masked_fill(drop, ignore_index)
    if not bool((labels != ignore_index).any()):
        return sum(out.sum() * 0.0 for out in outputs) / len(outputs)  # nothing labelled: zero, graph kept
    weight = None if class_weights is None else class_weights.to(device=labels.device, dtype=torch.float32)
    losses = [F.cross_entropy(out.float(), labels, weight=weight, ignore_index=ignore_index) for out in outputs]
    return sum(losses) / len(losses)


@dataclass
class LossSettings:
    """The YAML block ``loss:``.

    Attributes:
        lambda_grad: λ (paper 1).
        mu_seg: μ (paper 0.1).
        use_intensity, use_gradient, use_segmentation: drop a term (ablations III, IV).
        seg_sources: which images L_seg averages over (paper: ir, vi, fused; ablation VIII: fused only).
        intensity_form: ``weighted`` (paper) or ``release_squared_weight`` (row 7).
        ignore_index: label value that CE skips.
        ignore_classes: classes CE also skips (release row 9: [0]).
        seg_class_weights: **an extension, not in the paper**: class weights of L_seg's cross-entropy (also in the
            segmenter's pre-training), ``null`` (paper: plain cross-entropy), ``median`` (median-frequency weights
            median(f)/f_c from the training labels' class shares, capped at 50; computed when training starts),
            ``log`` (ENet's 1 / ln(1.02 + f_c), milder; the usual weighting on MFNet) or a list of one number per
            class. Against a segmenter that predicts only a dominant class
            (docs/RESULTS.md).
    """

    lambda_grad: float = 1.0
    mu_seg: float = 0.1
    use_intensity: bool = True
    use_gradient: bool = True
    use_segmentation: bool = True
    seg_sources: list[str] = field(default_factory=lambda: list(SEG_SOURCES))
    intensity_form: str = "weighted"
    ignore_index: int = 255
    ignore_classes: list[int] = field(default_factory=list)
    seg_class_weights: str | list[float] | None = None

    def __post_init__(self) -> None:
        check_seg_class_weights(self.seg_class_weights)
        if self.intensity_form not in INTENSITY_FORMS:
            raise ValueError(f"loss.intensity_form must be one of {INTENSITY_FORMS}, got {self.intensity_form!r}")
        bad = [s for s in self.seg_sources if s not in SEG_SOURCES]
        if bad or not self.seg_sources:
            raise ValueError(f"loss.seg_sources must be a non-empty subset of {SEG_SOURCES}, got {self.seg_sources}")


class UAAFusionLoss(nn.Module):
    """Eq. 16. ``forward`` returns {"total", and each active term: "int", "grad", "seg"} (scalars).

    ``class_weights``: L_seg's resolved class weights (C,) (``losses.class_weights.resolve_seg_class_weights``), or
    None for plain cross-entropy.
    """

    def __init__(self, settings: LossSettings | None = None, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.settings = settings or LossSettings()
        if class_weights is None and self.settings.seg_class_weights is not None:
            raise ValueError("loss.seg_class_weights is set: pass the resolved class_weights "
                             "(losses.class_weights.resolve_seg_class_weights)")
        self.class_weights = class_weights

    def forward(
        self,
        fused: torch.Tensor,
        ir: torch.Tensor,
        vi: torch.Tensor,
        w_ir: torch.Tensor,
        w_vi: torch.Tensor,
        seg_outputs: Mapping[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        fused, ir, vi = fused.float(), ir.float(), vi.float()
        terms: dict[str, torch.Tensor] = {}
        total = fused.new_zeros(())
        if s.use_intensity:
            terms["int"] = intensity_loss(fused, ir, vi, w_ir.float(), w_vi.float(), s.intensity_form)
            total = total + terms["int"]
        if s.use_gradient:
            terms["grad"] = gradient_loss(fused, ir, vi)
            total = total + s.lambda_grad * terms["grad"]
        if s.use_segmentation and labels is not None:
            if seg_outputs is None:
                raise ValueError("segmentation loss needs the segmenter outputs for " + ", ".join(s.seg_sources))
            terms["seg"] = segmentation_loss([seg_outputs[k] for k in s.seg_sources], labels, s.ignore_index,
                                             s.ignore_classes, self.class_weights)
            total = total + s.mu_seg * terms["seg"]
        terms["total"] = total
        return terms
