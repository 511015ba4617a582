"""The scoring copy of models/scoring.py computes the segmenter's function: every layer it changes (folded BatchNorm,
shifted-tap dilated depthwise convolutions, channels-last gradients, the exposed linear head) is checked against
the segmenter's own layers in float64, values and input gradients."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from models import attribution
from models.attribution import (
    ScoreSums,
    ig_region_attributions_fast,
    ig_region_attributions_naive,
    masked_mean_score_fn,
    region_one_hot,
    region_score_fn,
)
from models.scoring import (
    TAP_MIN_DILATION,
    FrozenDepthwise,
    ScoringNetwork,
    fold_batchnorm_,
    is_same_depthwise,
    prepare_scoring_model,
    shifted_tap_sum,
)
from models.segmenter import build_segmenter
from tests.helpers.factories import TINY_MODEL

# (H, W, dilation): every tap live, vertical taps outside (d ≥ H), horizontal outside (d ≥ W), only the centre
TAP_CASES = [(9, 11, 2), (5, 13, 6), (13, 5, 6), (4, 4, 5), (7, 7, 3)]


@pytest.mark.parametrize(("height", "width", "dilation"), TAP_CASES)
def test_shifted_tap_sum_equals_dilated_depthwise_convolution(height, width, dilation):
    g = torch.Generator().manual_seed(height * 31 + width)
    x = torch.randn(2, 3, height, width, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 1, 3, 3, generator=g, dtype=torch.float64)
    expected = F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=3)
    torch.testing.assert_close(shifted_tap_sum(x, weight, dilation), expected, rtol=0, atol=1e-14)
    # the flipped form is the adjoint: <conv(x), y> = <x, conv_flipped(y)>
    y = torch.randn_like(expected)
    lhs = (expected * y).sum()
    rhs = (x * shifted_tap_sum(y, weight, dilation, flip=True)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


@pytest.mark.parametrize("dilation", [1, 2, TAP_MIN_DILATION])  # oneDNN's kernels, then the tap sum
def test_frozen_depthwise_matches_the_convolution_and_its_gradient(dilation):
    torch.manual_seed(dilation)
    conv = nn.Conv2d(2, 2, 3, padding=dilation, dilation=dilation, groups=2).double().requires_grad_(False)
    module = FrozenDepthwise(conv)
    x = torch.randn(1, 2, 14, 17, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(module(x), conv(x), rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(module, (x,))
    (grad,) = torch.autograd.grad(module(x).pow(2).sum(), x)
    (expected,) = torch.autograd.grad(conv(x).pow(2).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="depthwise"):
        FrozenDepthwise(nn.Conv2d(2, 4, 3, padding=dilation, dilation=dilation, groups=2))
    with pytest.raises(ValueError, match="depthwise"):
        FrozenDepthwise(nn.Conv2d(2, 2, 3, stride=2, padding=dilation, dilation=dilation, groups=2))


class ConvThenShift(nn.Sequential):
    """A Sequential subclass whose forward does more than chain its children."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_fold_batchnorm_leaves_custom_sequentials_alone():
    block = nn.Sequential(ConvThenShift(nn.Conv2d(3, 3, 1)), nn.BatchNorm2d(3)).double()
    with torch.no_grad():
        block[1].running_mean.uniform_(-1, 1)
    block.eval()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    expected = block(x)
    fold_batchnorm_(block)
    assert isinstance(block[1], nn.BatchNorm2d)  # folding into the inner conv would drop the shift's scaling
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_fold_batchnorm_reaches_into_separable_convolutions():
    torch.manual_seed(0)
    separable = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.Conv2d(6, 5, 1, bias=False))
    block = nn.Sequential(separable, nn.BatchNorm2d(5), nn.ReLU()).double()
    with torch.no_grad():  # non-trivial statistics and affine parameters
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2)
        block[1].weight.uniform_(0.5, 1.5)
        block[1].bias.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    expected = block(x)
    fold_batchnorm_(block)
    assert isinstance(block[1], nn.Identity) and block[0][1].bias is not None
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-13)


