"""The unfolded fusion network of Sec. III-A (Eq. 2–4) with the memories of Sec. III-C (Eq. 13–15).

Each stage is one iteration of the gradient-projection method for Eq. 1:

    F0      = I^(k-1) − ρ_k ∇f(I^(k-1)),  ∇f(I) = w1 ⊙ (I − I_ir) + w2 ⊙ (I − I_vi)    (gradient step)
    F1      = Conv(F0)
    F2      = Conv(Cat(F1, m_s, m_l))
    F3      = σ(A) ⊙ Conv(F2) + F2                                                  (attribution attention)
    I^(k)   = Conv(F3)                                                              (to one channel, sigmoid)
    m_s     = F3;   [h, c] = ConvLSTM(Cat(F1, F2, F3), [h, c]);   m_l = Conv(h)      (memories)

The attention map A comes from an ``attention`` object (see :mod:`models.attribution`) that watches the
stage outputs; the fusion network itself never calls the segmenter.
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
class FusionOutput:
    """Result of one pass. ``fused`` (N, 1, H, W) in [0, 1] is ``stages[-1]``; ``stages`` holds I^(1..K);
    ``initial`` is I^(0); ``attention`` holds the map A each stage used (zeros where none)."""

    fused: torch.Tensor
    initial: torch.Tensor
    stages: list[torch.Tensor] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)


class UnfoldingStage(nn.Module):
    """One stage of Eq. 4 with its memory updates (Eq. 13–15). Submodule names follow the release.

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
        self.conv1 = ConvUnit(1, channels, channels)  # F0 -> F1
        self.conv2 = ConvUnit(merge_in, channels, channels)  # Cat(F1, m_s, m_l) -> F2
        self.conv3 = ConvUnit(channels, channels, channels)  # the attended branch of F3
        self.conv4 = nn.Sequential(ConvUnit(channels, channels // 2, 1), nn.Sigmoid())  # F3 -> I^(k)
        if self.updates_long_memory:
            self.conv5 = ConvUnit(3 * channels, channels, channels)  # Cat(F1, F2, F3) -> ConvLSTM input
            self.lstm = ConvLSTMCell(channels, first_step=lstm_first_step)
            self.conv6 = ConvUnit(channels, channels, channels)  # h -> m_l

    def gradient_step(
        self, image: torch.Tensor, ir: torch.Tensor, vi: torch.Tensor, w_ir: torch.Tensor, w_vi: torch.Tensor
    ) -> torch.Tensor:
        """F0 = I − ρ (w1 ⊙ (I − I_ir) + w2 ⊙ (I − I_vi)) (Eq. 2–3). All (N, 1, H, W)."""
        grad_f = w_ir * (image - ir) + w_vi * (image - vi)
        return image - self.rho * grad_f

    def forward(
        self,
        image: torch.Tensor,
        ir: torch.Tensor,
        vi: torch.Tensor,
        w_ir: torch.Tensor,
        w_vi: torch.Tensor,
        short_memory: torch.Tensor | None,
        long_memory: torch.Tensor | None,
        lstm_state: tuple[torch.Tensor, torch.Tensor] | None,
        attention: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple | None]:
        """Returns (I^(k), m_s^(k), m_l^(k), lstm state); memories are None when switched off."""
        f0 = self.gradient_step(image, ir, vi, w_ir, w_vi) if self.use_gradient_step else image
        f1 = self.conv1(f0)
        merged = [f1]
        if self.use_short_memory:
            merged.append(short_memory)
        if self.use_long_memory:
            merged.append(long_memory)
        f2 = self.conv2(torch.cat(merged, dim=1))
        refined = self.conv3(f2)
        if self.use_attention:
            refined = torch.sigmoid(attention) * refined
        f3 = refined + f2
        out = self.conv4(f3)
        new_short = f3 if self.use_short_memory else None
        new_long, new_state = None, None
        if self.updates_long_memory:
            new_state = self.lstm(self.conv5(torch.cat([f1, f2, f3], dim=1)), lstm_state)
            new_long = self.conv6(new_state[0])
        return out, new_short, new_long, new_state


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
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"fusion.stages must be >= 1, got {stages}")
        if channels % 2:
            raise ValueError(f"fusion.channels must be even (memories start as two halves), got {channels}")
        self.num_stages = stages
        self.uses_attention = attention
        self.uses_memory = short_memory or long_memory
        if self.uses_memory:
            self.init_conv_ir = ConvUnit(1, channels // 2, channels // 2)
            self.init_conv_vi = ConvUnit(1, channels // 2, channels // 2)
        self.blockflow = nn.ModuleList(
            UnfoldingStage(channels, rho_init, gradient_step, attention, short_memory, long_memory, lstm_first_step,
                           updates_long_memory=k < stages - 1)
            for k in range(stages)
        )

    @property
    def rho(self) -> torch.Tensor:
        """The K step sizes ρ_k, shape (K,)."""
        return torch.stack([stage.rho for stage in self.blockflow])

    @staticmethod
    def initial_estimate(ir: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
        """I^(0) = (I_ir + I_vi) / 2 (SPEC §6 row 12). (N, 1, H, W) in [0, 1]."""
        return 0.5 * (ir + vi)

    def initial_memory(self, ir: torch.Tensor, vi: torch.Tensor) -> torch.Tensor | None:
        """m_s^(0) = m_l^(0) = Cat(Conv(I_ir), Conv(I_vi)): (N, channels, H, W), or None without memories."""
        if not self.uses_memory:
            return None
        return torch.cat([self.init_conv_ir(ir), self.init_conv_vi(vi)], dim=1)

    def forward(
        self,
        ir: torch.Tensor,
        vi: torch.Tensor,
        w_ir: torch.Tensor,
        w_vi: torch.Tensor,
        attention: StageAttention | None = None,
    ) -> FusionOutput:
        """Fuse. ir, vi: (N, 1, H, W) in [0, 1]; w_ir, w_vi: (N, 1, H, W) attribution weights (constants).

        ``attention`` supplies A per stage; None means A = 0 at every stage (σ(0) = 0.5).
        """
        w_ir, w_vi = w_ir.detach(), w_vi.detach()
        image = self.initial_estimate(ir, vi)
        out = FusionOutput(fused=image, initial=image)
        memory = self.initial_memory(ir, vi)
        short_memory = long_memory = memory
        lstm_state = None
        if attention is not None:
            attention.start(image)
        for stage in self.blockflow:
            if attention is not None and self.uses_attention:
                att = attention.map_for_next_stage().detach()
            else:
                att = torch.zeros_like(image)
            image, short_memory, long_memory, lstm_state = stage(
                image, ir, vi, w_ir, w_vi, short_memory, long_memory, lstm_state, att
            )
            out.stages.append(image)
            out.attention.append(att)
            if attention is not None and self.uses_attention:
                attention.observe(image)
        out.fused = image
        return out
