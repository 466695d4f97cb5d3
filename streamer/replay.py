"""Replay a recorded HDF5 file as a detector would (``ptychosteer simulate --from-file``).

Reads our own layout or an EIGER master file (``/entry/data/data_000001`` external links). Frames are grouped
into series by the recorded series ids (an EIGER file is one series); positions and labels are sent in the
extension parts when the file has them.
"""

from __future__ import annotations

import logging
from itertools import groupby
from pathlib import Path
from typing import Iterator

from streamer.hdf5 import Recording
from streamer.simulator import Control, SimFrame

logger = logging.getLogger(__name__)


class FileSource:
    """A :class:`streamer.simulator.Source` over a recording; ``stop_scan`` skips to the next series."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with Recording(self.path) as rec:  # fail early, with the reader's clear message
            self.frames_total = len(rec)
            self.series = sorted(set(int(s) for s in rec.series_ids()))
            self.layout = rec.layout
            self._configs = {s: rec.series_config(s) for s in self.series}
            self._shape = rec.frame_shape
        logger.info("replaying %s (%s layout): %d frames in %d series", self.path, self.layout, self.frames_total,
                    len(self.series))

    def series_config(self, scan: int) -> dict:
        config = dict(self._configs.get(self.series[scan], {}))
        config.setdefault("x_pixels_in_detector", int(self._shape[1]))
        config.setdefault("y_pixels_in_detector", int(self._shape[0]))
        config["description"] = f"replay of {self.path.name} series {self.series[scan]}"
        return config

    def scans(self, control: Control) -> Iterator[Iterator[SimFrame]]:
        with Recording(self.path) as rec:
            for _, frames in groupby(rec.frames(), key=lambda f: f.series):
                yield self._series(frames, control)

    @staticmethod
    def _series(frames: Iterator, control: Control) -> Iterator[SimFrame]:
        for f in frames:
            if control.take_stop():
                return
            yield SimFrame(image=f.image, position_px=f.position_px, position_m=f.position_m, amplitude=f.amplitude,
                           phase=f.phase)
