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
            "frame_shape": "x".join(map(str, rec.frame_shape)), "dtype": rec.dtype.name,
            "series": dict(sorted(series.items())),
        }
        data = rec._entry["data"]
        if "labelled" in data:
            out["labelled"] = int(np.count_nonzero(data["labelled"][...]))
        if "position_m" in data:
            out["with_position"] = int(np.count_nonzero(~np.isnan(data["position_m"][:, 0])))
        if "data" in data:
            filters = data["data"]._filters
            names = {"32008": "bitshuffle-lz4 (32008)", "gzip": "gzip", "lzf": "lzf"}
            out["compression"] = ",".join(names.get(f, f) for f in filters) if filters else "none"
        out["quarantined"] = rec.quarantine()
        families = {s: rec.series_config(s).get("ptychosteer", {}).get("family") for s in series}
        if any(families.values()):
            out["families"] = families
    return out
