"""Models: PtychoNN (diffraction → amplitude, phase) and a small MLP classifier for the classification benchmark.

PtychoNN (Cherukara et al. 2020): a shared encoder of ``depth`` blocks Conv3×3-ReLU-Conv3×3-ReLU-MaxPool2 with
``nconv·2^k`` channels, and two decoders of ``depth`` blocks Conv-ReLU-Conv-ReLU-Upsample2 ending in a 3×3
convolution to one channel: amplitude through a sigmoid, phase through ``tanh·π``. Input ``(n, 1, N, N)`` with
``N`` divisible by ``2^depth`` (64 and 128 with the default depth 3).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True)]


class PtychoNN(nn.Module):
    def __init__(self, nconv: int = 32, depth: int = 3, frame_size: int = 64) -> None:
        super().__init__()
        if frame_size % (2**depth):
            raise ValueError(f"frame_size {frame_size} must be divisible by 2**depth = {2**depth}")
        self.nconv, self.depth, self.frame_size = nconv, depth, frame_size
        chans = [nconv * 2**k for k in range(depth)]
        enc: list[nn.Module] = []
        cin = 1
        for c in chans:
            enc += [*_block(cin, c), nn.MaxPool2d(2)]
            cin = c
        self.encoder = nn.Sequential(*enc)
        self.amplitude = self._decoder(chans)
        self.phase = self._decoder(chans)

    @staticmethod
    def _decoder(chans: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        cin = chans[-1]
        for c in reversed(chans):
            layers += [*_block(cin, c), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            cin = c
        layers.append(nn.Conv2d(cin, 1, 3, padding=1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (n, 1, N, N) preprocessed diffraction; returns amplitude, phase of shape (n, N, N)."""
        z = self.encoder(x)
        amp = torch.sigmoid(self.amplitude(z)).squeeze(1)
        phase = (math.pi * torch.tanh(self.phase(z))).squeeze(1)
        return amp, phase


class MLPClassifier(nn.Module):
    """The classification benchmark's model: 64 → 128 → 10 with ReLU."""

    def __init__(self, inputs: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
