"""Steering decisions on the wire: one JSON message per decision on a PUB socket, topic-prefixed.

Parts: ``[b"steer.<kind>", json]``. Subscribe to ``b"steer."`` for everything or ``b"steer.stop_scan"`` for one kind.
Body::

    {"schema": 1, "session": "9f2c...", "seq": 12, "time": 1700000000.1, "kind": "rescan_region", "scan": 3,
     "model_version": 7, "reason": "...", "metrics": {...}, "positions_px": [[y, x], ...],
     "region_px": [y0, x0, y1, x1], "exposure_factor": null}

``session`` is a random token of the steering process that published it, ``seq`` counts its decisions: a
decision is identified by (session, seq). A late subscriber makes the publisher repeat its cached latest state
to every subscriber (a PUB socket cannot address one), so a follower must act on each (session, seq) once.

``scan`` is the series as recorded; ``detector_series``, when present, the detector's own id for it (they differ
when a re-armed detector reused an id, which the ingest records apart): a detector acts on its own id.

Vocabulary: ``continue`` (heartbeat with the metrics: photon statistics and progress — ``frames`` measured,
``reconstructed``, ``skipped`` under load — as of now, the mosaic's ``coverage``, ``disagreement`` and
``data_misfit`` as of its last evaluation), ``stop_scan`` (the reconstruction has converged),
``rescan_region`` (measure ``positions_px`` — top-left patch corners in object pixels — inside ``region_px``),
``adjust_exposure`` (multiply the exposure by ``exposure_factor``: frames saturate or starve).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Sequence

SCHEMA: Final = 1
TOPIC: Final = b"steer."
KINDS: Final = ("continue", "stop_scan", "rescan_region", "adjust_exposure")


class DecisionFormatError(ValueError):
    """A message on the steering feed that is not a valid decision."""


@dataclass(frozen=True)
class Decision:
    kind: str
    scan: int
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_version: int = 0
    seq: int = 0
    time: float = 0.0
    positions_px: list[list[int]] | None = None
    region_px: list[int] | None = None
    exposure_factor: float | None = None
    detector_series: int | None = None  # the detector's own series id when it differs from ``scan`` (re-armed)
    session: str = ""
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DecisionFormatError(f"unknown decision kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == "rescan_region" and not self.positions_px:
            raise DecisionFormatError("rescan_region needs positions_px")
        if self.kind == "adjust_exposure" and not (self.exposure_factor and self.exposure_factor > 0):
            raise DecisionFormatError("adjust_exposure needs exposure_factor > 0")


def encode(decision: Decision) -> list[bytes]:
    body = asdict(decision)
    body["time"] = body["time"] or time.time()
    return [TOPIC + decision.kind.encode(), json.dumps(body, separators=(",", ":"), default=float).encode()]


def decode(parts: Sequence[bytes]) -> Decision:
    if len(parts) != 2 or not bytes(parts[0]).startswith(TOPIC):
        raise DecisionFormatError(f"expected [topic, json] with topic {TOPIC!r}..., got {len(parts)} parts")
    try:
        body: dict[str, Any] = json.loads(bytes(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecisionFormatError(f"decision body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise DecisionFormatError(f"unsupported decision schema: {str(body)[:200]}")
    try:
        return Decision(**body)
    except TypeError as exc:
        raise DecisionFormatError(f"decision has unknown or missing fields: {exc}") from exc
