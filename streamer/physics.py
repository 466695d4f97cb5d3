"""Far-field ptychography forward model: objects, probe, scan patterns, diffraction with photon noise.

Conventions (used throughout ptychosteer):

* arrays are numpy order ``(y, x)``; a scan position ``position_px = (y0, x0)`` is the top-left corner of the
  object patch that the frame sees, ``position_m`` is the patch *centre* in metres from the object origin;
* the object pixel size follows from the far-field geometry: ``dx = wavelength * distance / (N * pixel)``;
* intensity = ``|FFT(probe × patch)|²`` with an orthonormal FFT (Parseval: the detector receives exactly the
  exit-wave energy), scaled so that a fully transmitting object gives ``photons`` counts per frame, then Poisson
  noise, saturation at the detector's count cutoff and the detector's integer type.

Object *families* differ in content and in their amplitude/phase statistics, so that successive scans from
different families are different tasks for a continually learning model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FAMILIES: Final = ("particles", "cells", "lithography", "textures")
PLANCK_EV_M: Final = 1.239841984e-6  # h·c in eV·m

ComplexField = npt.NDArray[np.complex64]
RealImage = npt.NDArray[np.float32]
Positions = npt.NDArray[np.int64]  # (n, 2) top-left (y, x) in object pixels


def wavelength_m(energy_eV: float) -> float:
    return PLANCK_EV_M / energy_eV


def object_pixel_size_m(energy_eV: float, distance_m: float, detector_pixel_m: float, frame_size: int) -> float:
    return wavelength_m(energy_eV) * distance_m / (frame_size * detector_pixel_m)


# ------------------------------------------------------------------------------------------------ objects
def _smooth(field: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur through the FFT (periodic), enough for procedural content."""
    ky = np.fft.fftfreq(field.shape[0])[:, None]
    kx = np.fft.fftfreq(field.shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (ky**2 + kx**2))
    return np.real(np.fft.ifft2(np.fft.fft2(field) * kernel))


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)


