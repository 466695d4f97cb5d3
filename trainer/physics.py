"""Physics-informed training: a loss that needs only the measured frames and the probe, no labels.

The model's predicted patch (amplitude ``a``, phase ``φ``) times the probe ``P``, propagated to the detector by the
same far-field model the simulator uses (:func:`streamer.physics.far_field_intensity`: an orthonormal 2-D FFT,
zero frequency at the centre), gives the expected intensity ``μ = |FFT(P · a e^{iφ})|²``. The measured counts
``y`` are Poisson with mean ``s·μ``; the incident flux ``s`` of a frame is not needed: at its maximum-likelihood
value ``s = Σy / Σμ`` the Poisson negative log-likelihood is, up to terms without the model, ``Σy`` times the
Kullback-Leibler divergence of the normalised intensities, ``KL(y/Σy ‖ μ/Σμ)`` over the valid pixels (unmasked
and unclipped). That per-photon divergence is the loss (one frame of 10⁶ photons weighs as much as one of 10³),
and its ``2·Σy`` multiple, the Poisson deviance, is the data error reported beside it.

What a frame cannot tell, the loss cannot either: one global phase per frame (the intensity does not change with
it), and the object outside the probe's footprint. The learned phase is therefore compared with the truth after
removing one global phase per frame, over the illuminated region (the evaluation of ``bench_nolabels.py``);
``anchor`` (weight of ``mean(φ)²`` over the probe's footprint) pins the phase offset to the one the labels'
convention would give a flat object, so consecutive patches agree.

Adopted from the published physics-informed ptychography networks (PtychoPINN, Hoidn et al. 2023: a
differentiable far-field forward model inside the training loop and a Poisson likelihood instead of a labelled
loss; "towards generalizable deep ptychography networks", 2025: train with the measured probe, the probe carries
as much of the physics as the objects). Not adopted: PtychoPINN's overlap-constrained groups of neighbouring
frames (its decoder stitches a 2×2 group; our stream trains per frame), and its learned intensity scale
(replaced by the closed-form maximum-likelihood flux above).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from trainer.strategies import Task

Batch = Mapping[str, torch.Tensor]


def far_field(probe: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``|FFT(P · a e^{iφ})|²`` (orthonormal, DC at the centre) of (n, h, w) patches; ``probe`` complex (h, w) or
    (n, h, w). Differentiable in ``amplitude`` and ``phase``."""
    exit_wave = probe * torch.polar(amplitude, phase)
    far = torch.fft.fftshift(torch.fft.fft2(exit_wave, norm="ortho"), dim=(-2, -1))
    return far.real ** 2 + far.imag ** 2


def poisson_terms(measured: torch.Tensor, predicted: torch.Tensor, valid: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: (KL divergence of the normalised intensities over the valid pixels, Poisson deviance at the
    maximum-likelihood flux). ``measured``, ``predicted``: (n, h, w); ``valid``: (n, h, w) or (h, w), 1 = use."""
    y = measured.to(predicted.dtype)
    w = torch.ones_like(y) if valid is None else valid.to(predicted.dtype).expand_as(y)
    total_y = (w * y).sum(dim=(-2, -1)).clamp_min(1e-12)
    total_mu = (w * predicted).sum(dim=(-2, -1)).clamp_min(1e-30)
    p = y / total_y[:, None, None]
    q = predicted / total_mu[:, None, None]
    eps = 1e-30
    kl = (w * torch.where(p > 0, p * (torch.log(p + eps) - torch.log(q + eps)), torch.zeros_like(p))).sum(dim=(-2, -1))
    return kl, 2 * total_y * kl


def probe_tensor(batch: Batch) -> torch.Tensor:
    """The complex probe of a batch: ``probe`` (n, 2, h, w) real/imaginary planes, per frame."""
    pr = batch["probe"]
    return torch.complex(pr[:, 0], pr[:, 1])


def physics_loss(out: dict[str, torch.Tensor], batch: Batch, anchor: float = 0.1) -> torch.Tensor:
    """Mean per-photon Poisson divergence of the predictions (``out_amp``, ``out_phase``) against the measured
    ``counts`` over the ``valid`` pixels, plus ``anchor`` × the squared mean phase over the probe's footprint."""
    probe = probe_tensor(batch)
    amp = out["out_amp"].clamp_min(0)  # a negative amplitude is a phase of π: the head's raw output is not that
    mu = far_field(probe, amp.to(torch.float32), out["out_phase"].to(torch.float32))
    kl, _ = poisson_terms(batch["counts"], mu, batch.get("valid"))
    loss = kl.mean()
    if anchor:
        footprint = probe.abs() ** 2
        footprint = (footprint >= 0.25 * footprint.amax(dim=(-2, -1), keepdim=True)).to(out["out_phase"].dtype)
        mean_phase = (out["out_phase"] * footprint).sum(dim=(-2, -1)) / footprint.sum(dim=(-2, -1)).clamp_min(1)
        loss = loss + anchor * (mean_phase ** 2).mean()
    return loss


def _outputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    amp, phase = model(batch["x"])
    return {"out_amp": amp, "out_phase": phase}


PHYSICS = Task(outputs=_outputs, loss=physics_loss, output_fields=("out_amp", "out_phase"))


def probe_planes(probe: np.ndarray, n: int) -> torch.Tensor:
    """(n, 2, h, w) float32 real/imaginary planes of one complex probe, for a batch of ``n`` frames."""
    planes = np.stack([probe.real, probe.imag]).astype(np.float32)
    return torch.as_tensor(planes)[None].expand(n, -1, -1, -1).contiguous()


def valid_pixels(counts: np.ndarray, saturation: float = 0.0, valid: np.ndarray | None = None) -> np.ndarray:
    """(n, h, w) float32 1/0: pixels below the detector's cutoff (``saturation``; 0: the type's maximum) and not
    masked (``valid`` from preparing the frames)."""
    counts = np.asarray(counts)
    cutoff = saturation or (np.iinfo(counts.dtype).max if counts.dtype.kind in "ui" else np.inf)
    ok = counts < cutoff
    if valid is not None:
        ok = ok & valid
    return ok.astype(np.float32)


def data_error(model: nn.Module, x: torch.Tensor, counts: np.ndarray, probe: np.ndarray,
               valid: np.ndarray | None = None, chunk: int = 256) -> float:
    """Mean Poisson deviance per valid pixel of ``model``'s predictions against ``counts`` (the data error: about
    1 for predictions as good as the photon noise allows at high counts)."""
    model.eval()
    total, pixels = 0.0, 0.0
    v = valid_pixels(counts, valid=valid)
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            amp, phase = model(x[i:i + chunk])
            mu = far_field(torch.as_tensor(probe), amp.clamp_min(0), phase)
            _, dev = poisson_terms(torch.as_tensor(counts[i:i + chunk].astype(np.float32)), mu,
                                   torch.as_tensor(v[i:i + chunk]))
            total += float(dev.sum())
            pixels += float(v[i:i + chunk].sum())
    return total / max(pixels, 1.0)
