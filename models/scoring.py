"""The network attribution differentiates: an eval-mode, gradient-free copy of the segmenter, prepared for speed.

Attribution runs the segmenter's forward and backward passes about 10 + 10·R times per fused image (IG weights
over R classes) plus once per stage (path attention), always in float32, so these passes dominate fusing on a CPU
(docs/PERFORMANCE.md). The copy made here computes the same function with fewer memory passes; every change is
exact in real arithmetic and tested in float64 against the segmenter's own layers:

- BatchNorm folded into the convolution before it (also inside separable convolutions, as in DeepLabV3+'s ASPP, and
  in timm's EfficientNet blocks, whose BatchNorm layers also carry the activation);
- channels-last layout, where oneDNN's depthwise convolutions run several times faster;
- stride-1 depthwise convolutions of any odd size (:class:`FrozenDepthwise`) differentiated by oneDNN's forward
  kernel on the flipped kernel, the exact adjoint, which is faster than its backward kernel; those with a large dilation
  (DeepLabV3+'s atrous rates 12, 24, 36 on a 1/16-resolution map) computed as a sum of shifted taps over the
  windows where they land inside the map: oneDNN pads such maps by the dilation on every side and runs a slow
  path, while on the 40×30 map of a 640×480 image most taps of rates 24 and 36 cover only a few rows or columns;
- gradients kept channels-last: a concatenation's backward hands each input a channel slice of its gradient,
  on which PyTorch's upsampling and convolution backward kernels take slow paths (the decoder's upsampling
  backward: 10 ms on a slice against 2.7 ms after a copy, at 640×480), so every module's output gradient is
  made channels-last-contiguous before the module's backward runs, and so is every module's output (the ASPP's
  pooling branch returns a contiguous map, which made its concatenation contiguous; :func:`keep_channels_last_`);
- the final bilinear upsampling exposed (:meth:`ScoringNetwork.linear_head`), so that weighted sums of class
  scores over regions (Eq. 5, Eq. 9) are taken on the low-resolution logits against the upsampling's adjoint
  applied to the region masks (``models.attribution.ScoreSums``), skipping the full-resolution upsampling and
  its backward pass.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from models import tv_compat  # noqa: F401  (must run before segmentation_models_pytorch imports torchvision)

TAP_MIN_DILATION = 12  # the tap sum beats oneDNN from dilation 8 on (docs/PERFORMANCE.md); 12 is the ASPP's lowest rate


def _is_plain_sequential(module: nn.Module) -> bool:
    """A Sequential that only chains its children (a subclass with its own forward may do more)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def fold_batchnorm_(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a convolution inside a plain Sequential (in place).

    The convolution may be the last layer of nested plain Sequentials (a separable convolution). The BatchNorm
    layers must be in eval mode (``fuse_conv_bn_eval`` raises otherwise). Returns ``module``.
    """
    for child in module.children():
        fold_batchnorm_(child)
    if _is_plain_sequential(module):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            owner, key = module, first
            while _is_plain_sequential(owner._modules[key]) and len(owner._modules[key]) > 0:
                owner, key = owner._modules[key], list(owner._modules[key]._modules)[-1]
            conv, bn = owner._modules[key], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                owner._modules[key] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return module


# timm's EfficientNet modules: (convolution, the BatchNorm that directly follows it in their forward), by class name
TIMM_CONV_BN_PAIRS = {
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "EfficientNetFeatures": (("conv_stem", "bn1"),),
}


def _conv_bn_pairs(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """The (conv, bn) attribute pairs of a timm EfficientNet module whose forward is timm's own; else ()."""
    import inspect

    for cls in type(module).__mro__:
        pairs = TIMM_CONV_BN_PAIRS.get(cls.__name__)
        if pairs is not None and inspect.getmodule(cls).__name__.startswith("timm."):
            # smp's encoders subclass timm's EfficientNet with their own forward, which still runs stem → bn1
            if "conv_s2d" in module._modules and module._modules["conv_s2d"] is not None:
                return ()  # a space-to-depth stem sits between the pair
            return pairs
    return ()


def fold_timm_batchnorm_(module: nn.Module) -> nn.Module:
    """Fold the eval-mode BatchNorm (timm's ``BatchNormAct2d``: BatchNorm, dropout, activation) that follows each
    convolution of timm's EfficientNet blocks into that convolution, keeping the dropout and the activation
    (in place). Returns ``module``."""
    for child in module.modules():
        for conv_name, bn_name in _conv_bn_pairs(child):
            conv, bn = child._modules.get(conv_name), child._modules.get(bn_name)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
                continue
            child._modules[conv_name] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            child._modules[bn_name] = nn.Sequential(*rest) if rest else nn.Identity()
    return module


# ------------------------------------------------------------------------ dilated depthwise convolutions


def shifted_tap_sum(x: torch.Tensor, weight: torch.Tensor, dilation: int, flip: bool = False) -> torch.Tensor:
    """A 3×3 depthwise convolution with zero padding = dilation (output size = input size), tap by tap.

    out[n, c, i, j] = Σ_{a,b ∈ {-1,0,1}} w[c, 0, a+1, b+1] · x[n, c, i + a·d, j + b·d], terms outside x left out.
    ``flip``: the adjoint (offsets negated), which is the gradient with respect to x. x: (N, C, H, W); weight
    (C, 1, 3, 3). Each tap is one multiply-add over the window where it lands inside the image.
    """
    _, channels, height, width = x.shape
    sign = -1 if flip else 1
    # per-tap weights as contiguous (1, C, 1, 1) tensors: broadcasting a strided column of the kernel is ~4× slower
    taps = weight[:, 0].permute(1, 2, 0).contiguous().view(3, 3, 1, channels, 1, 1)
    out = torch.mul(x, taps[1, 1])
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            dy, dx = sign * a * dilation, sign * b * dilation
            if (a, b) == (0, 0) or abs(dy) >= height or abs(dx) >= width:
                continue
            rows_out, rows_in = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
            cols_out, cols_in = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
            out[:, :, rows_out, cols_out].addcmul_(x[:, :, rows_in, cols_in], taps[a + 1, b + 1])
    return out


def depthwise_same(x: torch.Tensor, weight: torch.Tensor, dilation: int, bias: torch.Tensor | None = None,
                   adjoint: bool = False) -> torch.Tensor:
    """A k×k depthwise convolution (k odd) with stride 1 and zero padding = dilation · (k − 1)/2, so the output has
    the input's size (plus ``bias``), or its adjoint (the kernel flipped, no bias).

    3×3 kernels with large dilations (≥ ``TAP_MIN_DILATION``) go through :func:`shifted_tap_sum`, the others
    through oneDNN's forward kernel, which is also used for the adjoint: that is the gradient with respect to x,
    and oneDNN's own backward kernel for depthwise convolutions is several times slower than its forward one.
    """
    if adjoint:
        bias = None
    size = weight.shape[-1]
    if size == 3 and dilation >= TAP_MIN_DILATION:
        out = shifted_tap_sum(x, weight, dilation, flip=adjoint)
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
    kernel = weight.flip(-1, -2) if adjoint else weight
    return F.conv2d(x, kernel, bias, 1, dilation * (size // 2), dilation, x.shape[1])


class _DepthwiseSame(torch.autograd.Function):
    """:func:`depthwise_same` with its adjoint as the input gradient (weight and bias are constants)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.dilation = dilation
        return depthwise_same(x, weight, dilation, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (weight,) = ctx.saved_tensors
        return depthwise_same(grad, weight, ctx.dilation, adjoint=True), None, None, None


class FrozenDepthwise(nn.Module):
    """Drop-in for a k×k depthwise ``nn.Conv2d`` (k odd) with stride 1 and same-size zero padding (see
    :func:`depthwise_same`), with its weight and bias frozen as buffers: gradients reach the input only."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_same_depthwise(conv):
            raise ValueError(f"not a 3x3, stride-1, same-size depthwise convolution: {conv}")
        self.dilation = conv.dilation[0]
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DepthwiseSame.apply(x, self.weight, self.bias, self.dilation)


def is_same_depthwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain k×k depthwise convolution (k odd) with stride 1, equal dilations and the zero
    padding dilation · (k − 1)/2 that keeps the size (not timm's dynamically padded ``Conv2dSame``)."""
    if type(conv) is not nn.Conv2d or not conv.groups == conv.in_channels == conv.out_channels:
        return False
    size = conv.kernel_size[0]
    return (conv.kernel_size == (size, size) and size % 2 == 1 and conv.stride == (1, 1)
            and conv.padding_mode == "zeros" and conv.dilation[0] == conv.dilation[1]
            and tuple(conv.padding) == (conv.dilation[0] * (size // 2),) * 2)


def replace_depthwise_(module: nn.Module) -> int:
    """Swap every qualifying depthwise convolution for a :class:`FrozenDepthwise` (in place); returns the count."""
    count = 0
    for name, child in list(module._modules.items()):
        if is_same_depthwise(child):
            module._modules[name] = FrozenDepthwise(child)
            count += 1
        elif child is not None:
            count += replace_depthwise_(child)
    return count


# ------------------------------------------------------------------------------------ gradient layout


def _channels_last_gradient(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last) if grad.dim() == 4 else grad


def _channels_last_output(module: nn.Module, inputs: tuple, output: object) -> object:
    """Forward hook: a 4-D output comes out channels-last (e.g. the ASPP pooling branch's upsampled map, so that
    the ASPP's concatenation stays channels-last), and the gradient reaching it will be channels-last too."""
    if not isinstance(output, torch.Tensor):
        return None
    if output.dim() == 4 and output.shape[1] > 1 and not output.is_contiguous(memory_format=torch.channels_last):
        output = output.contiguous(memory_format=torch.channels_last)
    # not on a module's own input passed through (Identity, eval-mode Dropout): the hook would land on the caller's
    # tensor and pile up over calls
    if output.requires_grad and not any(output is x for x in inputs):
        output.register_hook(_channels_last_gradient)
    return output


class _ChannelsLastInputGradient(torch.autograd.Function):
    """Identity whose backward makes the gradient channels-last-contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _channels_last_gradient(grad)


def _channels_last_input_gradient(module: nn.Module, inputs: tuple) -> tuple:
    """Forward pre-hook for global pooling, whose backward hands out a contiguous gradient: where its input also
    feeds other branches (the ASPP), autograd adds their channels-last gradients into that contiguous one, about
    ten times slower than adding tensors of one layout."""
    return tuple(_ChannelsLastInputGradient.apply(x) if isinstance(x, torch.Tensor) and x.requires_grad and x.dim() == 4
                 else x for x in inputs)


def keep_channels_last_(module: nn.Module) -> nn.Module:
    """Make every submodule's 4-D output, and the gradients reaching its output and leaving a global pooling,
    channels-last-contiguous (no-ops where they already are). Call it once per model; it suits networks that do not
    reshape feature maps by their memory layout (``view`` merging channels with space), as the smp models here."""
    for child in module.modules():
        child.register_forward_hook(_channels_last_output)
        if isinstance(child, nn.AdaptiveAvgPool2d):
            child.register_forward_pre_hook(_channels_last_input_gradient)
    return module


# ------------------------------------------------------------------------------------ the scoring copy


class ScoringNetwork(nn.Module):
    """An eval-mode, gradient-free copy of a segmenter for attribution; call it like the segmenter.

    Args:
        segmenter: maps (B, 1, H, W) to class scores (B, C, H, W).
        fold_batchnorm: fold BatchNorm into the convolutions.
        fast: channels-last layout and gradients, shifted-tap dilated depthwise convolutions and the exposed
            linear head (module docstring); False keeps the segmenter's own layers and layout.
    """

    def __init__(self, segmenter: nn.Module, fold_batchnorm: bool = True, fast: bool = True) -> None:
        super().__init__()
        net = copy.deepcopy(segmenter).eval()
        net.requires_grad_(False)
        if fold_batchnorm:
            fold_batchnorm_(net)
            fold_timm_batchnorm_(net)
        self.fast = fast
        if fast:
            replace_depthwise_(net)
            net = keep_channels_last_(net.to(memory_format=torch.channels_last))
        self.net = net
        self.train(False)

    def train(self, mode: bool = True) -> ScoringNetwork:
        """Always eval mode: attribution's exactness relies on batch items being independent."""
        return super().train(False)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.fast and x.dim() == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C, H, W) of images (B, 1, H, W), as the segmenter computes them."""
        return self.net(self._input(x))

    def linear_head(self) -> nn.Module | None:
        """The final upsampling when the scores are a linear upsampling of :meth:`logits` (smp models with smp's
        own forward, a head that applies no activation and no classification head; ``fast`` only); else None."""
        head = getattr(self.net, "segmentation_head", None)
        if not self.fast or not _runs_smp_forward(self.net) or not isinstance(head, nn.Sequential) or len(head) != 3:
            return None
        activation = getattr(head[2], "activation", head[2])
        if getattr(self.net, "classification_head", None) is not None or not isinstance(activation, nn.Identity):
            return None
        upsample = head[1]
        linear = isinstance(upsample, nn.Identity) or (
            isinstance(upsample, nn.Upsample) and upsample.mode in ("nearest", "bilinear", "bicubic"))
        return upsample if linear else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The scores before the head's final upsampling, (B, C, h, w); only when :meth:`linear_head` is not None."""
        x = self._input(x)
        if hasattr(self.net, "check_input_shape"):
            self.net.check_input_shape(x)
        return self.net.segmentation_head[0](self.net.decoder(self.net.encoder(x)))


def _runs_smp_forward(net: nn.Module) -> bool:
    """Whether ``net`` is a segmentation-models-pytorch model computing head(decoder(encoder(x))), which
    :meth:`ScoringNetwork.logits` repeats without the head's last layers."""
    from segmentation_models_pytorch.base import SegmentationModel

    return isinstance(net, SegmentationModel) and type(net).forward is SegmentationModel.forward


def prepare_scoring_model(segmenter: nn.Module, fold_batchnorm: bool = True, fast: bool = True) -> ScoringNetwork:
    """An eval-mode, gradient-free copy of ``segmenter`` for attribution (see :class:`ScoringNetwork`)."""
    return ScoringNetwork(segmenter, fold_batchnorm, fast)
