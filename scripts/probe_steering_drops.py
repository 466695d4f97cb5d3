#!/usr/bin/env python
"""Steering against live-queue drops: the simulator and the ingest as processes (as ``launch`` runs them), steering
in this process with injected stalls, so that its live PUB/SUB queues overflow and drop frames, series starts and
series ends. With ``--recording`` (the default here, as ``launch`` sets it) steering reads what was dropped from the
ingest's recording; the output says how many frames reached each mosaic against the scan's frames on disk.

    python scripts/probe_steering_drops.py [--scans 4] [--rate-hz 1000] [--stall-s 0.6] [--stalls 3,30,60]
                                           [--no-recording] [--out DIR]

Steering's receive queue is kept at one message (``live_hwm``) so that a stall of a fraction of a second loses
messages; its model is an untrained PtychoNN (the point is bookkeeping, not image quality). Which messages a stall
loses depends on timing, so runs differ; the counters say what happened.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steering.service import Steering, SteeringConfig  # noqa: E402
from streamer.hdf5 import Recording  # noqa: E402
from trainer.data import INPUT_ENCODING  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402

COUNTERS = ("reconstructed", "skipped_upstream", "skipped_thinned", "backfilled", "recovered", "unrecovered",
            "recording_errors", "unknown_scan", "starts_from_recording", "implicit_ends", "ends_from_recording",
            "late_frames", "repeated_ends")


def _status(path: Path, key: str, timeout_s: float = 60.0) -> str:
    """A stage's status file's ``key``, once it is written (the stages bind port 0 and report the endpoint)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            value = json.loads(path.read_text()).get(key)
            if value:
                return value
        except (OSError, ValueError):
            pass
        time.sleep(0.1)  # polling a file another process writes
    raise SystemExit(f"{path} did not report {key} within {timeout_s} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--rate-hz", type=float, default=1000.0)
    ap.add_argument("--stall-s", type=float, default=0.6, help="length of each injected stall")
    ap.add_argument("--stalls", default="3,30,60", help="stall at these inference calls (comma-separated)")
    ap.add_argument("--no-recording", action="store_true", help="steering without the recording (as before)")
    ap.add_argument("--out", type=Path, default=Path("runs/probe_steering_drops"))
    args = ap.parse_args()
    stalls = {int(x) for x in args.stalls.split(",") if x}
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    model_path = args.out / "model.pt"
    torch.manual_seed(0)
    torch.save({"model": PtychoNN(nconv=4, depth=2, frame_size=32).state_dict(),
                "model_config": {"nconv": 4, "depth": 2, "frame_size": 32, "input": INPUT_ENCODING}}, model_path)
    cli = [sys.executable, "-m", "ptychosteer.cli"]
    sim = subprocess.Popen(cli + ["simulate", "--endpoint", "tcp://127.0.0.1:0", "--frame-size", "32", "--scans",
                                  str(args.scans), "--rate-hz", str(args.rate_hz), "--object-size", "192",
                                  "--status-file", str(args.out / "simulator.json")], stdout=subprocess.DEVNULL)
    detector = _status(args.out / "simulator.json", "endpoint")
    recording = args.out / "recording.h5"
    ingest = subprocess.Popen(cli + ["ingest", "--detector", detector, "--output", str(recording),
                                     "--live-endpoint", "tcp://127.0.0.1:0", "--train-endpoint", "",
                                     "--notice-endpoint", "", "--max-series", str(args.scans),
                                     "--status-file", str(args.out / "ingest.json")], stdout=subprocess.DEVNULL)
    live = _status(args.out / "ingest.json", "live_endpoint")
    steering = Steering(SteeringConfig(live_endpoint=live, models_endpoint="", feed_endpoint="tcp://127.0.0.1:*",
                                       model_path=str(model_path), out_dir=str(args.out / "steering"),
                                       idle_timeout_s=20, picture_interval_s=3600, live_hwm=1,
                                       recording="" if args.no_recording else str(recording)))
    steering.start()
    infer, calls = steering._infer, [0]

    def stalling(batch):
        calls[0] += 1
        if calls[0] in stalls:
            time.sleep(args.stall_s)  # the injected stall: the live queues overflow meanwhile
        infer(batch)

    steering._infer = stalling
    status = steering.run()
    steering.close()
    sim.wait(60)
    ingest.wait(60)
    print(json.dumps({k: status.get(k, 0) for k in COUNTERS}))
    with Recording(recording) as rec:
        on_disk = {s: int((rec.series_ids() == s).sum()) for s in range(1, args.scans + 1)}
    for scan in range(1, args.scans + 1):
        state = steering.scans.get(scan)
        got = state.mosaic.frames if state is not None else 0
        print(f"scan {scan}: {got} of its {on_disk[scan]} recorded frames in the mosaic"
              + ("" if state is not None else " (never seen by steering)"))


if __name__ == "__main__":
    main()
