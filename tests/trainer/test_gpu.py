"""The learner on CUDA (run on a GPU machine; skipped without CUDA): every strategy through ``run_tasks``, with
the buffer and its prefetcher on the GPU, on a tiny simulated stream."""

import math

import pytest
import torch

from streamer.config import SimulatorConfig
from streamer.simulator import Control, SimulatedSource
from trainer.data import ptycho_fields, stack_frames
from trainer.evaluation import heldout_sets
from trainer.learner import ContinualLearner, LearnerConfig
from trainer.models import PtychoNN
from trainer.offline import run_tasks
from trainer.strategies import ptycho_task

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("strategy", ["naive", "er", "derpp", "scratch"])
def test_every_strategy_trains_and_evaluates_on_cuda(strategy):
    sim = SimulatorConfig(frame_size=32, object_size_px=64, overlap=0.75, scans=2, seed=0)
    tasks = [stack_frames(list(frames)) for frames in SimulatedSource(sim).scans(Control())]
    held = heldout_sets(sim, 2, 16)
    torch.manual_seed(0)
    factory = lambda: PtychoNN(nconv=4, depth=2, frame_size=32)  # noqa: E731
    fields, outputs = ptycho_fields(32)
    config = LearnerConfig(strategy=strategy, batch_size=8, replay=8, buffer_capacity=32, loss="mse",
                           scratch_epochs=1, steps_per_exchange=2)
    learner = ContinualLearner(factory().cuda(), ptycho_task("mse"), config, fields, outputs, device="cuda",
                               model_factory=factory)
    matrix = run_tasks(learner, tasks, held, epochs=2, shuffle=True)
    learner.close()
    assert all(p.is_cuda for p in learner.model.parameters())
    assert len(matrix.rows) == 2 and all(math.isfinite(matrix.total(1, j)) for j in (0, 1))
    assert learner.step_count > 0 and all(math.isfinite(v) for v in learner.losses)
    if learner.buffer is not None:
        assert learner.buffer.fill == 32 and learner.buffer.device.type == "cuda"
