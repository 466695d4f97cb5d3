#!/usr/bin/env python
"""Steering latency on the CPU: frame arrival at steering → first decision published after its reconstruction.

Simulator (paced, own process) → ingest (own process) → steering (this process, PtychoNN nconv 8 / depth 3 on
64×64 frames, batches of what has arrived) → decision feed. A warm-up series lets the live subscription settle;
the measured series follows. Target: p99 <= 100 ms at 500 frames/s.

Not measured yet: part (b) of the steering issue (frames to a target error, steered vs dense raster); see the
closing note of the session that added this script.

    python scripts/bench_steering.py [--rate-hz 500] [--object-px 448]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steering.policy import PolicyConfig  # noqa: E402
from steering.service import Steering, SteeringConfig  # noqa: E402
from streamer.config import IngestConfig, SimulatorConfig  # noqa: E402
from streamer.ingest import Ingest  # noqa: E402
from streamer.simulator import Detector  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402


def detector_proc(q: mp.Queue, go: mp.Event, rate_hz: float, object_px: int) -> None:
    sim = SimulatorConfig(endpoint="tcp://127.0.0.1:*", frame_size=64, object_size_px=object_px, overlap=0.8,
                          scans=2, rate_hz=rate_hz, families=("particles",))
    with Detector(sim) as det:
        q.put(det.endpoint)
        go.wait()
        det.run()


def ingest_proc(detector: str, q: mp.Queue) -> None:
    ingest = Ingest(IngestConfig(detector_endpoint=detector, output_path="", train_endpoint="",
                                 live_endpoint="tcp://127.0.0.1:*", max_series=2))
    ingest.start()
    q.put(ingest.live_endpoint)
    ingest.run()
    ingest.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-hz", type=float, default=500.0)
    ap.add_argument("--object-px", type=int, default=448, help="object side; sets the frames per scan")
    args = ap.parse_args()
    mp.set_start_method("spawn")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model = PtychoNN(nconv=8, depth=3, frame_size=64)
    torch.save({"model": model.state_dict(), "model_config": {"nconv": 8, "depth": 3, "frame_size": 64}},
               tmp / "model.pt")
    q, go = mp.Queue(), mp.Event()
    det = mp.Process(target=detector_proc, args=(q, go, args.rate_hz, args.object_px))
    det.start()
    ing = mp.Process(target=ingest_proc, args=(q.get(), q))
    ing.start()
    policy = PolicyConfig(heartbeat_s=0.01, min_interval_s=0.01, max_rescans=0, converged_disagreement=0.0,
                          saturated_fraction=1.0, starved_counts=0.0)
    steering = Steering(SteeringConfig(live_endpoint=q.get(), models_endpoint="", feed_endpoint="tcp://127.0.0.1:*",
                                       model_path=str(tmp / "model.pt"), out_dir=str(tmp), max_scans=2,
                                       picture_interval_s=3600, batch_max=64, policy=policy))
    steering.start()
    go.set()
    summary = steering.run()
    steering.close()
    det.join()
    ing.join()
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"frames reconstructed {summary.get('reconstructed', 0)}, skipped behind {summary.get('skipped_behind', 0)}, "
          f"unknown scan (warm-up) {summary.get('unknown_scan', 0)} at {args.rate_hz:.0f} frames/s, 64x64, "
          f"PtychoNN nconv 8 depth 3")
    p50, p99 = summary.get("decision_latency_ms_p50", float("nan")), summary.get("decision_latency_ms_p99", float("nan"))
    print(f"latency frame arrival -> decision published: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(target p99 <= 100 ms: {'met' if p99 <= 100 else 'NOT met'})")


if __name__ == "__main__":
    main()