def warmed_up_segmenter(seed: int, **kwargs) -> nn.Module:
    """A 4-class segmenter in float64 and eval mode, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    seg = build_segmenter(4, **kwargs).double()
    with torch.no_grad():
        seg.train()
        seg(torch.rand(2, 1, 64, 64, dtype=torch.float64))
    return seg.eval()


@pytest.fixture(scope="module", params=["mobilenet_v2", "tu-tf_efficientnet_lite0"])
def deeplab(request):
    """DeepLabV3+ with the paper profile's MobileNetV2, and with the shipped model's EfficientNet-Lite0 (timm's
    blocks: BatchNorm with the activation inside, 5×5 depthwise kernels, TensorFlow's dynamic "same" padding)."""
    return warmed_up_segmenter(0, encoder=request.param)


def test_scoring_network_computes_the_segmenter(deeplab):
    """At 224×224 the ASPP map is 14×14: rate 12 has live taps, rates 24 and 36 only their centre."""
    fast = prepare_scoring_model(deeplab)
    depthwise = [m for m in fast.modules() if isinstance(m, FrozenDepthwise)]
    assert sum(m.dilation >= TAP_MIN_DILATION for m in depthwise) == 3 and len(depthwise) > 3
    # every BatchNorm folded but the one of the ASPP's pooling branch (a Sequential with its own forward; on a 1×1 map)
    assert len([n for n, m in fast.net.named_modules() if isinstance(m, nn.BatchNorm2d)]) <= 1
    assert all(n.startswith("decoder.aspp") for n, m in fast.net.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert not [m for m in fast.modules() if is_same_depthwise(m)]  # every stride-1 depthwise convolution replaced
    assert not any(p.requires_grad for p in fast.parameters())
    fast.train()
    assert not fast.training and not fast.net.training  # attribution needs eval mode whatever callers do
    x = torch.rand(2, 1, 224, 224, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        expected = deeplab(x)
    torch.testing.assert_close(fast(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.linear_head()(fast.logits(x)), expected, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(expected)
    (grad,) = torch.autograd.grad((fast(x) * weights).sum(), x)
    (reference,) = torch.autograd.grad((deeplab(x) * weights).sum(), x)
    assert (grad - reference).abs().max() <= 1e-10 * reference.abs().max()
    assert prepare_scoring_model(deeplab, fast=False).linear_head() is None
    slow = prepare_scoring_model(deeplab, fast=False)  # folded BatchNorm alone, the segmenter's own layers
    torch.testing.assert_close(slow(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("dilation", [1, 2])
def test_frozen_depthwise_of_any_odd_size(size, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, size, padding=dilation * (size // 2), dilation=dilation, groups=6).double()
    assert is_same_depthwise(conv) and not is_same_depthwise(nn.Conv2d(6, 6, size, padding=0, groups=6))
    frozen = FrozenDepthwise(conv)
    x = torch.rand(2, 6, 11, 9, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(frozen(x), conv(x), rtol=1e-12, atol=1e-13)
    assert torch.autograd.gradcheck(lambda t: frozen(t), (x,))


class _MixedLayoutAdds(TorchDispatchMode):
    """Records additions of a channels-last and a contiguous 4-D map (autograd's gradient accumulation)."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        maps = [a for a in args
                if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[1] > 1 and a.numel() > a.shape[1]]
        if func.overloadpacket in (torch.ops.aten.add, torch.ops.aten.add_) and len(maps) == 2:
            layouts = {a.is_contiguous(memory_format=torch.channels_last) for a in maps}
            if len(layouts) > 1:
                self.mixed.append(tuple(maps[0].shape))
        return func(*args, **(kwargs or {}))


def test_scoring_copy_runs_channels_last_throughout(deeplab):
    """Every module's output is channels-last, so the ASPP concatenates channels-last maps (its pooling branch
    upsamples a 1×1 map into a contiguous one) and its projection gets a channels-last input; and no gradient is
    summed across layouts (the ASPP's input feeds five branches, and the global pooling's backward hands out a
    contiguous gradient, into which autograd added the others about ten times slower)."""
    fast = prepare_scoring_model(deeplab)
    seen = []
    aspp = fast.net.decoder.aspp[0]
    aspp.project.register_forward_pre_hook(lambda module, inputs: seen.append(("project input", inputs[0])))
    for name, module in fast.net.named_modules():
        module.register_forward_hook(lambda m, i, out, name=name: seen.append((name, out)))
    x = torch.rand(1, 1, 64, 96, dtype=torch.float64, requires_grad=True)
    with _MixedLayoutAdds() as adds:
        torch.autograd.grad(fast(x).sum(), x)
    maps = [(name, t) for name, t in seen if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] > 1]
    assert any(name == "project input" for name, _ in maps) and len(maps) > 50
    assert [name for name, t in maps if not t.is_contiguous(memory_format=torch.channels_last)] == []
    assert adds.mixed == []


def test_score_sums_on_logits_equal_full_resolution_sums(deeplab):
    fast = prepare_scoring_model(deeplab)
    regions = torch.randint(0, 4, (3, 64, 96))
    regions[:, :5] = 255
    onehot = region_one_hot(regions, 4, 255, torch.float64)
    index = torch.tensor([2, 0, 2])
    x = torch.rand(3, 1, 64, 96, dtype=torch.float64, requires_grad=True)
    on_logits = ScoreSums(fast, onehot)
    assert on_logits.upsample is not None
    got = on_logits(x, index)
    expected = (deeplab(x) * onehot[index]).sum(dim=(2, 3))  # the definition, on the segmenter itself
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(got[:, 1].sum(), x)
    (reference,) = torch.autograd.grad(expected[:, 1].sum(), x)
    assert (grad - reference).abs().max() <= 1e-10 * reference.abs().max()
    assert ScoreSums(fast, onehot, activation="softmax").upsample is None  # not linear: full resolution
    assert ScoreSums(prepare_scoring_model(deeplab, fast=False), onehot).upsample is None


def test_fast_ig_on_the_scoring_copy_equals_naive_on_the_segmenter(deeplab):
    regions = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(4))
    ir, vi = torch.rand(2, 2, 1, 64, 64, dtype=torch.float64)
    fast = ig_region_attributions_fast(prepare_scoring_model(deeplab), [ir, vi], regions, 4, 2, chunk=1)
    naive = torch.stack([ig_region_attributions_naive(deeplab, im, regions, 4, 2) for im in (ir, vi)])
    assert (fast - naive).abs().max() <= 1e-10 * naive.abs().max()


def test_attention_scores_on_the_scoring_copy(deeplab):
    """Eq. 9's score and the release's masked mean (row 4, a soft mask) with sub-step samples stacked along the
    batch (2 samples of 2 images), against their definitions on the segmenter."""
    regions = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(5))
    onehot = region_one_hot(regions, 4, 255, torch.float64)
    soft = torch.rand(2, 4, 64, 64, dtype=torch.float64)
    x = torch.rand(4, 1, 64, 64, dtype=torch.float64)
    fast = prepare_scoring_model(deeplab)
    cases = [
        (region_score_fn(fast, regions, 4), lambda y: (y * onehot.repeat(2, 1, 1, 1)).sum(dim=(1, 2, 3)) / 64**2),
        (masked_mean_score_fn(fast, soft), lambda y: (y * soft.repeat(2, 1, 1, 1)).sum(dim=(1, 2, 3)) / soft.numel()),
    ]
    for score_fn, definition in cases:
        with torch.no_grad():
            torch.testing.assert_close(score_fn(x), definition(deeplab(x)), rtol=1e-10, atol=1e-14)
        got = attribution.input_gradient(score_fn, x)
        expected = attribution.input_gradient(lambda z, d=definition: d(deeplab(z)), x)
        assert (got - expected).abs().max() <= 1e-10 * expected.abs().max()
    with pytest.raises(ValueError, match="blocks of 2"):
        region_score_fn(fast, regions, 4)(x[:3])


def test_scoring_copy_of_the_release_segmenter():
    """The release's network (not an smp model): depthwise layers replaced, no exposed head, same function."""
    release = warmed_up_segmenter(1, arch="release_mobilenetv2")
    fast = prepare_scoring_model(release)
    assert fast.linear_head() is None
    assert any(isinstance(m, FrozenDepthwise) and m.dilation > 1 for m in fast.modules())
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 4, 64, 64, dtype=torch.float64)
    (grad,) = torch.autograd.grad((fast(x) * weights).sum(), x)
    (reference,) = torch.autograd.grad((release(x) * weights).sum(), x)
    assert (grad - reference).abs().max() <= 1e-10 * reference.abs().max()


def test_gradient_hooks_stay_off_the_callers_tensors():
    """A module that hands its input through (Identity) must not leave a hook on the caller's tensor."""
    net = nn.Sequential(nn.Identity(), nn.Conv2d(1, 2, 3, padding=1)).double()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    scoring = prepare_scoring_model(net)
    for _ in range(3):
        scoring(x).sum().backward()
    assert not x._backward_hooks


def test_the_model_attributes_with_the_fast_form_in_training_mode(monkeypatch):
    """A model in training mode still attributes through an eval-mode scoring copy with the fast form (a copy left
    in training mode would silently send the attribution to the naive loop)."""
    from engine.config import load_config
    from models.uaafusion import build_model

    model = build_model(load_config(None, TINY_MODEL), num_classes=3).train()

    def fail(*args, **kwargs):
        raise AssertionError("the naive loop ran")

    monkeypatch.setattr(attribution, "ig_region_attributions_naive", fail)
    labels = torch.randint(0, 3, (2, 32, 32))
    weights, _ = model.attribute(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), labels)
    assert isinstance(model.scoring_model(), ScoringNetwork) and not model.scoring_model().training
    assert weights["w_ir"].shape == (2, 1, 32, 32)


def test_head_is_exposed_only_for_smp_s_own_forward(deeplab):
    """A subclass that changes forward may not compute head(decoder(encoder(x))): its scores stay full-size."""
    shifted = copy.deepcopy(deeplab)
    shifted.__class__ = type("ShiftedDeepLab", (type(deeplab),), {"forward": lambda self, x: super(
        type(self), self).forward(x) + 1.0})
    assert prepare_scoring_model(deeplab).linear_head() is not None
    assert prepare_scoring_model(shifted).linear_head() is None


def test_frozen_depthwise_holds_buffers_not_parameters(deeplab):
    fast = prepare_scoring_model(deeplab)
    frozen = next(m for m in fast.modules() if isinstance(m, FrozenDepthwise))
    assert not list(frozen.parameters()) and {"weight"} <= set(dict(frozen.named_buffers()))
