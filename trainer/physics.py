"""Physics-informed training: a loss that needs only the measured frames and the probe, no labels.

The model's predicted patch (amplitude ``a``, phase ``φ``) times the probe ``P``, propagated to the detector by the
same far-field model the simulator uses (:func:`streamer.physics.far_field_intensity`: an orthonormal 2-D FFT,
zero frequency at the centre), gives the expected intensity ``μ = |FFT(P · a e^{iφ})|²``. The measured counts
``y`` are Poisson with mean ``s·μ``; the incident flux ``s`` of a frame is not needed: at its maximum-likelihood
value ``s = Σy / Σμ`` the Poisson negative log-likelihood is, up to terms without the model, ``Σy`` times the
Kullback-Leibler divergence of the normalised intensities, ``KL(y/Σy ‖ μ/Σμ)`` over the valid pixels (unmasked
and unclipped). Its ``2·Σy`` multiple, the Poisson deviance, is the data error reported beside the loss. Where
the incident flux is known (``flux``: the series header's ``photons_per_frame``) it is used instead of the
maximum-likelihood one: only then is the amplitude's scale determined (at the ML flux, scaling every amplitude
changes nothing).

The loss's data term (``noise``) is by default the *amplitude* one, ``2 Σ (√(s·μ) − √y)² / Σy`` (a Gaussian on the
square root of the counts, with one count added under each root; :func:`amplitude_terms`), or the per-photon
Poisson divergence above (``poisson``); both are per photon, so one frame of 10⁶ photons weighs as much as one of
10³, and they agree where counts are large. The square root stabilises the Poisson variance, so every pixel weighs
by its noise rather than by its intensity: the bright centre no longer takes the gradient from the weak, high
angles where the fine structure is. Maximum-likelihood iterative solvers commonly use this amplitude model for its
robust convergence (e.g. Odstrčil et al. 2018's least-squares solver); PtychoPINN trains with the Poisson one.
Measured with ``bench_nolabels.py --seeds 0 1 --steps 1000`` (2026-12-03): the physics-trained model's error over
the label-trained one's, mean of the four families, went from 1.40 (Poisson) to 1.25 (amplitude): particles 1.45 →
1.24, cells 1.52 → 1.14, lithography 1.57 → 1.47, textures 1.07 → 1.14; over seeds 0-3, 1.29.

What a frame cannot tell, the loss cannot either: one global phase per frame (the intensity does not change with
it), and the object outside the probe's footprint. The learned phase is therefore compared with the truth after
removing one global phase per frame, over the illuminated region (the evaluation of ``bench_nolabels.py``);
``anchor`` (weight of the mean of ``φ²`` over the probe's footprint where the predicted amplitude is that of vacuum,
``a`` ≳ 0.95) pins the phase offset to the labels' convention (vacuum has phase 0), so consecutive patches agree.
Default 0.01: at 0.1 it also pulled the phase of weakly absorbing features towards 0 (``bench_nolabels.py``, seed 0,
1,000 steps, 2026-12-03: particles 0.206 → 0.153 with one phase per frame removed, 0.373 → 0.281 without; the
four families' ratio to the label-trained model 1.70 → 1.53).

Adopted from the published physics-informed ptychography networks (PtychoPINN, Hoidn et al. 2023: a
differentiable far-field forward model inside the training loop and a likelihood of the counts instead of a
labelled loss (theirs is Poisson; ours, by default, the amplitude one above); "towards generalizable deep
ptychography networks", 2025: train with the measured probe, the probe carries as much of the physics as the
objects). Not adopted: PtychoPINN's overlap-constrained groups of neighbouring
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


def _expected_counts(measured: torch.Tensor, predicted: torch.Tensor, valid: torch.Tensor | None,
                     flux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts, pixel weights, valid counts per frame, expected counts ``s·μ``): ``s`` the known flux where given
    (> 0), else the maximum-likelihood one ``Σy / Σμ`` over the valid pixels."""
    y = measured.to(predicted.dtype)
    w = torch.ones_like(y) if valid is None else valid.to(predicted.dtype).expand_as(y)
    total_y = (w * y).sum(dim=(-2, -1)).clamp_min(1e-12)
    total_mu = (w * predicted).sum(dim=(-2, -1)).clamp_min(1e-30)
    ml = total_y / total_mu
    scale = ml if flux is None else torch.where(flux.to(predicted.dtype) > 0, flux.to(predicted.dtype), ml)
    return y, w, total_y, (predicted * scale[:, None, None]).clamp_min(0)


