"""The unfolded fusion network (Eq. 2-4, 13-15): the gradient step, the ConvLSTM, memories, attention, switches."""
from __future__ import annotations

import pytest
import torch

from models.attribution import AttributionSettings
from models.blocks import ConvLSTMCell, ConvUnit, sobel_magnitude
from models.fusion_net import DataTerm, Memory, UAAFusionNet, UnfoldingStage
from models.uaafusion import UAAFusion
from tests.helpers.toy_models import TinyConvSegmenter


def _inputs(n=2, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ir, vi, w_ir = (torch.rand(n, 1, h, w, generator=g) for _ in range(3))
    return ir, vi, w_ir, 1 - w_ir


def test_gradient_step_is_eq3_and_rho_starts_at_paper_value():
    stage = UnfoldingStage(channels=8)
    assert stage.rho.item() == pytest.approx(0.01)
    ir, vi, w_ir, w_vi = _inputs()
    image = torch.rand_like(ir)
    f0 = stage.gradient_step(image, DataTerm(ir, vi, w_ir, w_vi))
    expected = image - 0.01 * (w_ir * (image - ir) + w_vi * (image - vi))
    torch.testing.assert_close(f0, expected)
    f0.sum().backward()
    torch.testing.assert_close(stage.rho.grad, -(w_ir * (image - ir) + w_vi * (image - vi)).sum())


def test_release_skips_gradient_step():
    torch.manual_seed(0)
    net = UAAFusionNet(stages=2, channels=8, gradient_step=False)
    ir, vi, w_ir, w_vi = _inputs()
    net(ir, vi, w_ir, w_vi).fused.sum().backward()
    assert all(stage.rho.grad is None for stage in net.stages)  # ρ never trained (release row 1)


def test_convlstm_first_steps():
    torch.manual_seed(0)
    z = torch.randn(1, 4, 5, 5)
    cell = ConvLSTMCell(4, "zero_state")
    gates = cell.conv_z(z) + cell.conv_h.bias.view(1, -1, 1, 1)  # conv_h of a zero state = its bias
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(i) * torch.tanh(g)
    h, c_out = cell(z, None)
    torch.testing.assert_close(c_out, c)
    torch.testing.assert_close(h, torch.sigmoid(o) * torch.tanh(c))
    release = ConvLSTMCell(4, "release")
    release.load_state_dict(cell.state_dict())
    i, _, o, g = release.conv_z(z).chunk(4, dim=1)
    c = torch.sigmoid(i) * torch.tanh(g)
    h, c_out = release(z, None)
    torch.testing.assert_close(c_out, c)
    torch.testing.assert_close(h, torch.sigmoid(o) * c)  # row 13: no tanh on c
    # later steps are the standard update (Eq. 15)
    h2, c2 = cell(z, (h, c_out))
    i, f, o, g = (cell.conv_z(z) + cell.conv_h(h)).chunk(4, dim=1)
    c_ref = torch.sigmoid(f) * c_out + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(c2, c_ref)
    torch.testing.assert_close(h2, torch.sigmoid(o) * torch.tanh(c_ref))


def test_stage_follows_eq4_with_memories_and_attention():
    torch.manual_seed(0)
    stage = UnfoldingStage(channels=8)
    ir, vi, w_ir, w_vi = _inputs()
    image = torch.rand_like(ir)
    m_s, m_l = torch.randn(2, 8, 12, 10), torch.randn(2, 8, 12, 10)
    att = torch.randn_like(ir)
    out, memory = stage(image, DataTerm(ir, vi, w_ir, w_vi), Memory(m_s, m_l, None), att)
    f0 = image - stage.rho * (w_ir * (image - ir) + w_vi * (image - vi))
    f1 = stage.lift(f0)
    f2 = stage.merge(torch.cat([f1, m_s, m_l], 1))
    f3 = torch.sigmoid(att) * stage.refine(f2) + f2
    torch.testing.assert_close(out, stage.project(f3))
    torch.testing.assert_close(memory.short, f3)  # Eq. 13
    h, _ = stage.lstm(stage.memory_in(torch.cat([f1, f2, f3], 1)), None)
    torch.testing.assert_close(memory.long, stage.memory_out(h))  # Eq. 14
    assert out.min() >= 0 and out.max() <= 1


def test_initial_estimate_and_memory():
    net = UAAFusionNet(stages=1, channels=8)
    ir, vi, _, _ = _inputs()
    torch.testing.assert_close(net.initial_estimate(ir, vi), (ir + vi) / 2)
    memory = net.initial_memory(ir, vi)
    expected = torch.cat([net.init_memory_ir(ir), net.init_memory_vi(vi)], 1)
    torch.testing.assert_close(memory.short, expected)
    torch.testing.assert_close(memory.long, expected)
    assert memory.lstm_state is None
    assert isinstance(net.init_memory_ir, ConvUnit) and expected.shape[1] == 8


class RecordingAttention:
    def __init__(self):
        self.calls = []

    def start(self, initial):
        self.calls.append(("start", initial))

    def map_for_next_stage(self):
        k = sum(1 for c in self.calls if c[0] == "map")
        self.calls.append(("map", k))
        return torch.full_like(self.calls[0][1], float(k))

    def observe(self, out):
        self.calls.append(("observe", out))


def test_attention_protocol_order():
    net = UAAFusionNet(stages=3, channels=8)
    ir, vi, w_ir, w_vi = _inputs()
    rec = RecordingAttention()
    out = net(ir, vi, w_ir, w_vi, rec)
    assert [c[0] for c in rec.calls] == ["start", "map", "observe", "map", "observe", "map", "observe"]
    assert [float(a.mean()) for a in out.attention] == [0.0, 1.0, 2.0]
    assert len(out.stages) == 3 and out.fused is out.stages[-1]


@pytest.mark.parametrize(
    "switch",
    [
        dict(attention=False), dict(short_memory=False), dict(long_memory=False),
        dict(short_memory=False, long_memory=False), dict(gradient_step=False), dict(lstm_first_step="release"),
        dict(rho_init=0.001),
    ],
)
def test_each_fusion_switch_changes_output(switch):
    ir, vi, w_ir, w_vi = _inputs()
    torch.manual_seed(0)
    base = UAAFusionNet(stages=3, channels=8)
    torch.manual_seed(0)
    changed = UAAFusionNet(stages=3, channels=8, **switch)
    shared = {k: v for k, v in base.state_dict().items() if k in changed.state_dict() and not k.endswith("rho")
              and changed.state_dict()[k].shape == v.shape}
    changed.load_state_dict(shared, strict=False)
    att = RecordingAttention()
    att2 = RecordingAttention()
    a = base(ir, vi, w_ir, w_vi, att).fused
    b = changed(ir, vi, w_ir, w_vi, att2).fused
    assert not torch.equal(a, b)  # same weights, same inputs: any difference comes from the switch


@pytest.mark.parametrize(
    "switch",
    [dict(attention="grad"), dict(attention_reduction="mean"), dict(attention_substeps=3),
     dict(region_pooling="batch"), dict(region_normalization="release_mean", eps=1e-2),
     dict(attention_score="masked_mean"), dict(score_activation="softmax"), dict(segmenter_mode="follow")],
)
def test_each_attribution_switch_changes_output(switch):
    torch.manual_seed(0)
    fusion = UAAFusionNet(stages=3, channels=8)
    seg = TinyConvSegmenter(3).float()
    seg.net.insert(1, torch.nn.Dropout(0.5))  # gives "follow" (training-mode attribution) something to change
    ir, vi, _, _ = _inputs(h=12, w=12)
    labels = torch.randint(0, 3, (2, 12, 12))
    # scale the attention so σ(A) is visibly away from 0.5 on these tiny scores
    with torch.no_grad():
        seg.net[-1].weight.mul_(50.0)
    outputs = []
    for settings in (AttributionSettings(), AttributionSettings(**switch)):
        model = UAAFusion(fusion, seg, 3, settings).train()
        torch.manual_seed(1)
        outputs.append(model(ir, vi, labels).fused.detach())
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-7, rtol=0)


def test_sobel_magnitude_on_a_step():
    x = torch.zeros(1, 1, 4, 4)
    x[..., 2:] = 1.0
    mag = sobel_magnitude(x)
    # interior columns next to the step see |Gx| = 4 (1+2+1), Gy = 0
    assert mag[0, 0, 1, 1].item() == 4.0 and mag[0, 0, 1, 2].item() == 4.0
    assert mag[0, 0, 1, 0].item() == 0.0
