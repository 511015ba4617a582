"""The unfolded fusion network of Sec. III-A (Eq. 2–4) with the memories of Sec. III-C (Eq. 13–15).

Each stage is one iteration of the gradient-projection method for Eq. 1, in three named parts:

    gradient step  F0    = I^(k-1) − ρ_k ∇f(I^(k-1)),  ∇f(I) = w1 ⊙ (I − I_ir) + w2 ⊙ (I − I_vi)   (Eq. 2–3)
    proximal step  F1    = lift(F0)
                   F2    = merge(Cat(F1, m_s, m_l))
                   F3    = σ(A) ⊙ refine(F2) + F2                                       (attribution attention)
                   I^(k) = project(F3)                                                 (to one channel, sigmoid)
    memory update  m_s   = F3;   [h, c] = ConvLSTM(memory_in(Cat(F1, F2, F3)), [h, c]);   m_l = memory_out(h)

The attention map A comes from an ``attention`` object (see :mod:`models.attribution`) that watches the
stage outputs; the fusion network itself never calls the segmenter. Module names and the release's
(``conv1``…``conv6``, ``blockflow``, ``alpha``) are matched in :mod:`models.release.convert`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from models.blocks import ConvLSTMCell, ConvUnit


class StageAttention(Protocol):
    """What the fusion network needs from an attention provider."""

    def start(self, initial: torch.Tensor) -> None:
        """Begin a new path at I^(0): (N, 1, H, W)."""

    def map_for_next_stage(self) -> torch.Tensor:
        """The (detached) attention A for the stage about to run: (N, 1, H, W)."""

    def observe(self, stage_output: torch.Tensor) -> None:
        """Record I^(k) after stage k."""


@dataclass
class DataTerm:
    """The data fidelity term f of Eq. 1: sources and their attribution weights, all (N, 1, H, W) constants."""

    ir: torch.Tensor
    vi: torch.Tensor
    w_ir: torch.Tensor
    w_vi: torch.Tensor

    def gradient(self, image: torch.Tensor) -> torch.Tensor:
        """∇f(I) = w1 ⊙ (I − I_ir) + w2 ⊙ (I − I_vi) (Eq. 3)."""
        return self.w_ir * (image - self.ir) + self.w_vi * (image - self.vi)


@dataclass
class Memory:
    """What one stage hands to the next: m_s (N, C, H, W), m_l (N, C, H, W), the ConvLSTM state (h, c).

    A memory that is switched off (or not built yet) is None.
    """

    short: torch.Tensor | None = None
    long: torch.Tensor | None = None
    lstm_state: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class FusionOutput:
    """Result of one pass. ``fused`` (N, 1, H, W) in [0, 1] is ``stages[-1]``; ``stages`` holds I^(1..K);
    ``initial`` is I^(0); ``attention`` holds the map A each stage used (zeros where none)."""

    fused: torch.Tensor
    initial: torch.Tensor
    stages: list[torch.Tensor] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)


class UnfoldingStage(nn.Module):
    """One stage of Eq. 2–4 with its memory updates (Eq. 13–15); see the module docstring for the parts.

    ``updates_long_memory=False`` (the last stage) builds no ConvLSTM: nothing would read its output.
    """

    def __init__(
        self,
        channels: int = 32,
        rho_init: float = 0.01,
        gradient_step: bool = True,
        attention: bool = True,
        short_memory: bool = True,
        long_memory: bool = True,
        lstm_first_step: str = "zero_state",
        updates_long_memory: bool = True,
    ) -> None:
        super().__init__()
        self.use_gradient_step = gradient_step
        self.use_attention = attention
        self.use_short_memory = short_memory
        self.use_long_memory = long_memory
        self.updates_long_memory = long_memory and updates_long_memory
        self.rho = nn.Parameter(torch.tensor(float(rho_init)))
        merge_in = channels * (1 + int(short_memory) + int(long_memory))
        self.lift = ConvUnit(1, channels, channels)  # F0 -> F1
        self.merge = ConvUnit(merge_in, channels, channels)  # Cat(F1, m_s, m_l) -> F2
        self.refine = ConvUnit(channels, channels, channels)  # the attended branch of F3
        self.project = nn.Sequential(ConvUnit(channels, channels // 2, 1), nn.Sigmoid())  # F3 -> I^(k)
        if self.updates_long_memory:
            self.memory_in = ConvUnit(3 * channels, channels, channels)  # Cat(F1, F2, F3) -> ConvLSTM input
            self.lstm = ConvLSTMCell(channels, first_step=lstm_first_step)
            self.memory_out = ConvUnit(channels, channels, channels)  # h -> m_l

    def gradient_step(self, image: torch.Tensor, data: DataTerm) -> torch.Tensor:
        """F0 = I − ρ ∇f(I) (Eq. 2–3), or I itself when the step is switched off (release row 1)."""
        if not self.use_gradient_step:
            return image
        return image - self.rho * data.gradient(image)

    def proximal_step(
        self, f0: torch.Tensor, memory: Memory, attention: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Eq. 4: returns I^(k) (N, 1, H, W) in [0, 1] and the features (F1, F2, F3)."""
        f1 = self.lift(f0)
        merged = [f1]
        if self.use_short_memory:
            merged.append(memory.short)
        if self.use_long_memory:
            merged.append(memory.long)
        f2 = self.merge(merged if len(merged) > 1 else f1)  # the concatenation is padded in the same pass
        refined = self.refine(f2)
        if not self.use_attention:  # ablation I: F3 = refine(F2) + F2
            f3 = f2 + refined
        elif attention is None:  # no map: A = 0, σ(A) = 1/2
            f3 = torch.add(f2, refined, alpha=0.5)
        else:
            f3 = torch.addcmul(f2, torch.sigmoid(attention), refined)
        return self.project(f3), (f1, f2, f3)

    def update_memory(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor], memory: Memory) -> Memory:
        """Eq. 13–15: m_s = F3; ConvLSTM on Cat(F1, F2, F3); m_l = Conv(h). Switched-off parts stay None."""
        f1, f2, f3 = features
        new = Memory(short=f3 if self.use_short_memory else None)
        if self.updates_long_memory:
            new.lstm_state = self.lstm(self.memory_in([f1, f2, f3]), memory.lstm_state)
            new.long = self.memory_out(new.lstm_state[0])
        return new

    def forward(
        self, image: torch.Tensor, data: DataTerm, memory: Memory, attention: torch.Tensor | None
    ) -> tuple[torch.Tensor, Memory]:
        """I^(k-1) → (I^(k), memory for stage k + 1)."""
        f0 = self.gradient_step(image, data)
        image, features = self.proximal_step(f0, memory, attention)
        return image, self.update_memory(features, memory)


