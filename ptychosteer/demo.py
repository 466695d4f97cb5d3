"""``ptychosteer demo --compare-naive``: the strategy the pipeline used vs naive fine-tuning on the same frames.

After the run, the recording holds every frame the trainers could have seen. A naive learner with the same model,
batch size and seed trains on it once, scan by scan, and is evaluated on the same held-out sets after each scan:
its per-task errors and forgetting are the lower bound the pipeline's strategy is compared with.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychosteer.pipeline import PipelineConfig
from streamer.config import SimulatorConfig
from streamer.hdf5 import Recording
from trainer.data import ptycho_batch, ptycho_fields
from trainer.evaluation import heldout_sets
from trainer.learner import ContinualLearner, LearnerConfig
from trainer.models import build_model
from trainer.offline import run_tasks
from trainer.strategies import ptycho_task


def compare_with_naive(config: PipelineConfig) -> dict[str, Any]:
    work = Path(config.workdir)
    tasks = []
    with Recording(work / "recording.h5") as rec:
        frames = [f for f in rec.frames() if f.amplitude is not None]
    for series in sorted({f.series for f in frames}):
        fs = [f for f in frames if f.series == series]
        tasks.append(ptycho_batch(np.stack([f.image for f in fs]), np.stack([f.amplitude for f in fs]),
                                  np.stack([f.phase for f in fs])))
    s, m, learner_cfg = config.simulator, config.trainer.model, config.trainer.learner
    sim = SimulatorConfig(frame_size=s.frame_size, object_size_px=s.object_size_px, overlap=s.overlap,
                          families=s.families, seed=s.seed, scans=len(tasks))
    held = heldout_sets(sim, len(tasks), config.trainer.eval.count)
    torch.manual_seed(learner_cfg.seed)
    model = build_model(dataclasses.asdict(m))
    naive = LearnerConfig(strategy="naive", batch_size=learner_cfg.batch_size * config.nproc, lr=learner_cfg.lr,
                          loss=learner_cfg.loss, seed=learner_cfg.seed)
    fields, outputs = ptycho_fields(m.frame_size)
    learner = ContinualLearner(model, ptycho_task(naive.loss), naive, fields, outputs)
    metrics = run_tasks(learner, tasks, held).metrics()
    used = json.loads((work / "train" / "metrics.json").read_text())["metrics"]
    return {
        f"{learner_cfg.strategy}_average_error": round(used["average_error"], 4),
        "naive_average_error": round(metrics["average_error"], 4),
        f"{learner_cfg.strategy}_forgetting": round(used["average_forgetting"], 4),
        "naive_forgetting": round(metrics["average_forgetting"], 4),
        "naive_per_task_error": {k: round(v, 4) for k, v in metrics["final_error"].items()},
    }
