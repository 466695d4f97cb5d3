"""Prometheus exposition of the stages' status files (``ptychosteer metrics``).

The stages' one observability mechanism stays their status files (:mod:`streamer.status`); this module reads
them at every scrape and exposes what they hold, through ``prometheus-client``, for a cluster's monitoring:
an HTTP endpoint to scrape, or a text file for node_exporter's textfile collector (common on HPC nodes whose
ports are closed).

Mapping, per status file ``<stage>.json`` (all gauges: the values are snapshots, and a restarted stage counts
from zero again):

* a number or a boolean under key ``k`` → ``ptychosteer_<stage>_<k>`` (booleans 1 or 0);
* a nested object is flattened into the name (``catch_up: {replayed_frames: 3}`` →
  ``ptychosteer_trainer_catch_up_replayed_frames``), except an object whose values are all numbers, which becomes
  one metric with the object's keys as the label ``key`` (``decisions: {continue: 83, stop_scan: 4}`` →
  ``ptychosteer_steering_decisions{key="continue"}``; per-task errors: ``{key="0"}``, ...);
* the text values (strings, nested ones flattened into the label name as above) become the labels of one
  ``ptychosteer_<stage>_info`` gauge of value 1, the usual Prometheus "info" metric (``strategy: "er"`` →
  ``ptychosteer_trainer_info{strategy="er", ...} 1``; endpoints, names, states), each value cut to
  ``MAX_LABEL_CHARS`` characters;
* lists are left out; ``time`` becomes ``ptychosteer_<stage>_status_age_seconds`` (how long ago the stage wrote
  it: a stage that hangs shows up as a growing age), ``pid`` is left out.

Names keep ``[a-zA-Z0-9_]`` (anything else becomes ``_``); where two keys map to one name, the first is kept and
the rest are counted in ``ptychosteer_metrics_skipped_total``. A file that is not a JSON object (or is being
replaced at that moment, or nests too deep) is skipped and counted the same way: no status file can stop the
exporter.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterator

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "ptychosteer"
MAX_LABEL_CHARS = 200  # a text value longer than this is cut (an error message is not a label's business)
_NAME = re.compile(r"[^a-zA-Z0-9_]+")


def _name(*parts: str) -> str:
    return _NAME.sub("_", "_".join(p for p in parts if p)).strip("_") or "_"


def _label(*parts: str) -> str:
    """A label name: as a metric name part, never starting with a digit (nor with ``__``, reserved)."""
    name = _name(*parts)
    return f"k_{name}" if name[0].isdigit() or name == "_" else name


def _text(value: Any) -> str:
    """A label value or help text that encodes as UTF-8 (a JSON key may hold a lone surrogate)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer beyond a double: the nearest representable
            return math.inf if value > 0 else -math.inf
    return None


class StatusCollector(Collector):
    """Reads ``<status_dir>/*.json`` at every collect (every scrape); see the module docstring for the names."""

    def __init__(self, status_dir: str | Path) -> None:
        self.status_dir = Path(status_dir)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        skipped = 0
        now = time.time()
        for path in sorted(self.status_dir.glob("*.json")):
            stage = path.stem
            try:
                body = json.loads(path.read_text())
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                base = _name(PREFIX, stage)
                written = _number(body.get("time"))
                found: dict[str, GaugeMetricFamily] = {}
                if written is not None:
                    skipped += not self._add(found, _name(base, "status_age_seconds"),
                                             f"seconds since the {_text(stage)} stage wrote its status", now - written)
                fields = {k: v for k, v in body.items() if k not in ("stage", "time", "pid")}
                skipped += self._walk(found, base, stage, fields)
                labels: dict[str, str] = {}
                skipped += self._texts(labels, "", fields)
                if labels:
                    info = GaugeMetricFamily(_name(base, "info"), f"{_text(stage)} status: its text values",
                                             labels=list(labels))
                    info.add_metric(list(labels.values()), 1)
                    skipped += not self._put(found, info)
            except (OSError, ValueError, RecursionError):  # being replaced right now, not JSON, nested too deep
                skipped += 1
                continue
            for name, family in found.items():
                if name in families:  # two files whose names map to one prefix
                    skipped += 1
                else:
                    families[name] = family
        own = _name(PREFIX, "metrics_skipped_total")
        skipped += families.pop(own, None) is not None  # a status key of that name: the exporter's own comes first
        yield from families.values()
        yield GaugeMetricFamily(own,
                                "status values left out at this scrape: a name taken twice, a file not an object",
                                value=skipped)

    def _walk(self, families: dict[str, GaugeMetricFamily], name: str, stage: str, obj: dict[str, Any]) -> int:
        skipped = 0
        for key, value in obj.items():
            full = _name(name, str(key))
            number = _number(value)
            if number is not None:
                skipped += not self._add(families, full, f"{_text(stage)} status: {_text(key)}", number)
            elif isinstance(value, dict) and value and all(_number(v) is not None for v in value.values()):
                if full in families:
                    skipped += 1
                    continue
                family = GaugeMetricFamily(full, f"{_text(stage)} status: {_text(key)}, by key", labels=["key"])
                for k, v in value.items():
                    family.add_metric([_text(k)], _number(v))
                families[full] = family
            elif isinstance(value, dict):
                skipped += self._walk(families, full, stage, value)
        return skipped

    def _texts(self, labels: dict[str, str], prefix: str, obj: dict[str, Any]) -> int:
        """The text values of ``obj`` (nested objects flattened) into ``labels``; returns the names taken twice."""
        skipped = 0
        for key, value in obj.items():
            if isinstance(value, str):
                name = _label(prefix, str(key))
                if name in labels:
                    skipped += 1
                else:
                    labels[name] = _text(value)[:MAX_LABEL_CHARS]
            elif isinstance(value, dict):
                skipped += self._texts(labels, _name(prefix, str(key)), value)
        return skipped

    @staticmethod
    def _put(families: dict[str, GaugeMetricFamily], family: GaugeMetricFamily) -> bool:
        """Keep ``family`` unless its name is taken (False: the caller counts it as skipped)."""
        if family.name in families:
            return False
        families[family.name] = family
        return True

    def _add(self, families: dict[str, GaugeMetricFamily], name: str, doc: str, value: float) -> bool:
        return self._put(families, GaugeMetricFamily(name, doc, value=value))


def registry_for(status_dir: str | Path) -> CollectorRegistry:
    """A registry holding only the status collector (no process or platform metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_dir))
    return registry
