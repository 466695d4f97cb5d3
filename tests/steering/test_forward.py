"""The forward-model check: Poisson deviance of a predicted patch against the measured frame."""

import numpy as np

from steering.forward import data_misfit, poisson_deviance
from streamer.physics import detect, far_field_intensity, make_object, make_probe, patches


def _scan(n=16, frame=32, photons=1e6, seed=0, family="particles"):
    rng = np.random.default_rng(seed)
    obj = make_object(family, (96, 96), rng)
    probe = make_probe(frame, frame / 2)
    pos = rng.integers(0, 96 - frame, size=(n, 2))
    p = patches(obj, pos, frame)
    counts = detect(far_field_intensity(probe, p), photons, rng, 2**32 - 1, np.dtype(np.uint32))
    return obj, probe, pos, p, counts


def test_the_deviance_of_the_true_patch_is_photon_noise_and_independent_of_the_flux():
    _, probe, _, p, counts = _scan()
    truth = far_field_intensity(probe, p)
    bright = truth * (truth.sum(axis=(1, 2), keepdims=True) > 0)
    valid = truth.mean(axis=0) * 1e6 > 50  # where counts are high, E[deviance] per pixel -> 1
    dev = poisson_deviance(counts, bright, valid)
    assert 0.8 < dev.mean() < 1.25 and dev.max() < 2, dev  # each frame's mean over ~30 pixels scatters
    np.testing.assert_allclose(poisson_deviance(counts, 37.5 * truth, valid), dev, rtol=1e-5)  # flux unknown


def test_a_wrong_patch_misfits_by_far_more_than_the_noise():
    obj, probe, pos, p, counts = _scan(family="textures")  # content everywhere: vacuum is wrong everywhere
    right = data_misfit(counts, np.abs(p), np.angle(p), probe)
    vacuum = data_misfit(counts, np.ones_like(np.abs(p)), np.zeros_like(np.angle(p)), probe)
    shifted = patches(obj, np.clip(pos + 9, 0, 96 - 32), 32)
    wrong = data_misfit(counts, np.abs(shifted), np.angle(shifted), probe)
    assert np.all(vacuum > 20 * right) and np.median(wrong) > 20 * np.median(right), (right, vacuum, wrong)


def test_clipped_pixels_are_excluded_from_the_comparison():
    _, probe, _, p, counts = _scan()
    cutoff = int(np.percentile(counts, 99.9))  # a detector that clips its brightest pixels
    clipped = np.minimum(counts, cutoff).astype(np.uint32)
    masked = data_misfit(clipped, np.abs(p), np.angle(p), probe, saturation=cutoff)
    trusted = poisson_deviance(clipped, far_field_intensity(probe, p))  # trusting the clipped pixels
    assert np.median(masked) < 1.5 and np.median(trusted) > 4 * np.median(masked), (masked, trusted)


def test_a_frame_without_valid_pixels_is_nan_not_an_error():
    out = poisson_deviance(np.ones((1, 4, 4)), np.ones((1, 4, 4)), np.zeros((4, 4), bool))
    assert np.isnan(out[0])
