"""Stitching predicted patches into a per-scan mosaic, and quality estimates that need no ground truth.

Each patch is added with the probe's intensity as its weight, as ptychographic stitching does: a pixel counts as
much as the beam lit it (the intensity of a Gaussian beam of the series header's ``probe_diameter_px`` amplitude
FWHM; without it, a Gaussian window of a quarter of the frame). Per object pixel the mosaic keeps Σw, Σw·a, Σw·a²,
Σw·φ, Σw·φ² and Σw·misfit: the weighted mean is the reconstruction, the weighted variance is the *overlap
disagreement* — neighbouring predictions of the same object pixel should agree; where they do not, the model is
unsure or the content is hard — and the misfit map spreads each patch's forward-model misfit
(:mod:`steering.forward`) over the pixels it covers.
"""

from __future__ import annotations

import numpy as np


def window(size: int, sigma_frac: float = 0.25) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    return np.exp(-(yy**2 + xx**2) / (2 * (sigma_frac * size) ** 2)).astype(np.float32)


def probe_weights(size: int, fwhm_px: float) -> np.ndarray:
    """|P|² of a Gaussian beam whose *amplitude* has FWHM ``fwhm_px`` (as :func:`streamer.physics.make_probe`),
    normalised to a maximum of 1."""
    sigma = fwhm_px / 2.3548  # of the amplitude; the intensity exp(-r²/σ²) is narrower by √2
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    return np.exp(-(yy**2 + xx**2) / sigma**2).astype(np.float32)


class Mosaic:
    def __init__(self, shape: tuple[int, int], frame: int, probe_fwhm_px: float = 0.0) -> None:
        self.shape, self.frame = shape, frame
        self.w = probe_weights(frame, probe_fwhm_px) if probe_fwhm_px > 0 else window(frame)
        self.sums = np.zeros((6, *shape), np.float64)  # Σw, Σw·a, Σw·a², Σw·φ, Σw·φ², Σw·misfit
        self.misfit_weight = np.zeros(shape, np.float64)  # Σw of the patches that had a forward-model check
        self.frames = 0
        self.measured: set[tuple[int, int]] = set()  # top-left positions measured (rounded): stitched or skipped
        self._summarised: np.ndarray | None = None  # the subgrid images at the last summary

    def add(self, positions_px: np.ndarray, amp: np.ndarray, phase: np.ndarray,
            misfit: np.ndarray | None = None) -> int:
        """Add patches at top-left ``positions_px`` (n, 2); positions outside the field are skipped. ``misfit``:
        each patch's forward-model misfit (:mod:`steering.forward`), spread over the pixels it covers."""
        added = 0
        for i, ((y, x), a, p) in enumerate(zip(positions_px.astype(int), amp, phase)):
            if y < 0 or x < 0 or y + self.frame > self.shape[0] or x + self.frame > self.shape[1]:
                continue
            sl = (slice(y, y + self.frame), slice(x, x + self.frame))
            self.note_measured(positions_px[i:i + 1])
            w = self.w
            for k, v in enumerate((w, w * a, w * a * a, w * p, w * p * p)):
                self.sums[k][sl] += v
            if misfit is not None and np.isfinite(misfit[i]):
                self.sums[5][sl] += w * misfit[i]
                self.misfit_weight[sl] += w
            added += 1
        self.frames += added
        return added

    def note_measured(self, positions_px: np.ndarray) -> None:
        """Top-left positions (n, 2) that were measured, rounded to the pixel (the grid a rescan requests), whether
        or not their patches were stitched (a frame skipped under load is measured all the same)."""
        for y, x in np.rint(np.asarray(positions_px, np.float64).reshape(-1, 2)).astype(int):
            if 0 <= y <= self.shape[0] - self.frame and 0 <= x <= self.shape[1] - self.frame:
                self.measured.add((int(y), int(x)))

    @property
    def covered(self) -> np.ndarray:
        return self.sums[0] > 0.05

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        w = np.maximum(self.sums[0], 1e-9)
        return self.sums[1] / w, self.sums[3] / w

    def disagreement(self) -> np.ndarray:
        """Weighted std of amplitude + phase predictions per pixel (0 where one patch covers it)."""
        w = np.maximum(self.sums[0], 1e-9)
        var_a = np.maximum(self.sums[2] / w - (self.sums[1] / w) ** 2, 0)
        var_p = np.maximum(self.sums[4] / w - (self.sums[3] / w) ** 2, 0)
        return np.where(self.covered, np.sqrt(var_a) + np.sqrt(var_p), 0.0)

    def misfit(self) -> np.ndarray:
        """Weighted mean forward-model misfit per pixel (0 where no checked patch covers it)."""
        checked = self.misfit_weight > 0.05
        return np.where(checked, self.sums[5] / np.maximum(self.misfit_weight, 1e-9), 0.0)

    def richness(self) -> np.ndarray:
        """Local content: gradient magnitude of the reconstructed phase (where it is covered)."""
        _, phase = self.images()
        gy, gx = np.gradient(phase)
        return np.where(self.covered, np.hypot(gy, gx), 0.0)

    def summary(self, max_pixels: int = 100_000) -> dict[str, float]:
        """The policy's evaluation in one pass, on a regular subgrid of at most ``max_pixels`` object pixels (its
        cost stays bounded however large the field; the means are estimates, the maps above stay exact):
        covered fraction, mean overlap disagreement over covered pixels, mean forward-model misfit over checked
        pixels, and the stability (mean |Δ amplitude| + |Δ phase| over covered pixels since the previous
        summary; inf on the first)."""
        k = max(1, int(np.ceil(np.sqrt(self.shape[0] * self.shape[1] / max_pixels))))
        s = self.sums[:, ::k, ::k]
        cov = s[0] > 0.05
        w = np.maximum(s[0], 1e-9)
        amp, phase = s[1] / w, s[3] / w
        dis = np.sqrt(np.maximum(s[2] / w - amp * amp, 0)) + np.sqrt(np.maximum(s[4] / w - phase * phase, 0))
        mw = self.misfit_weight[::k, ::k]
        checked = mw > 0.05
        now = np.stack([amp, phase])
        prev, self._summarised = self._summarised, now
        return {"coverage": float(cov.mean()),
                "disagreement": float(dis[cov].mean()) if cov.any() else float("nan"),
                "data_misfit": float((s[5][checked] / mw[checked]).mean()) if checked.any() else float("nan"),
                "stability": float("inf") if prev is None or not cov.any() else
                float(np.abs(now - prev)[:, cov].sum(0).mean())}

    def true_error(self, obj: np.ndarray) -> float:
        """Simulation only (evaluation, never a decision input): amplitude + phase MAE over covered pixels."""
        amp, phase = self.images()
        cov = self.covered
        if not cov.any():
            return float("nan")
        return float(np.abs(amp - np.abs(obj))[cov].mean() + np.abs(phase - np.angle(obj))[cov].mean())
