"""Convolutional building blocks of the unfolded fusion network (Sec. III-A; the release's units, docs/RELEASE.md).

Speed notes (docs/PERFORMANCE.md). The fusion network is a chain of 3×3 convolutions with 32 channels on
full-resolution images, so on a CPU its time goes to the convolutions and to whole-image memory passes
(reflect padding, PReLU, gates). Three things keep both low without changing the numbers beyond float32
round-off: the network runs in channels-last layout (oneDNN's fast path; :func:`reflect_pad` pads that
layout without PyTorch's slow channels-last reflection kernel, bit-identically), the ConvLSTM computes
its input and state convolutions as one convolution over the stacked input and state, and it takes its tanh as
2σ(2x) − 1 in float32/float64 (PyTorch's CPU tanh is about 10× slower than its sigmoid).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LSTM_FIRST_STEPS = ("zero_state", "release")


def reflect_pad(x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad the last two dimensions by one pixel, as ``F.pad(x, (1, 1, 1, 1), mode="reflect")``.

    A channels-last input gets a channels-last output built from slice copies (PyTorch's channels-last reflection
    kernels are several times slower): bit-identical values, gradient equal to round-off. x: (N, C, H, W), H, W ≥ 2.
    """
    if _is_channels_last(x) and x.shape[-1] >= 2 and x.shape[-2] >= 2:
        return _ReflectPadChannelsLast.apply(x) if _needs_grad([x]) else _reflect_pad_into([x])
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def reflect_pad_cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``reflect_pad(torch.cat(parts, dim=1))`` in one pass: channels-last parts are copied straight into the
    padded output (bit-identical values; the gradient comes back as one channels-last tensor per part)."""
    if any(_is_channels_last(x) for x in parts) and parts[0].shape[-1] >= 2 and parts[0].shape[-2] >= 2:
        first = parts[0]
        if any(x.dim() != 4 or x.shape[0] != first.shape[0] or x.shape[2:] != first.shape[2:] for x in parts):
            raise ValueError(f"reflect_pad_cat needs (N, C_i, H, W) parts, got {[tuple(x.shape) for x in parts]}")
        return _ReflectPadCatChannelsLast.apply(*parts) if _needs_grad(parts) else _reflect_pad_into(parts)
    return reflect_pad(torch.cat(list(parts), dim=1))


def _needs_grad(parts: Sequence[torch.Tensor]) -> bool:
    """Whether autograd records the padding (else the copies run without the autograd.Function: fusing under
    no_grad, where torch.compile also mis-traced the Function's variadic forward in torch 2.13)."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in parts)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def _reflect_pad_into(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parts' channels side by side, reflect-padded by one pixel, in a new channels-last tensor of their
    promoted dtype (as ``torch.cat``, e.g. bfloat16 and float32 parts under autocast)."""
    n, _, h, w = parts[0].shape
    channels = sum(x.shape[1] for x in parts)
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in parts))
    out = torch.empty((n, channels, h + 2, w + 2), dtype=dtype, device=parts[0].device,
                      memory_format=torch.channels_last)
    begin = 0
    for x in parts:
        out[:, begin:begin + x.shape[1], 1:-1, 1:-1] = x
        begin += x.shape[1]
    out[:, :, 0, 1:-1] = out[:, :, 2, 1:-1]
    out[:, :, -1, 1:-1] = out[:, :, -3, 1:-1]
    out[:, :, :, 0] = out[:, :, :, 2]
    out[:, :, :, -1] = out[:, :, :, -3]
    return out


def _fold_reflect_border(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_reflect_pad_into`'s padding, last copy first: fold the padded columns, then the rows."""
    folded = grad[:, :, :, 1:-1].contiguous(memory_format=torch.channels_last)
    folded[:, :, :, 1] += grad[:, :, :, 0]
    folded[:, :, :, -2] += grad[:, :, :, -1]
    out = folded[:, :, 1:-1].contiguous(memory_format=torch.channels_last)
    out[:, :, 1] += folded[:, :, 0]
    out[:, :, -2] += folded[:, :, -1]
    return out


class _ReflectPadChannelsLast(torch.autograd.Function):
    """One-pixel reflect padding by slice copies, with the transposed copies as backward (both channels-last)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _reflect_pad_into([x])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _fold_reflect_border(grad)


class _ReflectPadCatChannelsLast(torch.autograd.Function):
    """Concatenation and one-pixel reflect padding in one set of slice copies; backward: fold, then split."""

    @staticmethod
    def forward(ctx, *parts: torch.Tensor) -> torch.Tensor:
        ctx.channels = [x.shape[1] for x in parts]
        ctx.dtypes = [x.dtype for x in parts]
        return _reflect_pad_into(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        folded = _fold_reflect_border(grad)
        return tuple(g.to(dtype, memory_format=torch.channels_last) if needed else None
                     for g, dtype, needed in zip(folded.split(ctx.channels, dim=1), ctx.dtypes, ctx.needs_input_grad))


class ReflectConv2d(nn.Conv2d):
    """3×3 convolution with one pixel of reflect padding (``padding_mode="reflect"`` semantics, same keys)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=0)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """x: (N, C_in, H, W), or tensors whose channels concatenated make the input (padded in one pass)."""
        padded = reflect_pad(x) if isinstance(x, torch.Tensor) else reflect_pad_cat(x)
        return F.conv2d(padded, self.weight, self.bias)


