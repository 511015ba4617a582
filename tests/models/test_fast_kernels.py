"""The fusion network's fast kernels compute the same function as the straightforward ones.

Fast: channels-last layout with slice-copy reflect padding (of concatenations in the same pass), the ConvLSTM's
two convolutions stacked into one and its tanh as 2σ(2x) − 1 inside one sigmoid pass.
Reference: contiguous layout, ``F.pad``, two convolutions and a sum, ``torch.tanh``
(``UAAFusionNet.use_reference_kernels``).
Compared in float64 (values and every parameter gradient), plus a float32 round-off bound at the paper's 5 stages.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import blocks
from models.blocks import ConvLSTMCell, reflect_pad, reflect_pad_cat
from models.fusion_net import UAAFusionNet


class SineAttention:
    """A deterministic, non-trivial attention map per stage."""

    def start(self, initial):
        self.initial, self.k = initial, 0

    def map_for_next_stage(self):
        self.k += 1
        return torch.sin(7.0 * self.k * self.initial)

    def observe(self, output):
        pass


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 2, 2), (2, 8, 7, 3)])
def test_reflect_pad_channels_last_is_f_pad(shape):
    x = _channels_last(torch.randn(*shape, dtype=torch.float64)).requires_grad_(True)
    fast, ref = reflect_pad(x), F.pad(x, (1, 1, 1, 1), mode="reflect")
    assert torch.equal(fast, ref)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(fast)
    (g_fast,) = torch.autograd.grad(fast, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(reflect_pad, (x,))


def test_reflect_pad_other_layouts_use_f_pad():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(reflect_pad(x), F.pad(x, (1, 1, 1, 1), mode="reflect"))
    with pytest.raises(RuntimeError):  # too small to reflect: PyTorch's own error, whatever the layout
        reflect_pad(_channels_last(torch.randn(1, 3, 1, 5)))


@pytest.mark.parametrize("channels", [(3, 5), (4, 1, 2), (6,)])
def test_reflect_pad_cat_is_pad_of_the_concatenation(channels):
    parts = [_channels_last(torch.randn(2, c, 4, 6, dtype=torch.float64)).requires_grad_(True) for c in channels]
    fast = reflect_pad_cat(parts)
    ref = F.pad(torch.cat(parts, dim=1), (1, 1, 1, 1), mode="reflect")
    assert torch.equal(fast, ref) and fast.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(fast)
    for g_fast, g_ref in zip(torch.autograd.grad(fast, parts, grad), torch.autograd.grad(ref, parts, grad)):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda *xs: reflect_pad_cat(xs), tuple(parts))
    contiguous = [p.detach().contiguous() for p in parts]  # the reference layout takes torch.cat and F.pad
    assert torch.equal(reflect_pad_cat(contiguous), ref)


def test_reflect_pad_cat_rejects_parts_that_do_not_fit_and_promotes_dtypes_as_cat():
    a = _channels_last(torch.randn(1, 3, 4, 6))
    for other in (_channels_last(torch.randn(1, 3, 4, 5)), _channels_last(torch.randn(2, 3, 4, 6))):
        with pytest.raises(ValueError, match="parts"):
            reflect_pad_cat([a, other])
    low = a.bfloat16().requires_grad_(True)  # bfloat16 and float32 parts meet under autocast
    high = _channels_last(torch.randn(1, 2, 4, 6)).requires_grad_(True)
    padded = reflect_pad_cat([low, high])
    assert padded.dtype == torch.float32
    assert torch.equal(padded, F.pad(torch.cat([low, high], dim=1), (1, 1, 1, 1), mode="reflect"))
    g_low, g_high = torch.autograd.grad(padded.sum(), [low, high])
    assert g_low.dtype == torch.bfloat16 and g_high.dtype == torch.float32


def _eq15(cell: ConvLSTMCell, z, state):
    """Eq. 15 written out: gates = conv_z(z) + conv_h(h) (3×3, reflect padding), c = σ(f)c + σ(i)tanh(g),
    h = σ(o)tanh(c); without a state, the cell's first-step rule (zero state or release row 13)."""
    def conv(x, layer):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), layer.weight, layer.bias)

    if state is None and cell.first_step == "release":
        i, _, o, g = conv(z, cell.conv_z).chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * c, c
    if state is None:  # h = c = 0: conv_h(0) is conv_h's bias
        c_prev, state_term = torch.zeros_like(z), cell.conv_h.bias.view(1, -1, 1, 1)
    else:
        c_prev, state_term = state[1], conv(state[0], cell.conv_h)
    i, f, o, g = (conv(z, cell.conv_z) + state_term).chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize(("first_step", "with_state"), [("zero_state", False), ("release", False),
                                                        ("zero_state", True)])
