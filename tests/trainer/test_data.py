import numpy as np
import torch

from streamer.physics import detect, far_field_intensity, make_object, make_probe, patches, raster_positions
from trainer.data import preprocess


def test_preprocessing_does_not_depend_on_the_exposure():
    rng = np.random.default_rng(0)
    probe = make_probe(32, 16, 1.0)
    obj = make_object("cells", (64, 64), rng)
    intensity = far_field_intensity(probe, patches(obj, raster_positions(obj.shape, 32, 16), 32))
    x = preprocess(intensity * 1e6)
    assert x.shape == (len(intensity), 1, 32, 32) and float(x.min()) >= 0
    torch.testing.assert_close(x.square().mean(dim=(1, 2, 3)), torch.ones(len(x)))  # unit root-mean-square
    expected = np.sqrt(intensity[3] * intensity[3].size / intensity[3].sum())  # the Fourier amplitude, rescaled
    np.testing.assert_allclose(x[3, 0].numpy(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(preprocess(intensity * 2.5e5), x)  # a quarter of the exposure: the same input
    big = detect(intensity, 1e6, rng, 2**32 - 1, np.dtype(np.uint32))
    small = detect(intensity, 2.5e5, rng, 2**32 - 1, np.dtype(np.uint32))
    shift = (preprocess(big) - preprocess(small)).mean().abs()
    assert float(shift) < 0.01  # measured frames: only photon noise differs, no systematic shift
    assert torch.equal(preprocess(np.zeros((1, 4, 4), np.uint16)), torch.zeros(1, 1, 4, 4))  # an empty frame
