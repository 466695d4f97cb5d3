"""A summary of a recording, for ``ptychosteer inspect`` and the demo."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filter for reading)
import numpy as np

from streamer.hdf5 import Recording


def summarise(path: Path) -> dict[str, Any]:
    with Recording(path) as rec:
        series = Counter(int(s) for s in rec.series_ids())
        out: dict[str, Any] = {
            "file": str(path), "layout": rec.layout, "frames": len(rec),
            "frame_shape": "x".join(map(str, rec.frame_shape)) or "-", "dtype": rec.dtype.name if len(rec) else "-",
            "series": {**{int(k): 0 for k in rec.series_headers()}, **dict(sorted(series.items()))},
        }
        data = rec._entry.get("data", {})
        if "labelled" in data:
            out["labelled"] = int(np.count_nonzero(data["labelled"][...]))
        if "appendix" in data:  # per-frame image appendices, kept verbatim
            out["with_appendix"] = sum(1 for a in rec.appendices() if a)
        if "position_m" in data:
            out["with_position"] = int(np.count_nonzero(~np.isnan(data["position_m"][:, 0])))
        if "data" in data:
            filters = data["data"]._filters
            names = {"32008": "bitshuffle-lz4 (32008)", "gzip": "gzip", "lzf": "lzf"}
            out["compression"] = ",".join(names.get(f, f) for f in filters) if filters else "none"
        rearmed = {s: rec.detector_series(s) for s in out["series"] if rec.detector_series(s) != s}
        if rearmed:  # a re-armed detector reused these ids: each arming recorded apart, under its own series
            out["detector_series"] = rearmed
        out["quarantined"] = rec.quarantine()
        families = {s: rec.series_config(s).get("ptychosteer", {}).get("family") for s in out["series"]}
        if any(families.values()):
            out["families"] = families
    return out


def pipeline_summary(work: Path) -> dict[str, Any]:
    """What a pipeline run did: frames, training errors and forgetting, decisions and actions, figure paths."""
    import json

    from streamer.status import read_status

    st = read_status(work / "status")
    out: dict[str, Any] = {}
    sim, ing, tr, steer = (st.get(k, {}) for k in ("simulator", "ingest", "trainer", "steering"))
    out["frames_sent"] = sim.get("frames_sent", "-")
    out["frames_persisted"] = ing.get("persisted", "-")
    out["frames_dropped_train"] = ing.get("dropped", "-")
    out["malformed"] = ing.get("malformed", "-")
    out["training_steps"] = tr.get("steps", "-")
    out["samples_per_s_per_rank"] = round(tr.get("samples_per_s_per_rank", 0.0), 1)
    metrics_file = work / "train" / "metrics.json"
    body = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    evaluated = {int(s) for s in body.get("series", {}).values()}
    recorded: list[int] = []
    if (work / "recording.h5").exists():
        from streamer.hdf5 import Recording

        try:
            with Recording(work / "recording.h5") as rec:
                recorded = [int(s) for s in rec.series_headers()]
        except (OSError, ValueError):  # a recording that cannot be read says nothing about the tasks
            recorded = []
    trained = [int(s) for s in tr.get("tasks", [])]
    if trained or recorded:  # every series, by its id: trained and evaluated, trained only, or only recorded
        out["tasks"] = {str(s): ("evaluated" if s in evaluated else "not evaluated") if s in trained
                        else "not trained" for s in sorted(set(trained) | set(recorded))}
    if tr.get("catch_up", {}).get("replayed_series"):
        out["caught_up_from_recording"] = tr["catch_up"]
    if body:
        m = body["metrics"]
        out["per_task_error"] = {k: round(v, 4) for k, v in m["final_error"].items()}
        if "constant_guess" in body:  # the floor: each task's median amplitude and phase predicted everywhere
            out["constant_guess"] = {k: round(v, 4) for k, v in body["constant_guess"].items()}
        out["average_error"] = round(m["average_error"], 4)
        out["forgetting"] = {k: round(v, 4) for k, v in m["forgetting"].items()}
        for region, report in body.get("skill", {}).items():  # error / constant guess per task: < 1 beats it
            suffix = "" if region == "full" else f"_{region}"
            phase_free = region.endswith("_phase_free")  # one global phase removed per task; the same floor
            if suffix:
                out[f"per_task_error{suffix}"] = {k: round(v, 4) for k, v in report["final_error"].items()}
                if not phase_free:
                    out[f"constant_guess{suffix}"] = {k: round(v, 4) for k, v in report["constant_guess"].items()}
            out[f"skill{suffix}"] = {k: round(v, 3) for k, v in report["skill"].items()}
            out[f"mean_skill{suffix}"] = round(report["mean_skill"], 3)
            if "skill_after_task" in report and not phase_free:  # 1 there: never learnt (not forgotten)
                out[f"skill_after_task{suffix}"] = {k: round(v, 3) for k, v in report["skill_after_task"].items()}
        if body.get("steps_per_task"):
            out["steps_per_task"] = body["steps_per_task"]
    # the newest checkpoint's version: numbering continues over earlier runs in the same workdir (their
    # checkpoints stay), so it is not a count of this run's models
    out["newest_model_version"] = tr.get("version", "-")
    out["decisions"] = {k[len("decisions_"):]: v for k, v in steer.items() if k.startswith("decisions_")}
    out["simulator_actions"] = sim.get("actions", [])
    figures = sorted(str(p) for p in list((work / "train").glob("*.png")) + list((work / "steering").glob("*.png")))
    out["figures"] = figures
    return out
