"""Stage status files: the one observability mechanism of a pipeline run (shared by every stage; lives in the
streamer because every stage may import it and it imports nothing).

Each stage writes ``<status_dir>/<stage>.json`` (atomically: temp file + rename) every few seconds and at exit:
its counters (frames received/persisted/forwarded/dropped/malformed, training steps and samples/s, buffer fill,
decisions, ...), a timestamp and its pid. ``ptychosteer status`` reads them, ``ptychosteer metrics`` serves them to
Prometheus; ``launch`` waits on them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def write_status(path: str | Path | None, stage: str, counters: dict[str, Any]) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"stage": stage, "time": time.time(), "pid": os.getpid(), **counters}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, default=str))
    tmp.replace(path)


def read_status(directory: str | Path) -> dict[str, dict[str, Any]]:
    out = {}
    for f in sorted(Path(directory).glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):  # being replaced right now: skip this round
            continue
    return out
