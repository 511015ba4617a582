"""Toy scoring models whose attributions are known or easy to check (IG tests, fusion-network tests)."""
from __future__ import annotations

import torch
from torch import nn


class PixelPolynomial(nn.Module):
    """y^c(x) = a_c · x^power + b_c at every pixel: IG region sums are known in closed form."""

    def __init__(self, a: list[float], b: list[float], power: int = 1) -> None:
        super().__init__()
        self.a = torch.tensor(a, dtype=torch.float64).view(1, -1, 1, 1)
        self.b = torch.tensor(b, dtype=torch.float64).view(1, -1, 1, 1)
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x**self.power + self.b


class TinyConvSegmenter(nn.Module):
    """A small nonlinear net with spatial mixing (no batch coupling), float64."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=2, dilation=2), nn.Softplus(),
            nn.Conv2d(6, classes, 3, padding=1),
        ).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CreatesFileWhenUnpickled:
    """Unpickling this creates a file: the stand-in for a checkpoint that runs code on load."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
