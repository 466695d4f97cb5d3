"""The science checks of the learned model: its output depends on its input at initialisation, and a small
model overfits a small set of simulated frames far below the constant guess (the floor a model must beat)."""

import numpy as np
import pytest
import torch

from streamer.config import SimulatorConfig
from streamer.physics import detect, far_field_intensity, patches
from streamer.simulator import make_scan
from trainer.data import ptycho_batch
from trainer.evaluation import HeldOut, constant_guess, evaluate
from trainer.models import DECODERS, NORMS, PtychoNN
from trainer.strategies import ptycho_task


def _frames(n: int, family: int = 0, frame: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    config = SimulatorConfig(frame_size=frame, object_size_px=96, overlap=0.75, bit_depth=32, seed=seed)
    scan = make_scan(config, family)
    pos = scan.positions[np.random.default_rng(seed).permutation(len(scan.positions))[:n]]
    obj = patches(scan.obj, pos, frame)
    images = detect(far_field_intensity(scan.probe, obj), config.photons_per_frame, np.random.default_rng(seed),
                    config.saturation, config.dtype)
    return ptycho_batch(images, np.abs(obj), np.angle(obj))


@pytest.mark.parametrize("norm, decoder", [(n, "separate") for n in NORMS] + [("group", "shared")])
def test_the_output_depends_on_the_input_at_initialisation(norm, decoder):
    """A deep plain conv stack with PyTorch's default init made the output constant (input-dependent part ~1e-6
    of the output, first-layer gradient ~1e-6 of its weights): this is what would have caught it."""
    torch.manual_seed(0)
    model = PtychoNN(nconv=8, depth=3, frame_size=32, norm=norm, decoder=decoder)
    batch = _frames(16)
    model.train()
    amp, phase = model(batch["x"])
    for out in (amp, phase):
        out = out.detach()
        between_inputs, spread = out.std(dim=0).mean(), out.std()  # how much it changes from frame to frame
        assert float(between_inputs) > 0.05 * float(spread), (norm, float(between_inputs), float(spread))
    ((amp - batch["amp"]).abs().mean() + (phase - batch["phase"]).abs().mean()).backward()
    first = model.encoder[0].weight
    relative = float(first.grad.norm() / first.detach().norm())
    assert relative > 1e-3, relative


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_small_model_overfits_64_frames_far_below_the_constant_guess(decoder):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    batch = _frames(64)
    held = HeldOut(0, "particles (training set)", batch)
    model = PtychoNN(nconv=8, depth=3, frame_size=32, decoder=decoder)
    task = ptycho_task()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randperm(64, generator=g)[:16]
        model.train()
        rows = {k: v[idx] for k, v in batch.items()}
        loss = task.loss(task.outputs(model, rows), rows)  # the trainer's default loss (L1 + MSE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    error = sum(evaluate(model, held))
    floor = constant_guess(held)
    assert error <= 0.5 * floor, f"training-set error {error:.4f} vs constant guess {floor:.4f}"


@pytest.mark.parametrize("nconv", [1, 2, 3, 5, 6, 10])
def test_any_channel_count_builds_and_runs(nconv):
    """GroupNorm needs groups that divide the channels: nconv 6 used to fail with a raw torch error."""
    model = PtychoNN(nconv=nconv, depth=2, frame_size=16)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms
    for m in norms:  # 4 groups wherever 4 divide the channels (the checkpoints of nconv 8, 16, 32 are unchanged)
        assert m.num_channels % m.num_groups == 0 and (m.num_groups == 4) == (m.num_channels % 4 == 0)
    amp, phase = model(torch.rand(2, 1, 16, 16))
    assert amp.shape == phase.shape == (2, 16, 16)


def test_a_shared_decoder_is_one_decoder_to_both_outputs_and_a_bad_name_a_clear_error():
    torch.manual_seed(0)
    shared, separate = PtychoNN(nconv=4, depth=2, frame_size=16, decoder="shared"), PtychoNN(nconv=4, depth=2,
                                                                                              frame_size=16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    encoder = count(shared.encoder)
    assert count(shared) - encoder < 0.6 * (count(separate) - encoder)  # one decoder instead of two
    amp, phase = shared(torch.rand(3, 1, 16, 16))
    assert amp.shape == phase.shape == (3, 16, 16) and amp.is_contiguous() and phase.is_contiguous()
    assert not torch.allclose(amp - 1, phase)  # two different output channels
    with pytest.raises(ValueError, match="decoder must be one of"):
        PtychoNN(nconv=4, depth=2, frame_size=16, decoder="tied")
