"""Models: PtychoNN (diffraction → amplitude, phase) and a small MLP classifier for the classification benchmark.

PtychoNN (Cherukara et al. 2020): a shared encoder of ``depth`` blocks Conv3×3-Norm-ReLU-Conv3×3-Norm-ReLU-MaxPool2
with ``nconv·2^k`` channels, and two decoders of ``depth`` blocks of the same convolutions followed by a bilinear
Upsample2, each ending in a 3×3 convolution to one channel. Input ``(n, 1, N, N)`` with ``N`` divisible by
``2^depth``.

``decoder = "shared"``: one decoder ending in a convolution to two channels (amplitude, phase) instead of one per
output (the two outputs share every layer but the last). Measured 2026-12-03 (nconv 8,
depth 3, 32×32, batch 16): a training step costs 28.4 ms against 31.6 ms on one thread, and 1,000 steps took
19-22 s against 26-30 s on 2 threads, at the same held-out skill per step on each of the four simulated families
(cells 0.81 / 0.82, particles 0.28 / 0.28, lithography 0.39 / 0.39, textures 0.51 / 0.50, shared / separate;
``scripts/skill_by_radius.py``). The CPU demo uses it.

What makes it learn (measured 2026-12-01, see the README's "Reconstruction" section):

* **normalisation** after every convolution (``norm``): GroupNorm by default, whose statistics are per sample, so
  nothing drifts between tasks as BatchNorm's running statistics do under continual learning; ``batch`` and
  ``none`` for comparison. Without it, 13 plain conv+ReLU layers with PyTorch's default init shrink the
  input-dependent part of the activations to ~1e-6 at the output: the output did not depend on the input.
* **Kaiming (He) initialisation** of every convolution, for the ReLUs.
* **linear heads**: amplitude ``1 + a`` (vacuum is exactly 1, which a sigmoid reaches only at +inf and where it
  saturated within 20 steps) and phase ``p`` in radians, neither squashed, so neither saturates.

Weights and activations are **channels-last** (NHWC): the convolutions of a small model run faster so on the CPU
(oneDNN; one training step of nconv 8, depth 3, batch 32 at 32×32 on 2 cores: 47 ms against 63 ms in the default
layout, measured 2026-12-03) and on GPUs' tensor cores. ``forward`` takes any layout; the outputs are contiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

NORMS = ("group", "batch", "none")
DECODERS = ("separate", "shared")


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind == "group":  # 4 groups, or the most (<= 4) that divide the channels (nconv 6: 3 groups of 2)
        return [nn.GroupNorm(max(g for g in range(1, 5) if channels % g == 0), channels)]
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    return []


def _block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in ((cin, cout), (cout, cout)):
        layers += [nn.Conv2d(a, b, 3, padding=1), *_norm(norm, b), nn.ReLU(inplace=True)]
    return layers


class PtychoNN(nn.Module):
    def __init__(self, nconv: int = 32, depth: int = 3, frame_size: int = 64, norm: str = "group",
                 decoder: str = "separate") -> None:
        super().__init__()
        if frame_size % (2**depth):
            raise ValueError(f"frame_size {frame_size} must be divisible by 2**depth = {2**depth}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.nconv, self.depth, self.frame_size, self.norm, self.decoder = nconv, depth, frame_size, norm, decoder
        chans = [nconv * 2**k for k in range(depth)]
        enc: list[nn.Module] = []
        cin = 1
        for c in chans:
            enc += [*_block(cin, c, norm), nn.MaxPool2d(2)]
            cin = c
        self.encoder = nn.Sequential(*enc)
        if decoder == "shared":
            self.both = self._decoder(chans, norm, outputs=2)
            heads = [self.both[-1]]
        else:
            self.amplitude = self._decoder(chans, norm)
            self.phase = self._decoder(chans, norm)
            heads = [self.amplitude[-1], self.phase[-1]]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for head in heads:  # start near vacuum (1, 0), still input-dependent
            head.weight.data.mul_(0.1)
        self.to(memory_format=torch.channels_last)

    @staticmethod
    def _decoder(chans: list[int], norm: str, outputs: int = 1) -> nn.Sequential:
        layers: list[nn.Module] = []
        cin = chans[-1]
        for c in reversed(chans):
            layers += [*_block(cin, c, norm), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            cin = c
        layers.append(nn.Conv2d(cin, outputs, 3, padding=1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (n, 1, N, N) preprocessed diffraction; returns amplitude, phase [rad] of shape (n, N, N)."""
        z = self.encoder(x.contiguous(memory_format=torch.channels_last))
        if self.decoder == "shared":
            both = self.both(z)
            return 1.0 + both[:, 0].contiguous(), both[:, 1].contiguous()
        return 1.0 + self.amplitude(z).squeeze(1), self.phase(z).squeeze(1)


def build_model(config: Mapping[str, Any]) -> PtychoNN:
    """A PtychoNN from a :class:`trainer.config.ModelConfig`'s fields or a checkpoint's ``model_config`` (one
    written before ``norm`` or ``decoder`` existed gets the default it was trained with)."""
    return PtychoNN(nconv=int(config["nconv"]), depth=int(config["depth"]), frame_size=int(config["frame_size"]),
                    norm=str(config.get("norm", "group")), decoder=str(config.get("decoder", "separate")))


class MLPClassifier(nn.Module):
    """The classification benchmark's model: 64 → 128 → 10 with ReLU."""

    def __init__(self, inputs: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
