"""One joint training step of the full model (paper mode): every parameter, ρ included, gets a finite gradient."""
from __future__ import annotations

import torch

from losses import UAAFusionLoss
from models.uaafusion import build_model


def test_one_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    cfg = {"fusion": {"stages": 2, "channels": 8}, "segmenter": {"encoder": "mobilenet_v2"},
           "attribution": {"ig_steps": 2}}
    model = build_model(cfg, num_classes=3).train()
    ir, vi = torch.rand(2, 2, 1, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    out = model(ir, vi, labels)
    seg = {"ir": model.segmenter(ir), "vi": model.segmenter(vi), "fused": model.segmenter(out.fused)}
    terms = UAAFusionLoss()(out.fused, ir, vi, out.w_ir, out.w_vi, seg, labels)
    terms["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    # The first stage's ConvLSTM starts from the zero state (Eq. 15), so its state convolution only contributes
    # its bias: the weight multiplies zeros and has no influence on anything (its gradient would be exactly 0).
    assert missing == ["fusion.stages.0.lstm.conv_h.weight"], f"no gradient for {missing[:5]}"
    assert not nonfinite, f"non-finite gradient for {nonfinite[:5]}"
    assert all(stage.rho.grad.abs() > 0 for stage in model.fusion.stages)
    # attribution outputs are constants for the fusion network
    assert not out.w_ir.requires_grad and not any(a.requires_grad for a in out.attention)
    assert torch.count_nonzero(out.attention[0]) == 0 and torch.count_nonzero(out.attention[1]) > 0


def test_attribution_leaves_segmenter_state_alone_in_paper_mode():
    torch.manual_seed(0)
    model = build_model({"fusion": {"stages": 2, "channels": 8}}, num_classes=3).train()
    before = {k: v.clone() for k, v in model.segmenter.state_dict().items()}
    ir, vi = torch.rand(2, 2, 1, 32, 32)
    with torch.no_grad():
        model.attribute(ir, vi, torch.randint(0, 3, (2, 32, 32)))
    after = model.segmenter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # eval-mode copy: BN statistics untouched
    assert model.segmenter.training
    assert all(p.grad is None for p in model.segmenter.parameters())


def test_attribution_stays_float32_under_autocast():
    torch.manual_seed(0)
    model = build_model({"fusion": {"stages": 2, "channels": 8}, "attribution": {"ig_steps": 1}}, num_classes=3)
    ir, vi = torch.rand(2, 2, 1, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ir, vi, labels)
    assert out.w_ir.dtype == torch.float32 and out.a_ir.dtype == torch.float32
    assert all(a.dtype == torch.float32 for a in out.attention)
    assert out.fused.dtype == torch.bfloat16  # the fusion network itself runs under autocast
