"""The iterative reconstruction engine (trainer.iterative) against cases whose answer is known."""

import numpy as np
import pytest
import torch

from streamer.physics import detect, far_field_intensity, make_object, make_probe, patches, raster_positions
from trainer.iterative import EngineConfig, _project, object_error, reconstruct

N, SHAPE, PHOTONS = 16, (56, 56), 1e6


@pytest.fixture(scope="module")
def scan():
    rng = np.random.default_rng(0)
    obj = make_object("cells", SHAPE, rng)
    probe = make_probe(N, N / 2, 1.0)
    pos = raster_positions(SHAPE, N, 4)
    intensity = far_field_intensity(probe, patches(obj, pos, N)) * PHOTONS  # noise-free expected counts
    cover = np.zeros(SHAPE)
    for y, x in pos:
        cover[y:y + N, x:x + N] += np.abs(probe) ** 2
    return obj, probe, pos, intensity, cover >= 0.25 * cover.max()


def test_the_true_object_is_a_fixed_point_of_the_modulus_constraint(scan):
    """The engine's forward model is the simulator's: the true exit wave already has the measured moduli, so the
    projection leaves it unchanged and the misfit is zero (FFT convention and flux scaling agree)."""
    obj, probe, pos, intensity, _ = scan
    psi = torch.from_numpy(probe * obj[pos[0, 0]:pos[0, 0] + N, pos[0, 1]:pos[0, 1] + N])
    amp = torch.from_numpy(np.fft.ifftshift(np.sqrt(intensity[0] / PHOTONS))).float()
    new, err = _project(psi, amp, torch.ones_like(amp, dtype=torch.bool))
    assert float(err) < 1e-10 * float(amp.square().sum())
    np.testing.assert_allclose(new.numpy(), psi.numpy(), atol=1e-5)


@pytest.mark.parametrize("algorithm, iterations", [("epie", 100), ("rpie", 40), ("lsqml", 60)])
def test_a_known_object_is_recovered_from_noise_free_data(scan, algorithm, iterations):
    obj, probe, pos, intensity, region = scan
    result = reconstruct(intensity, pos, probe, SHAPE, photons=PHOTONS,
                         config=EngineConfig(algorithm=algorithm, iterations=iterations))
    assert result.data_error[-1] < 0.05 * result.data_error[0]
    assert object_error(result.obj, obj, region) < 0.03
    flat = np.full(SHAPE, np.abs(obj[region]).mean(), np.complex64)  # the floor: the mean transmission
    assert object_error(result.obj, obj, region) < 0.25 * object_error(flat, obj, region)


def test_saturated_pixels_must_be_masked_not_trusted(scan):
    obj, probe, pos, intensity, region = scan
    rng = np.random.default_rng(1)
    cutoff = int(np.quantile(intensity, 0.995))  # the brightest pixels of the central speckle clip
    counts = detect(intensity / PHOTONS, PHOTONS, rng, cutoff, np.dtype(np.uint32))
    cfg = EngineConfig(algorithm="rpie", iterations=40)
    masked = reconstruct(counts, pos, probe, SHAPE, photons=PHOTONS, valid=counts < cutoff, config=cfg)
    trusted = reconstruct(counts, pos, probe, SHAPE, photons=PHOTONS, config=cfg)
    assert (counts >= cutoff).sum() > len(pos)  # several clipped pixels per frame
    assert object_error(masked.obj, obj, region) < 0.6 * object_error(trusted.obj, obj, region)


def test_refining_a_wrong_probe_fits_the_data_better_than_keeping_it(scan):
    obj, probe, pos, intensity, region = scan
    wrong = make_probe(N, N / 2, 0.0)  # no defocus: the curvature is wrong
    cfg = dict(algorithm="rpie", iterations=40)
    kept = reconstruct(intensity, pos, wrong, SHAPE, photons=PHOTONS, config=EngineConfig(**cfg))
    refined = reconstruct(intensity, pos, wrong, SHAPE, photons=PHOTONS,
                          config=EngineConfig(**cfg, refine_probe=True))
    assert refined.data_error[-1] < 0.5 * kept.data_error[-1]


@pytest.mark.parametrize("change, message", [
    (dict(frames=np.ones((1, N, N))), "overlapping positions"),
    (dict(probe=np.ones((N + 2, N + 2), np.complex64)), "must match"),
    (dict(positions="nan"), "no scan position"),
    (dict(positions="outside"), "outside"),
])
def test_unusable_inputs_are_clear_errors(scan, change, message):
    _, probe, pos, intensity, _ = scan
    args = dict(frames=intensity, positions=pos.astype(float), probe=probe)
    if change.get("positions") == "nan":
        args["positions"] = args["positions"].copy()
        args["positions"][3] = np.nan
    elif change.get("positions") == "outside":
        args["positions"] = args["positions"] + 100
    else:
        args.update(change)
        if "frames" in change:
            args["positions"] = pos[:1].astype(float)
    with pytest.raises(ValueError, match=message):
        reconstruct(args["frames"], args["positions"], args["probe"], SHAPE, photons=PHOTONS)
