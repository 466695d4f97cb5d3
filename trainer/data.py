"""From detector frames to training tensors.

Diffraction intensities span orders of magnitude, and steering may change the exposure mid-scan. The network
sees each frame normalised to a fixed flux, then log-compressed: ``log1p(I · C / ΣI) / log1p(C)`` with
``C = REFERENCE_COUNTS``. Scaling a frame's counts by any factor leaves this unchanged (up to photon noise and
saturation), so a model trained at one exposure reads frames taken at another. Values lie in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from buffer import FieldSpec


REFERENCE_COUNTS = 1e6  # the flux every frame is scaled to before the log (the simulator's default photons)


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, h, w) counts of any integer/float type → (n, 1, h, w) float32 in [0, 1], independent of the exposure."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    total = x.flatten(1).sum(dim=1).clamp_min(1.0)
    x = torch.log1p(x * (REFERENCE_COUNTS / total)[:, None, None]) / float(np.log1p(REFERENCE_COUNTS))
    return x.unsqueeze(1)


def ptycho_batch(images: np.ndarray, amplitude: np.ndarray, phase: np.ndarray) -> dict[str, torch.Tensor]:
    return {"x": preprocess(images), "amp": torch.as_tensor(np.asarray(amplitude, np.float32)),
            "phase": torch.as_tensor(np.asarray(phase, np.float32))}


def ptycho_fields(frame_size: int) -> tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]]:
    """Buffer fields (input + labels) and DER output fields for PtychoNN on ``frame_size`` frames."""
    n = frame_size
    inputs = (FieldSpec("x", (1, n, n), torch.float32), FieldSpec("amp", (n, n), torch.float32),
              FieldSpec("phase", (n, n), torch.float32))
    outputs = (FieldSpec("out_amp", (n, n), torch.float32), FieldSpec("out_phase", (n, n), torch.float32))
    return inputs, outputs


def stack_frames(frames: Sequence) -> dict[str, torch.Tensor]:
    """Labelled :class:`streamer.frames.Frame` objects → one batch."""
    return ptycho_batch(np.stack([f.image for f in frames]), np.stack([f.amplitude for f in frames]),
                        np.stack([f.phase for f in frames]))
