"""Catching up from the recording: the series a (re)started trainer missed are on disk; train on them first.

A trainer that was down (killed, restarted by ``launch``, resumed from a checkpoint taken before the end of a
series) has missed frames the ingest recorded meanwhile: while no trainer is connected, the ingest drops frames
for training, never for the recording. Before taking the live stream, rank 0 reads the recording's index —
which series it holds, which of them ended, the frame ids in each — skips the series the checkpoint says are
trained (unless the headers recorded under their ids are of other armings: a new run's recording, all of it
untrained), and broadcasts the plan; every rank then reads its share of each series' labelled frames (every
``world``-th one, so the ranks stay in step) and hands them to its stream receiver as if they had just arrived,
in series order. Live frames of a replayed series whose ids were replayed are dropped as duplicates.

The recording may still be written by the ingest while it is read (HDF5 without SWMR): a read that fails is
reported and the trainer goes on with the live stream alone, never with a partial, silently wrong plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.prepare import Preparation, SeriesContext

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.frames import Frame
from streamer.hdf5 import open_for_reading

logger = logging.getLogger(__name__)


@dataclass
class CatchUpPlan:
    """What rank 0 found in the recording, the same for every rank (broadcast)."""

    path: str
    indices: dict[int, list[int]] = field(default_factory=dict)  # series → recording indices of labelled frames
    frame_ids: dict[int, list[int]] = field(default_factory=dict)  # series → every frame id recorded (duplicates)
    ended: list[int] = field(default_factory=list)  # of those series, the ones whose end is recorded
    new_run: bool = False  # the recording holds another arming under a trained series id: nothing in it is trained
    error: str = ""

    @property
    def frames(self) -> int:
        return sum(len(v) for v in self.indices.values())


def plan(path: str, trained: Iterable[int] | Mapping[int, str | None], labelled_only: bool = True) -> CatchUpPlan:
    """Series in the recording at ``path`` that are not in ``trained``, with the frames to replay (rank 0): the
    labelled ones, or every frame (``labelled_only=False``: the physics loss needs no label). ``trained`` as
    {series: its header fingerprint (None: unknown)}: a recorded series of a trained id whose header is another
    arming's makes the recording a new run's (``new_run``), none of whose series is trained."""
    from streamer.frames import header_fingerprint
    from streamer.hdf5 import Recording

    out = CatchUpPlan(path=path)
    if not path or not Path(path).exists():
        return out
    try:
        with open_for_reading(path) as f:
            if "entry/data/data" not in f:  # the ingest has recorded no frame yet: nothing was missed
                return out
        with Recording(path) as rec:
            n = rec.complete()  # a consistent snapshot of a file still being written
            if n == 0:
                return out
            series, ids = rec.series_ids()[:n], rec.frame_ids()[:n]
            labelled = rec.labelled()[:n]
            ended = rec.ended_series()
            known = trained if isinstance(trained, Mapping) else {}
            recorded = {s: rec.series_config(s) for s in sorted(set(series.tolist()) & set(known)) if known[s]}
            out.new_run = any(config and header_fingerprint(config) != known[s] for s, config in recorded.items())
        done = set() if out.new_run else set(trained)
        for s in sorted(set(series.tolist()) - done):
            mine = series == s
            out.frame_ids[s] = ids[mine].tolist()
            out.indices[s] = np.flatnonzero(mine & labelled if labelled_only else mine).tolist()
            if s in ended:
                out.ended.append(s)
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds on a file being written; all mean "not now"
        return CatchUpPlan(path=path, error=f"{type(exc).__name__}: {exc}")
    return out


def load_share(p: CatchUpPlan, rank: int, world: int) -> list[Frame]:
    """This rank's share of the planned frames (every ``world``-th of each series), in series order."""
    from streamer.hdf5 import Recording

    wanted = np.array(sorted(i for s in sorted(p.indices) for i in p.indices[s][rank::world]), np.int64)
    if not len(wanted):
        return []
    with Recording(p.path) as rec:
        frames = [Frame(scan=f.series, frame=f.frame_id, image=f.image, position_m=f.position_m,
                        position_px=f.position_px, amplitude=f.amplitude, phase=f.phase)
                  for f in rec.frames(indices=wanted)]
    return sorted(frames, key=lambda f: f.scan)  # stable: each series keeps its recorded order


def series_contexts(path: str, series: list[int], prepare: "Preparation") -> dict[int, "SeriesContext"]:
    """What each series header in the recording says for preparing its frames (beam centre, mask, flatfield)."""
    from streamer.hdf5 import Recording

    with Recording(path) as rec:
        return {s: prepare.context(rec.series_config(s), rec.series_tables(s)) for s in series}


def series_configs(path: str, series: list[int]) -> dict[int, dict]:
    """Each series header's configuration in the recording (the physics loss reads the probe from it, the
    evaluation which simulated scan the series is)."""
    from streamer.hdf5 import Recording

    with Recording(path) as rec:
        return {s: rec.series_config(s) for s in series}
