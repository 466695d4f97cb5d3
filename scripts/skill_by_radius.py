#!/usr/bin/env python
"""Where in the patch a model's error comes from: skill per ring of distance from the patch centre, beside the
probe's intensity there.

Trains the demo's model (PtychoNN nconv 8, depth 3, 32×32, Adam 2e-3, L1 + MSE, moving average 0.99) from scratch
on one simulated scan of the demo's geometry (128×128 object, overlap 0.75, 625 positions), shuffled passes of
batch 16, then scores held-out positions ring by ring: the model's error (amplitude MAE + phase MAE), the constant
guess's (the held-out set's medians) and their ratio, with the probe's mean intensity ÷ its maximum in the ring.
A single frame measures the object only where the probe lights it; beyond that the model can only infer.

    python scripts/skill_by_radius.py [--task 1] [--steps 1000] [--seed 0] [--ring 3] [--decoder separate|shared]

``--task``: the scan's index in the simulator's family cycle (0 particles, 1 cells, 2 lithography, 3 textures).
About 35 s for 1,000 steps on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import SimulatorConfig  # noqa: E402
from streamer.simulator import Control, SimulatedSource, make_scan  # noqa: E402
from trainer.data import MIN_FLOOR, label_floor, ptycho_fields, stack_frames  # noqa: E402
from trainer.evaluation import HeldOut, heldout_for  # noqa: E402
from trainer.learner import ContinualLearner, LearnerConfig  # noqa: E402
from trainer.models import DECODERS, PtychoNN  # noqa: E402
from trainer.offline import run_tasks  # noqa: E402
from trainer.strategies import ptycho_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", type=int, default=1, help="scan index: 0 particles, 1 cells, 2 lithography, 3 textures")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of batch 16 (whole shuffled passes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ring", type=int, default=3, help="ring width [px]")
    ap.add_argument("--decoder", choices=DECODERS, default="separate",
                    help="PtychoNN's two decoders (the README's numbers) or one for both outputs (the demo's since "
                         "2026-12-03)")
    args = ap.parse_args()
    if args.task < 0 or args.steps < 1 or args.ring < 1:
        ap.error("--task must be >= 0, --steps and --ring >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    n, b = 32, 16
    sim = SimulatorConfig(frame_size=n, object_size_px=128, scans=args.task + 1, overlap=0.75, seed=args.seed)
    scans = list(SimulatedSource(sim).scans(Control()))
    data = stack_frames(list(scans[args.task]))
    data["w"] = torch.full((len(data["amp"]),), 1 / max(label_floor(data["amp"], data["phase"]), MIN_FLOOR))
    h = heldout_for(sim, args.task, 64)
    held = HeldOut(0, h.name, h.batch, h.illuminated)
    epochs = max(1, round(args.steps / (len(data["x"]) // b)))
    print(f"machine: {platform.node()} {os.cpu_count()} cores, torch {torch.__version__}; task {args.task} "
          f"({held.name}), {len(data['x'])} frames, {epochs} passes of batch {b} (~{epochs * (len(data['x']) // b)} "
          f"steps), seed {args.seed}")
    torch.manual_seed(args.seed)
    factory = lambda: PtychoNN(nconv=8, depth=3, frame_size=n, decoder=args.decoder)  # noqa: E731
    config = LearnerConfig(strategy="naive", batch_size=b, replay=0, lr=2e-3, task_weight="floor", ema=0.99,
                           seed=args.seed)
    fields, outputs = ptycho_fields(n, weighted=True)
    learner = ContinualLearner(factory(), ptycho_task(config.loss), config, fields, outputs, model_factory=factory)
    t0 = time.perf_counter()
    run_tasks(learner, [data], [held], epochs=epochs, shuffle=True)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    model = learner.serving_model.eval()
    with torch.no_grad():
        amp, phase = model(held.batch["x"])
    ta, tp = held.batch["amp"], held.batch["phase"]
    err = ((amp - ta).abs() + (phase - tp).abs()).mean(0).numpy()
    floor = ((ta - ta.median()).abs() + (tp - tp.median()).abs()).mean(0).numpy()
    probe = np.abs(make_scan(sim, args.task).probe) ** 2
    probe /= probe.max()
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    print(f"{'ring [px]':>10} {'pixels':>6} {'probe I/max':>11} {'model':>7} {'constant':>8} {'skill':>6}")
    for r0 in range(0, int(r.max()) + 1, args.ring):
        m = (r >= r0) & (r < r0 + args.ring)
        print(f"{r0:>4}-{r0 + args.ring:<5} {int(m.sum()):>6} {probe[m].mean():>11.3f} {err[m].mean():>7.4f} "
              f"{floor[m].mean():>8.4f} {err[m].mean() / floor[m].mean():>6.2f}")
    print(f"{'whole':>10} {n * n:>6} {probe.mean():>11.3f} {err.mean():>7.4f} {floor.mean():>8.4f} "
          f"{err.mean() / floor.mean():>6.2f}")
    learner.close()


if __name__ == "__main__":
    main()