def _particles(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(shape)
    t = np.zeros(shape, np.float32)
    for _ in range(int(shape[0] * shape[1] / 600)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(3, 12)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        t += np.sqrt(np.clip(1 - d2, 0, None)) * rng.uniform(0.4, 1.0)  # spheres: projected thickness
    return np.clip(t, 0, 1.5) / 1.5


def _cells(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(shape)
    seeds = rng.uniform(0, 1, size=(int(shape[0] * shape[1] / 900) + 2, 2)) * np.array(shape)
    d = np.sqrt((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2)
    d.sort(axis=-1)
    membrane = np.exp(-((d[..., 1] - d[..., 0]) ** 2) / 4.0)
    nucleus = np.clip(1 - d[..., 0] / 6.0, 0, 1)
    return np.clip(0.6 * membrane + 0.8 * nucleus + 0.15, 0, 1)


def _lithography(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    t = np.zeros(shape, np.float32)
    pitch = int(rng.integers(6, 12))
    for _ in range(int(shape[0] * shape[1] / 400)):
        y0, x0 = rng.integers(0, shape[0]) // pitch * pitch, rng.integers(0, shape[1]) // pitch * pitch
        if rng.random() < 0.5:  # a wire
            h, w = pitch // 2, int(rng.integers(2, 8)) * pitch
        else:
            h, w = int(rng.integers(2, 8)) * pitch, pitch // 2
        if rng.random() < 0.3:  # a pad
            h = w = int(rng.integers(1, 3)) * pitch
        t[y0 : y0 + h, x0 : x0 + w] = 1.0
    return t


def _textures(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    noise = _smooth(rng.standard_normal(shape), rng.uniform(2.0, 4.0))
    noise = (noise - noise.mean()) / (noise.std() + 1e-9)
    return 1 / (1 + np.exp(-2 * noise))


# (generator, absorption strength, phase strength in rad): different statistics per family
_FAMILY_SPECS: Final = {
    "particles": (_particles, 0.3, 2.4),
    "cells": (_cells, 0.15, 1.2),
    "lithography": (_lithography, 0.9, -1.6),
    "textures": (_textures, 0.5, 0.9),
}


def make_object(family: str, shape: tuple[int, int], rng: np.random.Generator) -> ComplexField:
    """A transmission function ``amplitude · exp(i·phase)`` with amplitude in (0, 1] and |phase| < π."""
    if family not in _FAMILY_SPECS:
        raise ValueError(f"unknown object family {family!r}; choose from {', '.join(FAMILIES)}")
    make, absorption, phase_strength = _FAMILY_SPECS[family]
    thickness = make(shape, rng).astype(np.float32)
    amplitude = np.exp(-absorption * thickness)
    phase = np.clip(phase_strength * thickness, -np.pi + 1e-3, np.pi - 1e-3)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


# ------------------------------------------------------------------------------------------------ probe
def make_probe(size: int, diameter_px: float, curvature_rad: float = 1.0) -> ComplexField:
    """A Gaussian beam of FWHM ``diameter_px`` with a quadratic (defocus) phase of ``curvature_rad`` at r = FWHM/2.

    Normalised to unit total intensity, so ``photons`` scales directly to counts per frame.
    """
    if diameter_px <= 0 or diameter_px > 2 * size:
        raise ValueError(f"probe diameter {diameter_px} px does not fit a {size}-px frame")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    r2 = yy**2 + xx**2
    sigma = diameter_px / 2.3548
    probe = np.exp(-r2 / (2 * sigma**2)) * np.exp(1j * curvature_rad * r2 / (diameter_px / 2) ** 2)
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def illuminated(probe: ComplexField, fraction: float = 0.25) -> npt.NDArray[np.bool_]:
    """Pixels where the probe's intensity is at least ``fraction`` of its maximum: the part of a patch a single
    frame measures (outside it a frame says little or nothing about the object)."""
    intensity = np.abs(probe) ** 2
    return intensity >= fraction * intensity.max()


# ------------------------------------------------------------------------------------------------ scans
def raster_positions(object_shape: tuple[int, int], frame: int, step_px: float) -> Positions:
    """Top-left corners of a raster (row by row) covering the object with the given step."""
    if step_px <= 0:
        raise ValueError("scan step must be positive")
    ys = np.arange(0, object_shape[0] - frame + 1e-9, step_px)
    xs = np.arange(0, object_shape[1] - frame + 1e-9, step_px)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.round(grid).astype(np.int64)


def fermat_positions(object_shape: tuple[int, int], frame: int, step_px: float) -> Positions:
    """A Fermat spiral (golden angle) with mean nearest-neighbour distance ≈ ``step_px``, from the centre out."""
    if step_px <= 0:
        raise ValueError("scan step must be positive")
    span = np.array(object_shape, float) - frame
    centre = span / 2
    n_max = int(np.ceil(np.pi * (np.hypot(*span) / 2) ** 2 / step_px**2 * 1.3)) + 1
    k = np.arange(n_max)
    r = step_px / np.sqrt(np.pi) * np.sqrt(k) * 1.05
    theta = k * np.pi * (3 - np.sqrt(5))
    pts = centre + np.stack([r * np.sin(theta), r * np.cos(theta)], axis=-1)
    inside = np.all((pts >= 0) & (pts <= span), axis=1)
    return np.round(pts[inside]).astype(np.int64)


def scan_positions(pattern: str, object_shape: tuple[int, int], frame: int, step_px: float) -> Positions:
    if pattern == "raster":
        return raster_positions(object_shape, frame, step_px)
    if pattern == "fermat":
        return fermat_positions(object_shape, frame, step_px)
    raise ValueError(f"unknown scan pattern {pattern!r}; choose raster or fermat")


# ------------------------------------------------------------------------------------------------ forward model
def patches(obj: ComplexField, positions: Positions, frame: int) -> ComplexField:
    """Object patches (n, frame, frame) at the top-left ``positions``."""
    idx_y = positions[:, 0, None] + np.arange(frame)[None, :]
    idx_x = positions[:, 1, None] + np.arange(frame)[None, :]
    return obj[idx_y[:, :, None], idx_x[:, None, :]]


def far_field_intensity(probe: ComplexField, obj_patches: ComplexField) -> npt.NDArray[np.float64]:
    """Noise-free ``|FFT(probe × patch)|²`` (orthonormal, DC at the centre) for a stack of patches."""
    exit_wave = probe[None] * obj_patches
    far = np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"), axes=(-2, -1))
    return np.abs(far) ** 2


def detect(intensity: np.ndarray, photons: float, rng: np.random.Generator, saturation: int,
           dtype: np.dtype) -> np.ndarray:
    """Scale to ``photons`` for a fully transmitting object, add Poisson noise, saturate, cast to the detector type."""
    counts = rng.poisson(np.clip(intensity * photons, 0, 1e12))
    return np.minimum(counts, saturation).astype(dtype)


@dataclass(frozen=True)
class ScanData:
    """Everything needed to measure one scan: its object, probe and positions (family and index for provenance)."""

    index: int
    family: str
    obj: ComplexField
    probe: ComplexField
    positions: Positions
    pixel_size_m: float

    def labels(self, positions: Positions) -> tuple[RealImage, RealImage]:
        p = patches(self.obj, positions, self.probe.shape[0])
        return np.abs(p).astype(np.float32), np.angle(p).astype(np.float32)

    def position_m(self, position_px: np.ndarray) -> tuple[float, float]:
        half = self.probe.shape[0] / 2
        return float((position_px[0] + half) * self.pixel_size_m), float((position_px[1] + half) * self.pixel_size_m)
