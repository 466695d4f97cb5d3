"""The physics-informed loss: forward model against the simulator and an analytic case, gradients against finite
differences, its invariances, and a model that learns from frames alone."""

import numpy as np
import pytest
import torch

from streamer.physics import far_field_intensity, illuminated, make_probe
from trainer.physics import amplitude_terms, far_field, physics_loss, poisson_terms, probe_planes, valid_pixels


def test_the_forward_model_is_the_simulators():
    rng = np.random.default_rng(0)
    probe = make_probe(16, 8, 1.0)
    patch = (0.5 + rng.random((3, 16, 16))) * np.exp(1j * rng.normal(0, 1, (3, 16, 16)))
    expected = far_field_intensity(probe, patch)
    got = far_field(torch.as_tensor(probe), torch.as_tensor(np.abs(patch)), torch.as_tensor(np.angle(patch)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-9)


def test_a_gaussian_beam_through_vacuum_gives_the_analytic_gaussian_far_field():
    """P(r) = exp(-r²/2σ²) on N pixels, a flat object: |FFT|² ∝ exp(-4π²σ²k²/N²) around the centre, and the
    orthonormal transform keeps the total intensity (Parseval)."""
    n, sigma = 64, 4.0
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    probe = np.exp(-(yy**2 + xx**2) / (2 * sigma**2)).astype(np.complex128)
    ones = torch.ones((1, n, n), dtype=torch.float64)
    far = far_field(torch.as_tensor(probe), ones, torch.zeros_like(ones))[0].numpy()
    assert np.unravel_index(np.argmax(far), far.shape) == (n // 2, n // 2)
    for k in (1, 2, 3):
        np.testing.assert_allclose(far[n // 2, n // 2 + k] / far[n // 2, n // 2],
                                   np.exp(-4 * np.pi**2 * sigma**2 * k**2 / n**2), rtol=1e-6)
    np.testing.assert_allclose(far.sum(), np.sum(np.abs(probe) ** 2), rtol=1e-10)


@pytest.mark.parametrize("noise", ["amplitude", "poisson"])
def test_the_loss_gradient_matches_finite_differences(noise):
    rng = np.random.default_rng(1)
    probe = make_probe(8, 5, 0.7).astype(np.complex128)
    truth = (0.6 + 0.4 * rng.random((2, 8, 8))) * np.exp(1j * rng.normal(0, 0.5, (2, 8, 8)))
    counts = torch.as_tensor(rng.poisson(far_field_intensity(probe, truth) * 1e4).astype(np.float64))
    batch = {"counts": counts, "valid": torch.ones_like(counts),
             "probe": torch.as_tensor(np.stack([probe.real, probe.imag]))[None].expand(2, -1, -1, -1)}
    amp = torch.as_tensor(0.5 + rng.random((2, 8, 8)), dtype=torch.float64).requires_grad_()
    phase = torch.as_tensor(rng.normal(0, 0.5, (2, 8, 8)), dtype=torch.float64).requires_grad_()

    def loss(a, p):
        out = {"out_amp": a, "out_phase": p}
        return physics_loss(out, batch, anchor=0.3, noise=noise)

    # (the forward model computes in float32 as training does; compare against finite differences of it)
    grad_a, grad_p = torch.autograd.grad(loss(amp, phase), (amp, phase))
    h = 1e-3
    for grad, which in ((grad_a, 0), (grad_p, 1)):
        for idx in [(0, 3, 4), (1, 4, 4), (0, 2, 5)]:
            up = [amp.detach().clone(), phase.detach().clone()]
            down = [amp.detach().clone(), phase.detach().clone()]
            up[which][idx] += h
            down[which][idx] -= h
            numeric = (float(loss(*up)) - float(loss(*down))) / (2 * h)
            np.testing.assert_allclose(float(grad[idx]), numeric, rtol=2e-2, atol=2e-5)


@pytest.mark.parametrize("noise", ["amplitude", "poisson"])
def test_the_loss_ignores_the_flux_and_one_global_phase_and_is_zero_only_at_the_truth(noise):
    rng = np.random.default_rng(2)
    probe = make_probe(16, 8, 1.0)
    truth = (0.5 + 0.5 * rng.random((4, 16, 16))) * np.exp(1j * rng.normal(0, 0.5, (4, 16, 16)))
    intensity = torch.as_tensor(far_field_intensity(probe, truth), dtype=torch.float32)
    batch = {"counts": intensity * 1e6, "valid": torch.ones_like(intensity), "probe": probe_planes(probe, 4)}
    amp = torch.as_tensor(np.abs(truth), dtype=torch.float32)
    phase = torch.as_tensor(np.angle(truth), dtype=torch.float32)
    exact = physics_loss({"out_amp": amp, "out_phase": phase}, batch, anchor=0, noise=noise)
    assert float(exact) < 1e-6
    dimmer = physics_loss({"out_amp": amp, "out_phase": phase}, {**batch, "counts": intensity * 3e2}, anchor=0,
                          noise=noise)
    shifted = physics_loss({"out_amp": amp * 2, "out_phase": phase + 1.3}, batch, anchor=0, noise=noise)
    assert abs(float(dimmer) - float(exact)) < 1e-6 and float(shifted) < 1e-6
    wrong = physics_loss({"out_amp": amp, "out_phase": phase.flip(-1)}, batch, anchor=0, noise=noise)
    assert float(wrong) > 1e-3
    _, deviance = poisson_terms(batch["counts"].double(), intensity.double())  # float64: 1e6 counts per frame
    assert float(deviance.abs().max()) < 1e-6


def test_the_amplitude_term_is_about_the_poisson_divergence_where_counts_are_large():
    """Both data terms are per photon and weigh alike against the overlap and anchor terms: for counts near a
    large mean, 2 Σ(√q − √y)² / Σy ≈ deviance / (2 Σy)."""
    rng = np.random.default_rng(4)
    mu = torch.as_tensor(rng.uniform(0.5, 1.5, (3, 16, 16)))
    counts = torch.as_tensor(rng.poisson(mu.numpy() * 1e4).astype(np.float64))
    flux = torch.full((3,), 1e4, dtype=torch.float64)
    poisson, _ = poisson_terms(counts, mu, flux=flux)
    amplitude = amplitude_terms(counts, mu, flux=flux)
    np.testing.assert_allclose(amplitude.numpy(), poisson.numpy(), rtol=0.02)
    wrong = amplitude_terms(counts, mu.flip(-1), flux=flux)
    assert (wrong > 10 * amplitude).all()
    with pytest.raises(ValueError, match="noise"):
        physics_loss({"out_amp": mu.float(), "out_phase": mu.float()}, {"counts": counts, "probe": probe_planes(
            make_probe(16, 8), 3)}, noise="gauss")


def test_clipped_and_masked_pixels_do_not_count():
    counts = np.full((1, 4, 4), 100, np.uint16)
    counts[0, 1, 1] = 65535
    mask = np.ones((1, 4, 4), bool)
    mask[0, 2, 2] = False
    v = valid_pixels(counts, valid=mask)
    assert v.sum() == 14 and v[0, 1, 1] == 0 and v[0, 2, 2] == 0
    mu = torch.ones((1, 4, 4))
    y = torch.as_tensor(counts.astype(np.float32))
    kl_all, _ = poisson_terms(y, mu)
    kl_valid, _ = poisson_terms(y, mu, torch.as_tensor(v))
    assert float(kl_valid) < 1e-7 < float(kl_all)  # the clipped pixel would otherwise dominate


def test_a_model_learns_to_invert_frames_without_any_label():
    """64 simulated frames, no labels: trained on the physics loss alone, the model's patches explain the frames
    (the data error falls) and, over the illuminated region with one phase per frame removed, beat the floor."""
    from streamer.config import SimulatorConfig
    from streamer.simulator import Control, SimulatedSource
    from trainer.data import preprocess
    from trainer.models import PtychoNN

    config = SimulatorConfig(frame_size=32, object_size_px=96, overlap=0.75, scans=1, families=("particles",),
                             seed=3)
    frames = list(next(iter(SimulatedSource(config).scans(Control()))))[:64]
    images = np.stack([f.image for f in frames])
    true = np.stack([f.amplitude * np.exp(1j * f.phase) for f in frames])
    probe = make_probe(32, config.probe_diameter, config.probe_curvature_rad)
    region = illuminated(probe)
    torch.manual_seed(0)
    model = PtychoNN(nconv=8, depth=2, frame_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = preprocess(images)
    batch = {"counts": torch.as_tensor(images.astype(np.float32)), "valid": torch.as_tensor(valid_pixels(images)),
             "probe": probe_planes(probe, len(images)),
             "pos": torch.as_tensor(np.array([f.position_px for f in frames]), dtype=torch.float32),
             "flux": torch.full((64,), float(config.photons_per_frame))}  # the header's incident flux
    positions = np.array([f.position_px for f in frames])
    near = [np.flatnonzero((np.abs(positions - positions[i]) < 16).all(axis=1) & (np.arange(64) != i))
            for i in range(64)]
    rng = np.random.default_rng(0)

    def aligned_error():
        with torch.no_grad():
            amp, phase = (v.numpy() for v in model(x))
        got = amp * np.exp(1j * phase)
        got = got * np.exp(-1j * np.angle(np.sum(got[:, region] * np.conj(true[:, region]), axis=1)))[:, None, None]
        return (np.abs(np.abs(got) - np.abs(true))[:, region].mean() + np.abs(np.angle(got * np.conj(true)))[:, region].mean())

    losses = []
    for step in range(400):
        first = rng.choice(64, 8, replace=False)  # 8 frames and an overlapping neighbour of each
        idx = torch.as_tensor(np.concatenate([first, [rng.choice(near[i]) for i in first]]))
        amp, phase = model(x[idx])
        loss = physics_loss({"out_amp": amp, "out_phase": phase}, {k: v[idx] for k, v in batch.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    a, p = np.abs(true)[:, region], np.angle(true)[:, region]
    floor = np.abs(a - np.median(a)).mean() + np.abs(p - np.median(p)).mean()
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert aligned_error() < 0.8 * floor  # 0.57-0.60x measured (1 and 2 threads)
