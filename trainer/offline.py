"""Continual training over in-memory tasks (benchmarks and tests): the same learner as on the live stream."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import torch

from trainer.evaluation import ErrorMatrix, HeldOut, evaluate_regions
from trainer.learner import ContinualLearner

logger = logging.getLogger(__name__)


def run_tasks(learner: ContinualLearner, tasks: Sequence[dict[str, torch.Tensor]], held: Sequence[HeldOut], *,
              epochs: int = 1, shuffle: bool = False,
              on_task_end: Callable[[int, ErrorMatrix], None] | None = None) -> ErrorMatrix:
    """Train task by task (``epochs`` passes of ``batch_size``), evaluate every seen task after each.

    Passes follow the stream order, or with ``shuffle`` a fresh random order of the task's frames each pass (seeded
    by the learner's seed): in scan order consecutive batches are neighbouring positions of one object, and a model
    trained on them chases the local content instead of learning the inversion. The buffer is offered each frame
    once (first pass).
    """
    matrix = ErrorMatrix(names={h.task: h.name for h in held})
    b = learner.config.batch_size
    g = torch.Generator().manual_seed(learner.config.seed)
    for t, data in enumerate(tasks):
        n = len(next(iter(data.values())))
        t0 = time.perf_counter()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
            for i in range(0, n - b + 1, b):
                idx = order[i : i + b]
                learner.step({k: v[idx] for k, v in data.items()}, insert=epoch == 0)
        learner.end_task()
        regions = ("full", "illuminated") if all(h.illuminated is not None for h in held) else ("full",)
        errors = {h.task: evaluate_regions(learner.serving_model, h, learner.device, regions=regions)
                  for h in held if h.task <= t}
        matrix.record(errors)
        logger.info("task %d done in %.1f s: %s", t, time.perf_counter() - t0,
                    {j: round(sum(e["full"]), 4) for j, e in errors.items()})
        if on_task_end:
            on_task_end(t, matrix)
    return matrix
