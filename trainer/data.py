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


def ptycho_fields(frame_size: int, loss: str = "l1") -> tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]]:
    """Buffer fields (input + labels, or for the ``physics`` loss what it compares with: the measured counts,
    their valid pixels, the probe, the position and the scan) and DER output fields for PtychoNN."""
    n = frame_size
    if loss == "physics":
        inputs = (FieldSpec("x", (1, n, n), torch.float32), FieldSpec("counts", (n, n), torch.float32),
                  FieldSpec("valid", (n, n), torch.float32), FieldSpec("probe", (2, n, n), torch.float32),
                  FieldSpec("pos", (2,), torch.float32), FieldSpec("group", (), torch.float32),
                  FieldSpec("flux", (), torch.float32))
    else:
        inputs = (FieldSpec("x", (1, n, n), torch.float32), FieldSpec("amp", (n, n), torch.float32),
                  FieldSpec("phase", (n, n), torch.float32))
    outputs = (FieldSpec("out_amp", (n, n), torch.float32), FieldSpec("out_phase", (n, n), torch.float32))
    return inputs, outputs


def stack_frames(frames: Sequence, probes: dict[int, np.ndarray] | None = None,
                 fluxes: dict[int, float] | None = None) -> dict[str, torch.Tensor]:
    """:class:`streamer.frames.Frame` objects → one batch: labelled ones with their labels, or with ``probes``
    (scan → complex probe) for the physics loss: the counts, valid pixels (unmasked, below the type's maximum),
    the probe, position, scan and (``fluxes``: scan → photons per frame, 0 unknown) incident flux of each frame."""
    images = np.stack([f.image for f in frames])
    if probes is None:
        return ptycho_batch(images, np.stack([f.amplitude for f in frames]), np.stack([f.phase for f in frames]))
    from trainer.physics import valid_pixels

    valid = np.stack([np.ones(f.image.shape, bool) if f.valid is None else f.valid for f in frames])
    probe = np.stack([probes[f.scan] for f in frames])
    return {"x": preprocess(images), "counts": torch.as_tensor(images.astype(np.float32)),
            "valid": torch.as_tensor(valid_pixels(images, valid=valid)),
            "probe": torch.as_tensor(np.stack([probe.real, probe.imag], axis=1).astype(np.float32)),
            "pos": torch.as_tensor(np.array([f.position_px or (0.0, 0.0) for f in frames], np.float32)),
            "group": torch.as_tensor(np.array([f.scan for f in frames], np.float32)),
            "flux": torch.as_tensor(np.array([(fluxes or {}).get(f.scan, 0.0) for f in frames], np.float32))}
