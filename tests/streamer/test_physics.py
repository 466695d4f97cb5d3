import numpy as np
import pytest

from streamer.config import SimulatorConfig
from streamer.physics import (FAMILIES, far_field_intensity, fermat_positions, make_object, make_probe, patches,
                              raster_positions)
from streamer.simulator import make_scan


def test_energy_is_conserved_between_object_plane_and_detector():
    rng = np.random.default_rng(0)
    probe = make_probe(64, 24, 2.0)
    obj = make_object("particles", (96, 96), rng)
    p = patches(obj, np.array([[0, 0], [10, 20], [32, 32]]), 64)
    exit_energy = np.sum(np.abs(probe[None] * p) ** 2, axis=(1, 2))
    np.testing.assert_allclose(far_field_intensity(probe, p).sum(axis=(1, 2)), exit_energy, rtol=1e-5)
    assert np.isclose(np.sum(np.abs(probe) ** 2), 1.0, rtol=1e-6)


def test_flat_object_and_plane_wave_give_a_single_bright_pixel():
    n = 32
    plane = np.full((n, n), 1 / n, np.complex64)  # unit energy
    vacuum = np.ones((1, n, n), np.complex64)
    intensity = far_field_intensity(plane, vacuum)[0]
    assert np.isclose(intensity[n // 2, n // 2], 1.0, rtol=1e-5)
    assert intensity.sum() - intensity[n // 2, n // 2] < 1e-8


def test_gaussian_probe_in_vacuum_gives_the_analytic_gaussian_width():
    n, fwhm = 128, 16.0
    probe = make_probe(n, fwhm, curvature_rad=0.0)
    far = far_field_intensity(probe, np.ones((1, n, n), np.complex64))[0]
    k = np.arange(n) - n // 2
    profile = far[n // 2] / far[n // 2].max()
    sigma_r = fwhm / 2.3548  # amplitude exp(-r²/2σ²) → intensity in k: exp(-(2πσk/n)²)
    expected = np.exp(-((2 * np.pi * sigma_r * k / n) ** 2))
    np.testing.assert_allclose(profile, expected, atol=2e-3)


def test_raster_covers_the_object_with_the_requested_overlap():
    pos = raster_positions((192, 192), 64, 12.8)
    assert pos.min() == 0 and pos.max() == 128
    step = np.diff(np.unique(pos[:, 0]))
    assert np.all(np.abs(step - 12.8) <= 1)
    covered = np.zeros((192, 192), bool)
    for y, x in pos:
        covered[y : y + 64, x : x + 64] = True
    assert covered.all()


def test_fermat_spiral_stays_inside_and_has_the_requested_density():
    pos = fermat_positions((256, 256), 64, 10.0)
    assert pos.min() >= 0 and pos.max() <= 192
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert 7.0 < np.median(d.min(axis=1)) < 13.0


@pytest.mark.parametrize("family", FAMILIES)
def test_objects_are_physical(family):
    obj = make_object(family, (96, 96), np.random.default_rng(5))
    amp, phase = np.abs(obj), np.angle(obj)
    assert 0 < amp.min() and amp.max() <= 1.0 + 1e-6
    assert np.abs(phase).max() < np.pi
    assert phase.std() > 0.05  # not blank


def test_families_differ_in_statistics_and_seeds_are_reproducible():
    stats = []
    for family in FAMILIES:
        obj = make_object(family, (128, 128), np.random.default_rng(0))
        stats.append((np.abs(obj).mean(), np.angle(obj).mean()))
    assert len({(round(a, 2), round(p, 2)) for a, p in stats}) == len(FAMILIES)
    a = make_scan(SimulatorConfig(seed=3), 1)
    b = make_scan(SimulatorConfig(seed=3), 1)
    np.testing.assert_array_equal(a.obj, b.obj)
    assert a.family == FAMILIES[1]


def test_config_validation_is_clear():
    with pytest.raises(ValueError, match="object_size_px"):
        SimulatorConfig(frame_size=64, object_size_px=32)
    with pytest.raises(ValueError, match="unknown object families"):
        SimulatorConfig(families=("galaxies",))
    with pytest.raises(ValueError, match="does not match"):
        SimulatorConfig(encoding="bs32-lz4<", bit_depth=16)
