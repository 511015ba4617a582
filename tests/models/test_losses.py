"""Losses of Eq. 16–17 on tiny hand-computable inputs, each switch, and the release's intensity form."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losses import LossSettings, UAAFusionLoss, gradient_loss, intensity_loss, segmentation_loss


def test_intensity_loss_golden():
    fused = torch.tensor([[[[0.5, 1.0]]]])
    ir = torch.tensor([[[[0.0, 1.0]]]])
    vi = torch.tensor([[[[1.0, 0.0]]]])
    w_ir = torch.tensor([[[[0.25, 0.5]]]])
    w_vi = 1 - w_ir
    # pixel 1: 0.25*0.25 + 0.75*0.25 = 0.25; pixel 2: 0.5*0 + 0.5*1 = 0.5 → mean 0.375
    assert intensity_loss(fused, ir, vi, w_ir, w_vi).item() == pytest.approx(0.375)
    # release row 7: mean(w1² d1²) + mean(w2² d2²) = (0.0625*0.25 + 0)/2 + (0.5625*0.25 + 0.25*1)/2
    expected = (0.0625 * 0.25) / 2 + (0.5625 * 0.25 + 0.25) / 2
    assert intensity_loss(fused, ir, vi, w_ir, w_vi, "release_squared_weight").item() == pytest.approx(expected)


def test_gradient_loss_golden():
    ir = torch.zeros(1, 1, 3, 3)
    vi = torch.zeros(1, 1, 3, 3)
    vi[..., 1, 1] = 1.0  # a bright dot: Sobel magnitudes around it
    fused = torch.zeros(1, 1, 3, 3)
    # |∇vi| at the 8 neighbours: corners |±1|+|±1| = 2, edge-centres 2 (one of Gx/Gy = ±2), centre 0 → sum 16
    assert gradient_loss(fused, ir, vi).item() == pytest.approx(16 / 9)
    assert gradient_loss(vi, ir, vi).item() == pytest.approx(0.0)


def test_segmentation_loss_is_mean_of_ce_and_ignores():
    torch.manual_seed(0)
    outs = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0, 0] = 255
    expected = sum(F.cross_entropy(o, labels, ignore_index=255) for o in outs) / 3
    assert segmentation_loss(outs, labels).item() == pytest.approx(expected.item())
    no_zero = labels.masked_fill(labels == 0, 255)
    expected0 = sum(F.cross_entropy(o, no_zero, ignore_index=255) for o in outs) / 3
    assert segmentation_loss(outs, labels, ignore_classes=[0]).item() == pytest.approx(expected0.item())
    all_ignored = torch.full_like(labels, 255)
    assert segmentation_loss(outs, all_ignored).item() == 0.0


def _batch():
    torch.manual_seed(1)
    fused, ir, vi, w_ir = (torch.rand(2, 1, 5, 5) for _ in range(4))
    seg = {k: torch.randn(2, 3, 5, 5) for k in ("ir", "vi", "fused")}
    labels = torch.randint(0, 3, (2, 5, 5))
    return fused, ir, vi, w_ir, 1 - w_ir, seg, labels


def test_total_is_weighted_sum_and_terms_are_reported():
    fused, ir, vi, w_ir, w_vi, seg, labels = _batch()
    terms = UAAFusionLoss(LossSettings(lambda_grad=2.0, mu_seg=0.5))(fused, ir, vi, w_ir, w_vi, seg, labels)
    assert set(terms) == {"int", "grad", "seg", "total"}
    assert terms["total"].item() == pytest.approx(terms["int"].item() + 2 * terms["grad"].item()
                                                  + 0.5 * terms["seg"].item(), rel=1e-6)


@pytest.mark.parametrize("switch,missing", [(dict(use_intensity=False), "int"), (dict(use_gradient=False), "grad"),
                                            (dict(use_segmentation=False), "seg")])
def test_each_term_switches_off(switch, missing):
    fused, ir, vi, w_ir, w_vi, seg, labels = _batch()
    full = UAAFusionLoss()(fused, ir, vi, w_ir, w_vi, seg, labels)
    part = UAAFusionLoss(LossSettings(**switch))(fused, ir, vi, w_ir, w_vi, seg, labels)
    assert missing not in part and part["total"].item() != pytest.approx(full["total"].item())


def test_seg_on_fused_only_ablation_viii():
    fused, ir, vi, w_ir, w_vi, seg, labels = _batch()
    terms = UAAFusionLoss(LossSettings(seg_sources=["fused"]))(fused, ir, vi, w_ir, w_vi, seg, labels)
    assert terms["seg"].item() == pytest.approx(F.cross_entropy(seg["fused"], labels).item())


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="intensity_form"):
        LossSettings(intensity_form="l1")
    with pytest.raises(ValueError, match="seg_sources"):
        LossSettings(seg_sources=["depth"])
