"""On a GPU (skipped without CUDA): the device path agrees with the CPU, AMP keeps attribution in float32, and a
training step runs under bf16 and fp16 with a GradScaler. scripts/gpu_check.sh runs these first."""
from __future__ import annotations

import pytest
import torch

from engine.inference import fuse
from engine.runtime import autocast_context
from losses import LossSettings, UAAFusionLoss
from models.uaafusion import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CFG = {"fusion": {"stages": 3, "channels": 16}, "segmenter": {"encoder_weights": None}, "attribution": {"ig_steps": 2}}


def _model(device: str):
    torch.manual_seed(0)
    return build_model(CFG, num_classes=5).to(device)


def test_fusing_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    ir, vi = torch.rand(2, 1, 64, 80, generator=g), torch.rand(2, 1, 64, 80, generator=g)
    cpu = fuse(_model("cpu").eval(), ir, vi)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on the GPU
    try:
        cuda = fuse(_model("cuda").eval(), ir.cuda(), vi.cuda())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    torch.testing.assert_close(cuda.w_ir.cpu(), cpu.w_ir, rtol=0, atol=1e-3)
    torch.testing.assert_close(cuda.fused.cpu(), cpu.fused, rtol=0, atol=1e-3)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_step_under_autocast(amp):
    model = _model("cuda").train()
    g = torch.Generator().manual_seed(1)
    ir, vi = (torch.rand(4, 1, 64, 64, generator=g).cuda() for _ in range(2))
    labels = torch.randint(0, 5, (4, 64, 64), generator=g).cuda()
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    device = torch.device("cuda")
    with autocast_context(amp, device):
        out = model(ir, vi, labels)
        seg = {k: model.segmenter(x) for k, x in (("ir", ir), ("vi", vi), ("fused", out.fused))}
        terms = UAAFusionLoss(LossSettings())(out.fused, ir, vi, out.w_ir, out.w_vi, seg, labels)
    assert out.w_ir.dtype == torch.float32 and all(a.dtype == torch.float32 for a in out.attention)
    assert out.fused.dtype in (torch.bfloat16, torch.float16)
    scaler.scale(terms["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(terms["total"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