def poisson_terms(measured: torch.Tensor, predicted: torch.Tensor, valid: torch.Tensor | None = None,
                  flux: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: (the Poisson deviance per measured photon, /2; the Poisson deviance) over the valid pixels.
    ``measured``, ``predicted``: (n, h, w); ``valid``: (n, h, w) or (h, w), 1 = use; ``flux``: (n,) photons per
    frame for a fully transmitting object (the expected counts are ``flux · predicted``), or 0 where unknown:
    then the maximum-likelihood flux, at which the first term is the KL divergence of the normalised intensities
    (and the amplitude's scale is free: nothing in the frame fixes it)."""
    y, w, total_y, q = _expected_counts(measured, predicted, valid, flux)
    q = q.clamp_min(1e-30)
    term = torch.where(y > 0, y * (torch.log(y.clamp_min(1e-30)) - torch.log(q)), torch.zeros_like(y)) - (y - q)
    deviance = 2 * (w * term).sum(dim=(-2, -1))
    return deviance / (2 * total_y), deviance


def probe_tensor(batch: Batch) -> torch.Tensor:
    """The complex probe of a batch: ``probe`` (n, 2, h, w) real/imaginary planes, per frame."""
    pr = batch["probe"]
    return torch.complex(pr[:, 0], pr[:, 1])


def overlap_disagreement(amp: torch.Tensor, phase: torch.Tensor, probe: torch.Tensor, pos: torch.Tensor,
                         group: torch.Tensor | None = None) -> torch.Tensor:
    """How much overlapping predictions of the same object disagree: patches (n, h, w) at top-left object pixel
    ``pos`` (n, 2) of scan ``group`` (n,) are stitched with the probe's intensity as weights, and each patch's
    weighted squared distance from the stitched object is averaged over the pixels another patch also lights.
    Zero when neighbours agree; a per-frame phase offset or the twin image (the object conjugated and turned by
    180° about each patch's own centre) disagrees with the neighbours, which is what the term is for. Relative to
    the stitched object's intensity, so that it cannot be lowered by shrinking every amplitude."""
    n, h, w = amp.shape
    z = torch.polar(amp, phase)
    weight = probe.abs() ** 2
    weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    weight = weight.expand(n, h, w)
    iy, ix = (torch.round(pos[:, k]).long() for k in (0, 1))
    iy, ix = iy - iy.min(), ix - ix.min()
    height, width = int(iy.max()) + h, int(ix.max()) + w
    g = torch.zeros(n, dtype=torch.long, device=amp.device) if group is None else torch.unique(group.long(),
                                                                                               return_inverse=True)[1]
    yy = torch.arange(h, device=amp.device)[None, :, None] + iy[:, None, None]
    xx = torch.arange(w, device=amp.device)[None, None, :] + ix[:, None, None]
    index = ((g[:, None, None] * height + yy) * width + xx).reshape(-1)
    size = (int(g.max()) + 1) * height * width
    flat_w = weight.reshape(-1)
    total = torch.zeros(size, dtype=flat_w.dtype, device=amp.device).index_add(0, index, flat_w)
    re = torch.zeros(size, dtype=flat_w.dtype, device=amp.device).index_add(0, index, flat_w * z.real.reshape(-1))
    im = torch.zeros(size, dtype=flat_w.dtype, device=amp.device).index_add(0, index, flat_w * z.imag.reshape(-1))
    tot = total[index].reshape(n, h, w)
    mean = torch.complex(re[index], im[index]).reshape(n, h, w) / tot.clamp_min(1e-12)
    others = (tot - weight).clamp_min(0)  # how much the other patches light this pixel
    shared = weight * others / tot.clamp_min(1e-12)
    # relative to the stitched object's intensity there: shrinking every amplitude (which the flux-free data
    # term cannot see) must not make neighbours "agree"
    return (shared * (z - mean).abs() ** 2).sum() / (shared * mean.abs() ** 2).sum().clamp_min(1e-12)


def amplitude_terms(measured: torch.Tensor, predicted: torch.Tensor, valid: torch.Tensor | None = None,
                    flux: torch.Tensor | None = None) -> torch.Tensor:
    """Per frame: ``2 Σ (√(s·μ + 1) − √(y + 1))² / Σy`` over the valid pixels, the amplitude (Gaussian on the
    square root of the counts) counterpart of :func:`poisson_terms`' per-photon divergence, and about equal to it
    where counts are large (the deviance is ``≈ 4 Σ (√(s·μ) − √y)²``). The flux ``s`` as there; the one count added
    under each root bounds the gradient at dark pixels and keeps the minimum exactly at ``s·μ = y``."""
    y, w, total_y, q = _expected_counts(measured, predicted, valid, flux)
    y = y.clamp_min(0)
    return 2 * (w * (torch.sqrt(q + 1) - torch.sqrt(y + 1)) ** 2).sum(dim=(-2, -1)) / total_y


NOISE_MODELS = ("amplitude", "poisson")


def physics_loss(out: dict[str, torch.Tensor], batch: Batch, anchor: float = 0.01, overlap: float = 1.0,
                 noise: str = "amplitude") -> torch.Tensor:
    """Mean per-photon data term of the predictions (``out_amp``, ``out_phase``) against the measured ``counts``
    over the ``valid`` pixels (``noise``: ``amplitude``, :func:`amplitude_terms`, or ``poisson``, the divergence of
    :func:`poisson_terms`), plus ``anchor`` × the mean squared phase where the prediction is vacuum within the
    probe's footprint, plus ``overlap`` × the disagreement of overlapping predictions where the batch has positions
    (``pos``, and ``group``: the scan of each frame)."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {noise!r}")
    probe = probe_tensor(batch)
    amp = out["out_amp"].clamp_min(0)  # a negative amplitude is a phase of π: the head's raw output is not that
    mu = far_field(probe, amp.to(torch.float32), out["out_phase"].to(torch.float32))
    if noise == "amplitude":
        data = amplitude_terms(batch["counts"], mu, batch.get("valid"), batch.get("flux"))
    else:
        data, _ = poisson_terms(batch["counts"], mu, batch.get("valid"), batch.get("flux"))
    loss = data.mean()
    if overlap and "pos" in batch and len(amp) > 1:
        loss = loss + overlap * overlap_disagreement(amp, out["out_phase"], probe, batch["pos"], batch.get("group"))
    if anchor:  # the vacuum reference: where the object transmits (almost) fully, its phase is 0
        footprint = probe.abs() ** 2
        footprint = (footprint >= 0.25 * footprint.amax(dim=(-2, -1), keepdim=True)).to(out["out_phase"].dtype)
        vacuum = footprint * torch.sigmoid((amp.detach() - 0.95) / 0.02)
        loss = loss + anchor * (vacuum * out["out_phase"] ** 2).sum() / vacuum.sum().clamp_min(1.0)
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
               valid: np.ndarray | None = None, chunk: int = 256, flux: float = 0.0) -> float:
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
                                   torch.as_tensor(v[i:i + chunk]), torch.full((len(mu),), float(flux)))
            total += float(dev.sum())
            pixels += float(v[i:i + chunk].sum())
    return total / max(pixels, 1.0)


def load_probe(path: str, size: int) -> np.ndarray:
    """A probe from a file: ``.npy`` (a complex array) or the HDF5 ``ptychosteer reconstruct`` writes (its
    ``probe``), ``size`` × ``size`` at the model's input sampling; normalised to unit total intensity."""
    try:
        if path.endswith((".h5", ".hdf5", ".nxs")):
            import h5py

            with h5py.File(path, "r") as f:
                probe = np.asarray(f["probe"][...])
        else:
            probe = np.load(path, allow_pickle=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read a probe from {path}: {exc}") from exc
    if probe.shape != (size, size) or not np.iscomplexobj(probe):
        raise ValueError(f"the probe in {path} is a {probe.dtype} array of shape {probe.shape}; the model needs a "
                         f"complex {size}x{size} probe (the prepared frames' sampling)")
    total = float(np.sum(np.abs(probe) ** 2))
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"the probe in {path} is zero or not finite")
    return (probe / np.sqrt(total)).astype(np.complex64)


def header_probe(config: dict, size: int) -> np.ndarray | None:
    """The probe a series header describes (the simulator's ``ptychosteer`` extension: a Gaussian beam of
    ``probe_diameter_px`` FWHM with ``probe_curvature_rad``), at ``size`` × ``size``; None when it does not."""
    from streamer.physics import make_probe

    ext = config.get("ptychosteer") if isinstance(config, dict) else None
    if not isinstance(ext, dict) or not ext.get("probe_diameter_px"):
        return None
    if int(config.get("y_pixels_in_detector", size)) != size:
        return None  # another sampling than the model's input: a probe file is needed
    return make_probe(size, float(ext["probe_diameter_px"]), float(ext.get("probe_curvature_rad", 1.0)))


def header_flux(config: dict) -> float:
    """Photons per frame for a fully transmitting object, where the series header states it (0: unknown)."""
    ext = config.get("ptychosteer") if isinstance(config, dict) else None
    value = ext.get("photons_per_frame") if isinstance(ext, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0