class ConvUnit(nn.Module):
    """The learned "Conv" of Eq. 4: 3×3 conv → PReLU (one shared slope) → 3×3 conv, reflect padding.

    Inputs need H, W ≥ 2 (reflect padding). Submodule names follow the release (``conv_unit.0/1/2``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_unit = nn.Sequential(
            ReflectConv2d(in_channels, mid_channels),
            nn.PReLU(),
            ReflectConv2d(mid_channels, out_channels),
        )

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """x: (N, C_in, H, W), or tensors to concatenate along the channels (see :class:`ReflectConv2d`)."""
        return self.conv_unit(x)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM of Eq. 15 with input, forget and output gates and a tanh candidate.

    Each gate is a 3×3 convolution of the input z plus a 3×3 convolution of the previous hidden state h;
    the four input convolutions are stacked into ``conv_z`` and the four state convolutions into ``conv_h``
    (output channels ordered i, f, o, g). With a state, both are evaluated as one convolution of Cat(z, h)
    with the two weights side by side (the same sum, one pass), and in float32/float64 the tanh of the candidate and
    of the cell state are taken as 2σ(2x) − 1, the candidate inside the gates' single sigmoid pass (equal to float32
    round-off). ``stacked = False`` runs the literal form.

    ``first_step`` says what happens when there is no state yet:
      - ``"zero_state"`` (paper): h = c = 0, then the standard update, so c = i ⊙ g and h = o ⊙ tanh(c)
        with the gates seeing the state convolutions' biases.
      - ``"release"`` (release row 13): gates from ``conv_z`` alone, c = i ⊙ g and h = o ⊙ c (no tanh).
    """

    def __init__(self, channels: int, first_step: str = "zero_state") -> None:
        super().__init__()
        if first_step not in LSTM_FIRST_STEPS:
            raise ValueError(f"lstm first_step must be one of {LSTM_FIRST_STEPS}, got {first_step!r}")
        self.channels = channels
        self.first_step = first_step
        self.stacked = True  # False: the literal form, two convolutions and a sum, tanh (reference for tests)
        self.conv_z = ReflectConv2d(channels, 4 * channels)
        self.conv_h = ReflectConv2d(channels, 4 * channels)

    def forward(
        self, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step. z: (N, C, H, W); state: (h, c) each (N, C, H, W) or None. Returns the new (h, c)."""
        if not self.stacked:
            return self._literal_forward(z, state)
        ch = self.channels
        # the candidate's convolution doubled (exact): with tanh(x) = 2σ(2x) − 1 one sigmoid pass covers all four
        # gates; torch's CPU tanh is about 10× slower than its sigmoid
        scale = self.conv_z.weight.new_ones(4 * ch)
        scale[3 * ch:] = 2.0
        if state is None:
            bias = self.conv_z.bias if self.first_step == "release" else self.conv_z.bias + self.conv_h.bias
            gates = F.conv2d(reflect_pad(z), self.conv_z.weight * scale.view(-1, 1, 1, 1), bias * scale)
        else:
            weight = torch.cat([self.conv_z.weight, self.conv_h.weight], dim=1) * scale.view(-1, 1, 1, 1)
            gates = F.conv2d(reflect_pad_cat([z, state[0]]), weight, (self.conv_z.bias + self.conv_h.bias) * scale)
        if gates.dtype in (torch.float32, torch.float64):
            i, f, o, g = torch.sigmoid(gates).split(ch, dim=1)
            g = g * 2 - 1  # tanh of the candidate
            tanh = _tanh_by_sigmoid
        else:  # reduced precision (autocast): 2σ(2x) − 1 would round small values to 0; halving back is exact
            ifo, g = gates.split([3 * ch, ch], dim=1)
            i, f, o = torch.sigmoid(ifo).split(ch, dim=1)
            g = torch.tanh(g * 0.5)
            tanh = torch.tanh
        if state is None:
            c = i * g
            return o * (c if self.first_step == "release" else tanh(c)), c
        c = torch.addcmul(f * state[1], i, g)
        return o * tanh(c), c

    def _literal_forward(
        self, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 15 as written: two convolutions and a sum, separate sigmoids and tanh (the tests' reference)."""
        ch = self.channels
        if state is None and self.first_step == "release":
            i, _, o, g = self.conv_z(z).split(ch, dim=1)
            c = torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * c, c
        if state is None:  # zero state: conv_h(0) is its bias
            gates = self.conv_z(z) + self.conv_h.bias.view(1, -1, 1, 1)
            c_prev = None
        else:
            gates = self.conv_z(z) + self.conv_h(state[0])
            c_prev = state[1]
        i, f, o, g = gates.split(ch, dim=1)
        i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
        c = i * g if c_prev is None else f * c_prev + i * g
        return o * torch.tanh(c), c


def _tanh_by_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) as 2σ(2x) − 1: equal in real arithmetic, within 2e-7 in float32 (absolute), several times faster on a
    CPU. Not for bfloat16/float16, where the absolute error (about 2⁻⁸) swallows small values."""
    return torch.sigmoid(x * 2) * 2 - 1


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|∂x/∂u| + |∂x/∂v| with 3×3 Sobel kernels and zero padding. x: (N, 1, H, W) → (N, 1, H, W)."""
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    grads = F.conv2d(x, kernels, padding=1)
    return grads.abs().sum(dim=1, keepdim=True)