class UAAFusionNet(nn.Module):
    """K unfolded stages (default 5) with attribution attention and short/long-term memory.

    Args:
        stages: number of stages K.
        channels: feature channels of every Conv unit (32 in the release); must be even.
        rho_init: initial step size ρ_k (paper 0.01; release 0.001).
        gradient_step: apply F0 = I − ρ∇f (paper) or pass I^(k-1) through (release row 1).
        attention: use σ(A) on F3 (off: ablation I).
        short_memory, long_memory: the memories of Eq. 13 and Eq. 14–15 (ablations V, VI, VII).
        lstm_first_step: ``"zero_state"`` (paper) or ``"release"`` (row 13), see :class:`ConvLSTMCell`.
        channels_last: run the convolutions in channels-last layout (faster on CPUs and for mixed precision
            on GPUs; the same numbers to float32 round-off). Parameters are stored in that layout too.
    """

    def __init__(
        self,
        stages: int = 5,
        channels: int = 32,
        rho_init: float = 0.01,
        gradient_step: bool = True,
        attention: bool = True,
        short_memory: bool = True,
        long_memory: bool = True,
        lstm_first_step: str = "zero_state",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"fusion.stages must be >= 1, got {stages}")
        if channels % 2:
            raise ValueError(f"fusion.channels must be even (memories start as two halves), got {channels}")
        self.num_stages = stages
        self.uses_attention = attention
        self.uses_memory = short_memory or long_memory
        self.channels_last = self.configured_channels_last = channels_last
        if self.uses_memory:
            self.init_memory_ir = ConvUnit(1, channels // 2, channels // 2)
            self.init_memory_vi = ConvUnit(1, channels // 2, channels // 2)
        self.stages = nn.ModuleList(
            UnfoldingStage(channels, rho_init, gradient_step, attention, short_memory, long_memory, lstm_first_step,
                           updates_long_memory=k < stages - 1)
            for k in range(stages)
        )
        self.set_channels_last(channels_last)

    def set_channels_last(self, enabled: bool = True) -> UAAFusionNet:
        """Switch the layout of the parameters and the features (see ``channels_last`` above)."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def use_reference_kernels(self, enabled: bool = True) -> UAAFusionNet:
        """The straightforward implementation (contiguous layout, the ConvLSTM's two convolutions, separate sigmoids
        and ``torch.tanh``), or back to the fast one; for equality tests and benchmark baselines. Both compute the
        same function."""
        for module in self.modules():
            if isinstance(module, ConvLSTMCell):
                module.stacked = not enabled
        return self.set_channels_last(self.configured_channels_last and not enabled)

    @property
    def rho(self) -> torch.Tensor:
        """The K step sizes ρ_k, shape (K,)."""
        return torch.stack([stage.rho for stage in self.stages])

    @staticmethod
    def initial_estimate(ir: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
        """I^(0) = (I_ir + I_vi) / 2 (release row 12). (N, 1, H, W) in [0, 1]."""
        return 0.5 * (ir + vi)

    def initial_memory(self, ir: torch.Tensor, vi: torch.Tensor) -> Memory:
        """m_s^(0) = m_l^(0) = Cat(Conv(I_ir), Conv(I_vi)) (N, channels, H, W); empty without memories."""
        if not self.uses_memory:
            return Memory()
        both = torch.cat([self._layout(self.init_memory_ir(ir)), self._layout(self.init_memory_vi(vi))], dim=1)
        return Memory(short=both, long=both)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(
        self,
        ir: torch.Tensor,
        vi: torch.Tensor,
        w_ir: torch.Tensor,
        w_vi: torch.Tensor,
        attention: StageAttention | None = None,
        initial: torch.Tensor | None = None,
    ) -> FusionOutput:
        """Fuse. ir, vi: (N, 1, H, W) in [0, 1]; w_ir, w_vi: (N, 1, H, W) attribution weights (constants).

        ``attention`` supplies A per stage; None means A = 0 at every stage (σ(0) = 0.5). ``initial``: I^(0) when
        the caller has computed it already (attribution does), else :meth:`initial_estimate`.
        """
        data = DataTerm(ir, vi, w_ir.detach(), w_vi.detach())
        image = self.initial_estimate(ir, vi) if initial is None else initial.to(ir.dtype)
        out = FusionOutput(fused=image, initial=image)
        memory = self.initial_memory(ir, vi)
        watch = attention is not None and self.uses_attention
        if watch:
            attention.start(image)
        for stage in self.stages:
            att = attention.map_for_next_stage().detach() if watch else None
            image, memory = stage(image, data, memory, att)
            out.stages.append(image)
            out.attention.append(att if att is not None else torch.zeros_like(image))
            if watch:
                attention.observe(image)
        out.fused = image
        return out
