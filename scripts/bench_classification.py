#!/usr/bin/env python
"""Class-incremental classification on scikit-learn's digits, against a published library's run.

Setup (same as the reference run): digits scaled by 1/16, stratified 70/30 split with random_state=seed, 5 tasks
of 2 classes in class order 0..9, MLP 64→128→10, SGD lr 0.05 momentum 0.9, batch 32 (+32 replayed), 5 epochs per
task, memory 200 samples (class-balanced; each task's samples enter the buffer at the task's end, DER++ storing
the logits of the model that has learnt the task, as the reference library does); naive, ER and DER++ (alpha 0.1, beta 0.5); seeds 0, 1, 2.
Prints the mean final test accuracy over all 10 classes and the wall time per strategy. Reference: about 0.89
(replay), 0.93 (DER++), 0.14 (naive).

    python scripts/bench_classification.py
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from buffer import FieldSpec  # noqa: E402
from trainer.learner import ContinualLearner, LearnerConfig  # noqa: E402
from trainer.models import MLPClassifier  # noqa: E402
from trainer.strategies import CLASSIFICATION  # noqa: E402

REFERENCE = {"naive": 0.14, "er": 0.89, "derpp": 0.93}


def run(strategy: str, seed: int) -> tuple[float, float]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = LearnerConfig(strategy=strategy, batch_size=32, replay=32, buffer_capacity=200,
                           buffer_policy="class_balanced", buffer_class_field="y", optimizer="sgd", lr=0.05, momentum=0.9, alpha=0.1,
                           beta=0.5, async_prefetch=False, insert_at_task_end=True, seed=seed)
    fields = (FieldSpec("x", (64,), torch.float32), FieldSpec("y", (), torch.int64))
    learner = ContinualLearner(MLPClassifier(), CLASSIFICATION, config, fields,
                               (FieldSpec("logits", (10,), torch.float32),))
    t0 = time.perf_counter()
    for task in range(5):
        mask = np.isin(ytr, [2 * task, 2 * task + 1])
        tx, ty = torch.from_numpy(xtr[mask]), torch.from_numpy(ytr[mask].astype(np.int64))
        for epoch in range(5):
            order = torch.from_numpy(rng.permutation(len(tx)))
            for i in range(0, len(tx), 32):
                idx = order[i : i + 32]
                learner.step({"x": tx[idx], "y": ty[idx]}, insert=epoch == 0)  # the buffer sees each sample once
        learner.end_task()
    wall = time.perf_counter() - t0
    learner.close()
    learner.model.eval()
    with torch.no_grad():
        pred = learner.model(torch.from_numpy(xte)).argmax(1).numpy()
    return float((pred == yte).mean()), wall


def main() -> None:
    torch.set_num_threads(1)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    for strategy in ("naive", "er", "derpp"):
        accs, walls = zip(*(run(strategy, seed) for seed in (0, 1, 2)))
        print(f"{strategy:<6} final accuracy {np.mean(accs):.3f} ± {np.std(accs):.3f} (seeds {', '.join(f'{a:.3f}' for a in accs)}) "
              f"wall {np.mean(walls):.2f} s/run   reference {REFERENCE[strategy]:.2f}")


if __name__ == "__main__":
    main()