def test_convlstm_fast_and_literal_forms_follow_eq15(first_step, with_state):
    """The fast form (one convolution of Cat(z, h), tanh as 2σ(2x) − 1 inside one sigmoid pass) and the literal one
    against Eq. 15 written out, in float64: values and every parameter gradient."""
    torch.manual_seed(0)
    cell = ConvLSTMCell(4, first_step).double()
    z, h, c = (torch.randn(2, 4, 6, 5, dtype=torch.float64) * 3 for _ in range(3))
    state = (h, c) if with_state else None
    outs = {}
    for form in ("fast", "literal", "eq15"):
        cell.stacked = form == "fast"
        cell.zero_grad()
        h2, c2 = _eq15(cell, z, state) if form == "eq15" else cell(z, state)
        (h2.sum() + c2.square().sum()).backward()
        outs[form] = (h2, c2, [p.grad.clone() for p in cell.parameters() if p.grad is not None])
    assert len(outs["eq15"][2]) == (4 if with_state else 3 if first_step == "zero_state" else 2)
    for form in ("fast", "literal"):
        for a, b in zip(outs[form][:2], outs["eq15"][:2]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
        assert len(outs[form][2]) == len(outs["eq15"][2])
        for a, b in zip(outs[form][2], outs["eq15"][2]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_convlstm_keeps_small_candidates_in_bfloat16():
    """In bfloat16, 2σ(2x) − 1 would round tanh of a small candidate to 0; the fast form keeps torch's tanh there."""
    cell = ConvLSTMCell(2).bfloat16()
    for layer in (cell.conv_z, cell.conv_h):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    cell.conv_z.bias.data[6:] = 1e-3  # the candidate g; i = σ(0) = 0.5
    z = torch.rand(1, 2, 4, 4, dtype=torch.bfloat16)
    _, c = cell(z, None)
    expected = 0.5 * torch.tanh(torch.tensor(1e-3))
    torch.testing.assert_close(c.float(), torch.full_like(c.float(), expected.item()), rtol=1e-2, atol=0)


def test_tanh_by_sigmoid_float32_round_off():
    x = torch.linspace(-30, 30, 200001)
    assert (blocks._tanh_by_sigmoid(x) - torch.tanh(x)).abs().max() <= 2.5e-7
    assert torch.equal(blocks._tanh_by_sigmoid(torch.tensor([-100.0, 0.0, 100.0])), torch.tensor([-1.0, 0.0, 1.0]))


def _run(net, inputs, attention=True):
    ir, vi, w_ir = inputs
    net.zero_grad()
    out = net(ir, vi, w_ir, 1 - w_ir, SineAttention() if attention else None)
    (out.fused.square().sum() + sum(s.sum() for s in out.stages)).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.fused.detach(), grads


@pytest.mark.parametrize("switches", [{}, {"lstm_first_step": "release", "gradient_step": False, "rho_init": 0.001},
                                      {"attention": False}, {"long_memory": False}, {"short_memory": False}])
def test_fast_and_reference_kernels_agree_in_float64(switches):
    torch.manual_seed(0)
    net = UAAFusionNet(stages=3, channels=8, **switches).double()
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(2, 1, 9, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    fast_out, fast_grads = _run(net, inputs)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
    net.use_reference_kernels()
    assert all(p.is_contiguous() for p in net.parameters())
    ref_out, ref_grads = _run(net, inputs)
    torch.testing.assert_close(fast_out, ref_out, rtol=0, atol=1e-14)
    assert fast_grads.keys() == ref_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_paper_network_fast_kernels_float32_round_off():
    """The paper's 5-stage, 32-channel network: float32 outputs agree to round-off (measured ~6e-8)."""
    torch.manual_seed(0)
    net = UAAFusionNet().eval()
    g = torch.Generator().manual_seed(2)
    ir, vi, w_ir = (torch.rand(1, 1, 24, 20, generator=g) for _ in range(3))
    with torch.no_grad():
        fast = net(ir, vi, w_ir, 1 - w_ir, SineAttention()).fused
        net.use_reference_kernels()
        ref = net(ir, vi, w_ir, 1 - w_ir, SineAttention()).fused
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-6)


def test_layout_survives_state_dict_round_trips():
    torch.manual_seed(0)
    fast = UAAFusionNet(stages=2, channels=8)
    plain = UAAFusionNet(stages=2, channels=8, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    fast.load_state_dict(plain.state_dict())
    assert all(p.is_contiguous() for p in plain.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    ir, vi, w = (torch.rand(1, 1, 8, 8) for _ in range(3))
    with torch.no_grad():
        torch.testing.assert_close(fast(ir, vi, w, 1 - w).fused, plain(ir, vi, w, 1 - w).fused, rtol=0, atol=1e-6)
    fast.use_reference_kernels().use_reference_kernels(False)  # back to the configured layout
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    plain.use_reference_kernels(False)
    assert all(p.is_contiguous() for p in plain.parameters())
