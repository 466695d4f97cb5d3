"""The forward-model check: does a predicted patch explain the frame that was measured?

The predicted object patch (amplitude, phase) times the probe, propagated to the detector with the same far-field
model the simulator uses (:func:`streamer.physics.far_field_intensity`), is compared with the measured counts by
the Poisson deviance, per pixel, over the valid pixels only (below the detector's count cutoff: a clipped pixel
says nothing about the intensity; and outside the detector's pixel mask when there is one). The incident flux
is not known per frame, so the prediction is scaled by its maximum-likelihood factor ``Σ y / Σ μ`` first.

For a correct prediction the mean deviance per pixel is about 1 at high counts (less where counts are low): it
measures the misfit in units of the photon noise, and needs no ground truth, so steering can use it beside the
overlap disagreement of neighbouring predictions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamer.physics import far_field_intensity


def poisson_deviance(measured: np.ndarray, predicted: np.ndarray, valid: np.ndarray | None = None
                     ) -> npt.NDArray[np.float64]:
    """Mean Poisson deviance per valid pixel of each frame: ``measured`` counts and ``predicted`` intensities of
    shape (n, h, w), ``valid`` (h, w) or (n, h, w) booleans (None: every pixel). The prediction is scaled by
    its maximum-likelihood flux factor first. A frame without valid pixels gets NaN."""
    y = np.asarray(measured, np.float64)
    mu = np.asarray(predicted, np.float64)
    mask = np.ones(y.shape, bool) if valid is None else np.broadcast_to(valid, y.shape)
    n = mask.sum(axis=(1, 2))
    scale = np.where(mask, y, 0).sum(axis=(1, 2)) / np.maximum(np.where(mask, mu, 0).sum(axis=(1, 2)), 1e-300)
    mu = np.maximum(mu * scale[:, None, None], 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu)
    dev = 2 * np.where(mask, term, 0).sum(axis=(1, 2))
    return np.where(n > 0, dev / np.maximum(n, 1), np.nan)


def data_misfit(measured: np.ndarray, amplitude: np.ndarray, phase: np.ndarray, probe: np.ndarray,
                saturation: int = 0, valid: np.ndarray | None = None) -> npt.NDArray[np.float64]:
    """Per frame: the Poisson deviance of the predicted patches (n, h, w) against the measured frames, pixels at
    or above ``saturation`` (the count cutoff; 0: the dtype's maximum) excluded, and those ``valid`` marks
    invalid (the detector's mask after preparing the frames: :mod:`trainer.prepare`)."""
    measured = np.asarray(measured)
    cutoff = saturation or (np.iinfo(measured.dtype).max if measured.dtype.kind in "ui" else np.inf)
    patch = np.asarray(amplitude, np.float32) * np.exp(1j * np.asarray(phase, np.float32))
    ok = measured < cutoff
    if valid is not None:
        ok = ok & valid
    return poisson_deviance(measured, far_field_intensity(probe, patch), ok)
