"""``ptychosteer demo``: the simulator streaming into the ingest on this machine, then a summary.

Until the trainer and steering stages exist this is the whole demo: simulate ``scans`` scans, record every
frame, forward to a (currently unattached) trainer socket, and summarise the recording.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ptychosteer.console import Ticker
from ptychosteer.summary import summarise
from streamer.config import IngestConfig, SimulatorConfig
from streamer.ingest import Ingest
from streamer.simulator import Detector

logger = logging.getLogger(__name__)


def run_demo(workdir: Path, *, scans: int = 4, frame_size: int = 64, seed: int = 0) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    recording = workdir / "recording.h5"
    sim = SimulatorConfig(endpoint="tcp://127.0.0.1:*", scans=scans, frame_size=frame_size, seed=seed)
    ticker = Ticker("demo", interval_s=1.0)
    with Detector(sim) as detector:
        ingest = Ingest(IngestConfig(detector_endpoint=detector.endpoint, output_path=str(recording),
                                     train_endpoint="tcp://127.0.0.1:*", live_endpoint="tcp://127.0.0.1:*",
                                     max_series=scans, stats_interval_s=0.5))
        ingest.start()
        sender = threading.Thread(target=detector.run, name="simulator", daemon=True)
        sender.start()
        try:
            ingest.run(lambda s: ticker.show(f"received {s['received']}  persisted {s['persisted']}  "
                                             f"series {s['series_ended']}/{scans}"))
        finally:
            ingest.close()
            sender.join()
        ticker.done()
        stats = ingest.snapshot()
    summary = summarise(recording)
    summary["frames_sent"] = detector.frames_sent
    summary["frames_persisted"] = stats["persisted"]
    summary["malformed"] = stats["malformed"]
    return summary
