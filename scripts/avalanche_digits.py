#!/usr/bin/env python
"""The reference library's side of ``bench_classification.py``: Avalanche on the same digits setup, same seeds.

Runs naive, ER (``ReplayPlugin``, 32 new + 32 replayed) and DER++ (``DER`` with alpha 0.1, beta 0.5, 32 replayed)
with Avalanche's own strategies on the setup of ``bench_classification.py``: digits / 16, stratified 70/30 split with
``random_state=seed``, 5 experiences of 2 classes in order 0..9, MLP 64-128-10 (same layers, built right after
``torch.manual_seed(seed)`` as in ours, so the same initial weights), SGD lr 0.05 momentum 0.9, batch 32, 5 epochs,
memory 200. Prints one JSON object: ``{strategy: {"acc": [per seed], "wall_s": [per seed]}}``.

Avalanche needs torchvision, which does not import beside the project's CPU torch pin, so it runs in its own
environment; ``bench_classification.py --reference-python`` calls this script with that interpreter::

    python -m venv /tmp/avl
    /tmp/avl/bin/pip install avalanche-lib==0.6.0 torch==2.14.1 torchvision==0.29.1 scikit-learn
    python scripts/bench_classification.py --reference-python /tmp/avl/bin/python

(the versions measured on 2026-11-27; on the project's CI machines both torch wheels lie on the local disk, and
torchvision's PyPI wheel does not import beside torch 2.13).

This file imports nothing from the project's packages (only ``scripts/_args.py`` beside it).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from _args import seed_list  # this folder is on the path when run as a script


def run(strategy: str, seed: int) -> tuple[float, float]:
    from avalanche.benchmarks import nc_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import DER, Naive
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.plugins.evaluation import EvaluationPlugin
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    train = TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64)))
    test = TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte.astype(np.int64)))
    train.targets, test.targets = ytr.astype(np.int64).tolist(), yte.astype(np.int64).tolist()
    bench = nc_benchmark(train, test, n_experiences=5, task_labels=False, fixed_class_order=list(range(10)),
                         seed=seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    common = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                  criterion=nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=5, eval_mb_size=256,
                  evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    if strategy == "naive":
        learner = Naive(**common)
    elif strategy == "er":
        learner = Naive(**common, plugins=[ReplayPlugin(mem_size=200, batch_size=32, batch_size_mem=32)])
    else:
        learner = DER(**common, mem_size=200, batch_size_mem=32, alpha=0.1, beta=0.5)
    t0 = time.perf_counter()
    for experience in bench.train_stream:
        learner.train(experience)
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(xte)).argmax(1).numpy()
    return float((pred == yte).mean()), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated seeds")
    ap.add_argument("--strategies", default="naive,er,derpp")
    args = ap.parse_args()
    unknown = set(args.strategies.split(",")) - {"naive", "er", "derpp"}
    if unknown:
        ap.error(f"--strategies: unknown {', '.join(sorted(unknown))} (choose from naive, er, derpp)")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Avalanche warns per experience (no loggers, storage policy deprecations)
    out = {}
    for strategy in args.strategies.split(","):
        runs = [run(strategy, seed) for seed in args.seeds]
        out[strategy] = {"acc": [a for a, _ in runs], "wall_s": [w for _, w in runs]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
