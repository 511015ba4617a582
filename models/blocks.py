"""Convolutional building blocks of the unfolded fusion network (SPEC §2, §6.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LSTM_FIRST_STEPS = ("zero_state", "release")


class ConvUnit(nn.Module):
    """The learned "Conv" of Eq. 4: 3×3 conv → PReLU (one shared slope) → 3×3 conv, reflect padding.

    Inputs need H, W ≥ 2 (reflect padding). Submodule names follow the release (``conv_unit.0/1/2``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_unit = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, padding_mode="reflect"),
            nn.PReLU(),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, padding_mode="reflect"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_unit(x)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM of Eq. 15 with input, forget and output gates and a tanh candidate.

    Each gate is a 3×3 convolution of the input z plus a 3×3 convolution of the previous hidden state h;
    the four input convolutions are stacked into ``conv_z`` and the four state convolutions into ``conv_h``
    (output channels ordered i, f, o, g).

    ``first_step`` says what happens when there is no state yet:
      - ``"zero_state"`` (paper): h = c = 0, then the standard update, so c = i ⊙ g and h = o ⊙ tanh(c)
        with the gates seeing the state convolutions' biases.
      - ``"release"`` (SPEC §6 row 13): gates from ``conv_z`` alone, c = i ⊙ g and h = o ⊙ c (no tanh).
    """

    def __init__(self, channels: int, first_step: str = "zero_state") -> None:
        super().__init__()
        if first_step not in LSTM_FIRST_STEPS:
            raise ValueError(f"lstm first_step must be one of {LSTM_FIRST_STEPS}, got {first_step!r}")
        self.channels = channels
        self.first_step = first_step
        self.conv_z = nn.Conv2d(channels, 4 * channels, 3, padding=1, padding_mode="reflect")
        self.conv_h = nn.Conv2d(channels, 4 * channels, 3, padding=1, padding_mode="reflect")

    def forward(
        self, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step. z: (N, C, H, W); state: (h, c) each (N, C, H, W) or None. Returns the new (h, c)."""
        gates = self.conv_z(z)
        if state is None and self.first_step == "release":
            i, _, o, g = gates.chunk(4, dim=1)
            c = torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * c, c
        if state is None:
            h_prev = c_prev = torch.zeros_like(z[:, : self.channels])
        else:
            h_prev, c_prev = state
        i, f, o, g = (gates + self.conv_h(h_prev)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|∂x/∂u| + |∂x/∂v| with 3×3 Sobel kernels and zero padding. x: (N, 1, H, W) → (N, 1, H, W)."""
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    grads = F.conv2d(x, kernels, padding=1)
    return grads.abs().sum(dim=1, keepdim=True)
