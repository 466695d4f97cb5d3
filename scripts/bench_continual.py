#!/usr/bin/env python
"""Continual-learning accuracy of PtychoNN on simulated scans (CPU-sized): naive, ER, DER++ and from-scratch.

Each scan is one task from a different object family (particles, cells, lithography, textures); every strategy
starts from the same initial model with the same seed, sees the same frames in the same order and takes the
same number of steps per task. After each task the model is evaluated on held-out positions of every task seen.

Targets: forgetting is real (naive's first-task error after the last task >= 1.5x right after the first);
ER and DER++ final average error <= 0.7x naive's and <= 1.25x from-scratch's; rehearsal wall time <= 0.5x
from-scratch's.

    python scripts/bench_continual.py [--frame-size 32] [--nconv 8] [--epochs 3] [--out runs/bench_continual]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import SimulatorConfig  # noqa: E402
from streamer.simulator import Control, SimulatedSource  # noqa: E402
from trainer.data import ptycho_batch, ptycho_fields  # noqa: E402
from trainer.evaluation import heldout_sets, plot_matrix  # noqa: E402
from trainer.learner import ContinualLearner, LearnerConfig  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402
from trainer.offline import run_tasks  # noqa: E402
from trainer.strategies import ptycho_task  # noqa: E402


def task_data(sim: SimulatorConfig) -> list[dict[str, torch.Tensor]]:
    out = []
    for frames in SimulatedSource(sim).scans(Control()):
        fs = list(frames)
        import numpy as np

        out.append(ptycho_batch(np.stack([f.image for f in fs]), np.stack([f.amplitude for f in fs]),
                                np.stack([f.phase for f in fs])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frame-size", type=int, default=32)
    ap.add_argument("--object-size", type=int, default=160)
    ap.add_argument("--nconv", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="passes over each task's stream")
    ap.add_argument("--b", type=int, default=16)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--buffer", type=int, default=600, help="buffer capacity [samples]")
    ap.add_argument("--scratch-epochs", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.5, help="DER/DER++ distillation weight")
    ap.add_argument("--beta", type=float, default=1.0, help="DER++ replayed-ground-truth weight")
    ap.add_argument("--loss", default="l1", choices=["l1", "mse"], help="task loss (PtychoNN: l1)")
    ap.add_argument("--defer", action="store_true", help="insert each task's samples at its end (default: online)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategies", default="naive,er,derpp,scratch")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_continual"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sim = SimulatorConfig(frame_size=args.frame_size, object_size_px=args.object_size, scans=4, overlap=0.75,
                          seed=args.seed)
    tasks = task_data(sim)
    held = heldout_sets(sim, 4, 64)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; "
          f"4 tasks ({', '.join(h.name for h in held)}), {[len(t['x']) for t in tasks]} frames, "
          f"{args.frame_size}x{args.frame_size}, PtychoNN nconv {args.nconv}, b={args.b} r={args.r}, "
          f"{args.epochs} passes/task, buffer {args.buffer}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for strategy in args.strategies.split(","):
        torch.manual_seed(args.seed)
        factory = lambda: PtychoNN(nconv=args.nconv, depth=2, frame_size=args.frame_size)  # noqa: E731
        config = LearnerConfig(strategy=strategy, batch_size=args.b, replay=args.r, buffer_capacity=args.buffer,
                               alpha=args.alpha, beta=args.beta, lr=1e-3, scratch_epochs=args.scratch_epochs * args.epochs, insert_at_task_end=args.defer, loss=args.loss,
                               seed=args.seed)
        fields, outputs = ptycho_fields(args.frame_size)
        learner = ContinualLearner(factory(), ptycho_task(args.loss), config, fields, outputs, model_factory=factory)
        t0 = time.perf_counter()
        matrix = run_tasks(learner, tasks, held, epochs=args.epochs)
        wall = time.perf_counter() - t0
        learner.close()
        m = matrix.metrics()
        results[strategy] = {"wall_s": wall, **m}
        plot_matrix(matrix, args.out / f"matrix_{strategy}.png", f"{strategy}: error matrix")
        per_task = "  ".join(f"{j}:{e:.4f}" for j, e in m["final_error"].items())
        print(f"{strategy:<8} final avg error {m['average_error']:.4f}  per task [{per_task}]  "
              f"forgetting {m['average_forgetting']:.4f}  wall {wall:6.1f} s")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    if {"naive", "er", "derpp", "scratch"} <= results.keys():
        naive, scratch = results["naive"], results["scratch"]
        first_after = naive["matrix"][0][0]
        first_final = naive["matrix"][-1][0]
        print(f"forgetting: naive task 0 error {first_after:.4f} -> {first_final:.4f} "
              f"({first_final / first_after:.2f}x; target >= 1.5x)")
        for s in ("er", "derpp"):
            r = results[s]
            print(f"{s}: avg error {r['average_error'] / naive['average_error']:.2f}x naive (target <= 0.7), "
                  f"{r['average_error'] / scratch['average_error']:.2f}x scratch (target <= 1.25); "
                  f"wall {r['wall_s'] / scratch['wall_s']:.2f}x scratch (target <= 0.5)")
    print(f"figures and results.json in {args.out}")


if __name__ == "__main__":
    main()
