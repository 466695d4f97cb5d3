"""HDF5 recordings: the writer used by the ingest (its own thread) and the readers (ours and EIGER master files).

Layout (NeXus: ``nxcheck`` finds no errors; readable with plain h5py, plus ``import hdf5plugin`` when frames are
bitshuffle/LZ4; silx view, h5web and NeXpy open /entry/data as the default plot)::

    /                           NXroot, attrs default="entry", creator, file_time
    /entry                      NXentry, attrs ptychosteer_layout=1, default="data"; start_time (at creation),
                                end_time (at close), ISO 8601
    /entry/data                 NXdata, signal="data", axes=[".", "y_pixel", "x_pixel"]
        data          (n, h, w) detector type, units counts, one chunk per frame, optional bitshuffle/LZ4 (a
                                detector's bitshuffle-LZ4 blob is written as the chunk, as sent); attr channel
        channel_<name> (n, h, w) each further threshold channel (stream v2), in auxiliary_signals
        y_pixel, x_pixel        the axes: pixel indices
        series        (n,) int64     SIMPLON series id (one scan = one series)
        frame_id      (n,) int64     frame number inside the series
        position_m    (n, 2) float64 patch centre (y, x) in metres; NaN when the detector sent none
        position_px   (n, 2) float64 patch top-left (y, x) in object pixels; NaN when absent
        start_time_ns, stop_time_ns, real_time_ns   (n,) int64, from dconfig-1.0
        recv_time_ns  (n,) int64     wall clock at the ingest
        labelled      (n,) bool
        appendix      (n,) vlen uint8  each frame's image appendix, verbatim (empty: none); only once one came
        (per-frame columns carry units: m, pixel, ns)
    /entry/sample               NXsample; y_position, x_position (NXpositioner): value (n,) the scan position [m]
    /entry/instrument           NXinstrument from the latest series header, each value with its units:
        detector                NXdetector: x/y_pixel_size, distance, beam_center_x/y, count_time, frame_time,
                                saturation_value, description, sensor_material/thickness, pixel_mask and
                                flatfield (header_detail all), data → /entry/data/data
        beam                    NXbeam: incident_energy [eV], incident_wavelength [angstrom]
    /entry/label/amplitude, /entry/label/phase   (n, h, w) float32, NaN where unlabelled (simulation only)
    /entry/series/<id>          one per arming of the detector (a re-armed detector that reuses a series id, or
                                takes one below an id recorded, is recorded under the next id above them all;
                                attr detector_series keeps its own)
                                attrs header_detail, config (JSON), appendix, frames, missing_frames (gaps in
                                the frame ids) and short_of_nimages (fewer than the header announced, after
                                the last frame: stopped early or lost), set at its end
                                datasets flatfield, pixelmask, countrate_table when header_detail=all
    /entry/quarantine/<k>       rejected messages: attrs kind, reason, recv_time_ns, sizes, truncated (only each
                                part's first KiB kept: oversized, or past the quarantine budget); part_000, ... (uint8)

Every block write is followed by a flush, and the ingest hands over a partial block at least every
``flush_interval_s``, so a crash loses at most that much.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import hdf5plugin
import numpy as np

from streamer.compression import Chunk
from streamer.dectris import ImageFrame, SeriesHeader

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 1
_SCALARS = ("series", "frame_id", "start_time_ns", "stop_time_ns", "real_time_ns", "recv_time_ns")


@dataclass
class FrameBlock:
    """Frames gathered by the receive loop before one HDF5 write (preallocated, filled in place).

    A frame kept compressed (its :class:`~streamer.compression.Chunk`) is held as it came, for a direct chunk
    write; further threshold channels (stream v2) are held per channel name."""

    capacity: int
    shape: tuple[int, int]
    dtype: np.dtype
    count: int = 0
    data: np.ndarray | None = field(init=False, default=None)  # decoded frames (allocated at the first one)
    chunks: list[Chunk | None] | None = None  # compressed frames, per row (None: that row is in ``data``)
    scalars: np.ndarray = field(init=False)  # (capacity, 6) int64 in _SCALARS order
    positions: np.ndarray = field(init=False)  # (capacity, 4) float64: position_m (y, x), position_px (y, x)
    labelled: np.ndarray = field(init=False)
    amplitude: np.ndarray | None = None
    phase: np.ndarray | None = None
    appendix: list[bytes] | None = None  # each frame's foreign image appendix (b"" for none), once one arrives
    channels: dict[str, list[np.ndarray | Chunk]] = field(default_factory=dict)  # further threshold channels
    channel: str = ""  # the first channel's name (stream v2)

    def __post_init__(self) -> None:
        self.scalars = np.empty((self.capacity, len(_SCALARS)), np.int64)
        self.positions = np.full((self.capacity, 4), np.nan)
        self.labelled = np.zeros(self.capacity, bool)

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def append(self, frame: ImageFrame, recv_time_ns: int) -> None:
        i = self.count
        if frame.chunk is not None:
            if self.chunks is None:
                self.chunks = [None] * self.capacity
            self.chunks[i] = frame.chunk
        else:
            if self.data is None:
                self.data = np.empty((self.capacity, *self.shape), self.dtype)
            self.data[i] = frame.image
        for name, image in frame.channels:
            self.channels.setdefault(name, []).append(image)
        self.channel = frame.channel or self.channel
        self.scalars[i] = (frame.series, frame.frame, frame.start_time_ns, frame.stop_time_ns, frame.real_time_ns,
                           recv_time_ns)
        if frame.position_m is not None:
            self.positions[i, :2] = frame.position_m
        if frame.position_px is not None:
            self.positions[i, 2:] = frame.position_px
        if frame.labelled:
            if self.amplitude is None:
                self.amplitude = np.full((self.capacity, *self.shape), np.nan, np.float32)
                self.phase = np.full((self.capacity, *self.shape), np.nan, np.float32)
            self.amplitude[i] = frame.amplitude
            self.phase[i] = frame.phase  # type: ignore[index]
            self.labelled[i] = True
        if frame.appendix is not None:
            if self.appendix is None:
                self.appendix = [b""] * self.capacity
            self.appendix[i] = frame.appendix
        self.count = i + 1

    def rows(self) -> list[np.ndarray | Chunk]:
        """Each frame as held: a decoded array or its chunk."""
        return [self.chunks[i] if self.chunks is not None and self.chunks[i] is not None else self.data[i]  # type: ignore[index,misc]
                for i in range(self.count)]


def _channel_dataset(name: str) -> str:
    """The dataset of a further threshold channel: ``channel_<name>`` (name reduced to letters, digits, _)."""
    return "channel_" + "".join(c if c.isalnum() or c == "_" else "_" for c in name)[:64]


class RecordingExists(FileExistsError):
    """A recording is already at the output path: it is kept, and nothing is written."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists: a recording is never overwritten; choose another output path, move it "
                         f"away, or ask for overwriting explicitly (ingest --overwrite)")


class RecordingWriter:
    """Writes blocks, series metadata and quarantined messages from its own thread, in arrival order.

    ``persisted`` counts frames on disk (flushed). A full queue makes :meth:`put_block` wait: the detector is
    then held back by ZeroMQ's high-water marks instead of a frame being lost.

    An existing file is never replaced unless ``overwrite``: a restarted ingest with the same output path would
    otherwise erase every frame the earlier run recorded (:class:`RecordingExists`).
    """

    def __init__(self, path: str | Path, compression: str = "bslz4", queue_blocks: int = 64,
                 on_error: Callable[[BaseException], None] | None = None, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # "w-" creates, or fails if the file exists (also one created between a check and the open)
            # default libver: a killed writer leaves a readable file
            self._file = h5py.File(self.path, "w" if overwrite else "w-")
        except FileExistsError as exc:
            raise RecordingExists(self.path) from exc
        self._file.attrs.update({"NX_class": "NXroot", "default": "entry", "creator": "ptychosteer",
                                 "file_time": _now_iso()})
        entry = self._file.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "ptychosteer_layout": LAYOUT_VERSION, "default": "data"})
        entry.create_dataset("start_time", data=_now_iso())  # the acquisition's start (the recording's creation)
        self._data = entry.create_group("data")
        self._data.attrs.update({"NX_class": "NXdata", "signal": "data"})
        self._file.flush()  # readable at once (inspect, a trainer catching up), before the first frame
        self._compression = compression
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=queue_blocks)
        self._on_error = on_error
        self.persisted = 0
        self.quarantined = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="hdf5-writer", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- producer side (receive thread)
    def put_block(self, block: FrameBlock) -> None:
        if block.count:
            self._queue.put(("block", block))

    def put_series_header(self, header: SeriesHeader) -> None:
        self._queue.put(("header", header))

    def put_series_end(self, series: int, frames: int, missing: int = 0, short: int = 0) -> None:
        """``missing``: frames of the series that never arrived (the gaps in its frame ids); ``short``: frames
        fewer than its header's ``nimages`` × ``ntrigger`` after the last one received (stopped early, or lost)."""
        self._queue.put(("end", (series, frames, missing, short)))

    def put_quarantine(self, kind: str, reason: str, parts: list[bytes], recv_time_ns: int,
                       sizes: list[int] | None = None) -> None:
        """``sizes``: the parts' sizes as received, when only their heads are kept (``parts`` shorter)."""
        self._queue.put(("quarantine", (kind, reason, parts, recv_time_ns, sizes)))

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written and flushed (readable by another reader);
        False if ``timeout`` passed first."""
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def _write_sync(self, done: threading.Event) -> None:
        done.set()

    def close(self) -> None:
        """Write what is queued, flush and close the file (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._file.id.valid:
            try:
                self.close_entry()
            except (OSError, ValueError, KeyError) as exc:  # a failed disk: the frames matter more than a time
                logger.warning("could not write /entry/end_time: %s", exc)
            self._file.flush()
            self._file.close()

    # -------------------------------------------------------------- writer thread
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                getattr(self, f"_write_{item[0]}")(item[1])
                self._file.flush()
            except Exception as exc:  # the disk is gone or full: report, keep draining so nobody waits forever
                logger.exception("HDF5 writer failed on %s", item[0])
                self.error = exc
                if self._on_error:
                    self._on_error(exc)

    def _frame_datasets(self, block: FrameBlock) -> None:
        for name in _SCALARS:
            ds = self._data.create_dataset(name, (0,), np.int64, maxshape=(None,), chunks=(4096,))
            if name.endswith("_ns"):
                ds.attrs["units"] = "ns"
        for name, units in (("position_m", "m"), ("position_px", "pixel")):
            ds = self._data.create_dataset(name, (0, 2), np.float64, maxshape=(None, 2), chunks=(4096, 2))
            ds.attrs.update({"units": units, "long_name": f"scan position (y, x) [{units}]"})
        self._data.create_dataset("labelled", (0,), bool, maxshape=(None,), chunks=(4096,))
        h, w = block.shape  # NXdata axes: the frame's pixel rows and columns (the frame axis has none)
        self._data.create_dataset("y_pixel", data=np.arange(h, dtype=np.int32)).attrs["units"] = "pixel"
        self._data.create_dataset("x_pixel", data=np.arange(w, dtype=np.int32)).attrs["units"] = "pixel"
        self._data.attrs.update({"axes": [".", "y_pixel", "x_pixel"], "y_pixel_indices": 1, "x_pixel_indices": 2})
        sample = self._file["entry"].require_group("sample")  # NXsample: the scan positions, one per frame
        sample.attrs["NX_class"] = "NXsample"
        for axis in ("y", "x"):
            positioner = sample.create_group(f"{axis}_position")
            positioner.attrs["NX_class"] = "NXpositioner"
            positioner.create_dataset("name", data=f"sample {axis}")
            ds = positioner.create_dataset("value", (0,), np.float64, maxshape=(None,), chunks=(4096,))
            ds.attrs.update({"units": "m", "long_name": f"{axis} scan position of each frame (NaN: none sent)"})
        data = self._image_dataset("data", block)
        data.attrs["units"] = "counts"
        if block.channel:
            data.attrs["channel"] = block.channel
        if block.channels:
            self._data.attrs["auxiliary_signals"] = [_channel_dataset(n) for n in block.channels]
            for name in block.channels:
                self._image_dataset(_channel_dataset(name), block).attrs["channel"] = name

    def _image_dataset(self, name: str, block: FrameBlock) -> h5py.Dataset:
        """Frames of one channel: one chunk per frame, bitshuffle-LZ4 (when compressed) with the filter's
        default block size, the framing a detector's ``bs*-lz4`` blob already has."""
        h, w = block.shape
        filt = hdf5plugin.Bitshuffle(cname="lz4") if self._compression == "bslz4" else {}
        return self._data.create_dataset(name, (0, h, w), np.dtype(block.dtype).newbyteorder("<"),
                                         maxshape=(None, h, w), chunks=(1, h, w), **filt)

    def _write_frames(self, ds: h5py.Dataset, n0: int, rows: list[np.ndarray | Chunk],
                      decoded: np.ndarray | None = None) -> None:
        """Rows from ``n0``: a chunk as it came (direct chunk write) into a bitshuffle-LZ4 dataset, else decoded
        (HDF5 compresses it). ``decoded``: the block's array of decoded rows, written in one call when whole."""
        if decoded is not None and not any(isinstance(r, Chunk) for r in rows):
            ds[n0:n0 + len(rows)] = decoded[:len(rows)]
            return
        direct = self._compression == "bslz4"
        for i, row in enumerate(rows):
            if isinstance(row, Chunk) and direct:
                ds.id.write_direct_chunk((n0 + i, 0, 0), row.data if isinstance(row.data, bytes) else bytes(row.data))
            else:
                ds[n0 + i] = row.decode() if isinstance(row, Chunk) else row

    def _label_datasets(self, shape: tuple[int, int]) -> h5py.Group:
        label = self._file["entry"].require_group("label")
        label.attrs["NX_class"] = "NXcollection"
        for name in ("amplitude", "phase"):
            if name not in label:
                label.create_dataset(name, (self.persisted, *shape), np.float32, maxshape=(None, *shape),
                                     chunks=(1, *shape), fillvalue=np.nan)
        return label

    def _write_block(self, block: FrameBlock) -> None:
        if "data" not in self._data:
            self._frame_datasets(block)
        n0, n = self.persisted, block.count
        if block.appendix is not None and "appendix" not in self._data:  # the first appendix: earlier ones empty
            self._data.create_dataset("appendix", (n0,), h5py.vlen_dtype(np.uint8), maxshape=(None,), chunks=(1024,))
        data = self._data["data"]
        if data.shape[1:] != block.shape:
            raise ValueError(f"frame shape {block.shape} differs from the recording's {data.shape[1:]}")
        for ds in self._data.values():
            if ds.maxshape[0] is None:  # the per-frame columns (not the pixel axes)
                ds.resize(n0 + n, axis=0)
        for axis, col in (("y", 0), ("x", 1)):
            value = self._file[f"entry/sample/{axis}_position/value"]
            value.resize(n0 + n, axis=0)
            value[n0:] = block.positions[:n, col]
        self._write_frames(data, n0, block.rows(), block.data)
        for name, rows in block.channels.items():
            channel = self._data.get(_channel_dataset(name))
            if channel is None:  # the ingest refuses a change of channels; a writer fed otherwise says so
                raise ValueError(f"channel {name!r} is not one of the recording's")
            self._write_frames(channel, n0, rows[:n])
        for j, name in enumerate(_SCALARS):
            self._data[name][n0:] = block.scalars[:n, j]
        self._data["position_m"][n0:] = block.positions[:n, :2]
        self._data["position_px"][n0:] = block.positions[:n, 2:]
        self._data["labelled"][n0:] = block.labelled[:n]
        if block.appendix is not None:
            verbatim = np.empty(n, dtype=object)
            verbatim[:] = [np.frombuffer(a, np.uint8) for a in block.appendix[:n]]
            self._data["appendix"][n0:] = verbatim
        if block.amplitude is not None or "label" in self._file["entry"]:
            label = self._label_datasets(block.shape)
            for name, arr in (("amplitude", block.amplitude), ("phase", block.phase)):
                label[name].resize(n0 + n, axis=0)
                if arr is not None:
                    label[name][n0:] = arr[:n]
        self.persisted = n0 + n

    def _write_header(self, header: SeriesHeader) -> None:
        series = self._file["entry"].require_group("series")
        series.attrs["NX_class"] = "NXcollection"
        group = series.require_group(str(header.series))
        group.attrs["NX_class"] = "NXcollection"
        self._write_instrument(header)
        group.attrs.update({"header_detail": header.detail, "config": json.dumps(header.config),
                            "appendix": header.appendix or "",
                            "detector_series": header.series if header.detector_series is None
                            else header.detector_series})
        for name, table in header.tables.items():
            if name in group:
                del group[name]
            group.create_dataset(name, data=table)

    def _write_instrument(self, header: SeriesHeader) -> None:
        """NeXus NXinstrument/NXdetector and NXbeam from a series header (the latest arming's; each series keeps
        its own under /entry/series). Only what the header states is written, each with its units."""
        c = header.config
        instrument = self._file["entry"].require_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.require_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        beam = instrument.require_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        fields = [(detector, "x_pixel_size", c.get("x_pixel_size"), "m"),
                  (detector, "y_pixel_size", c.get("y_pixel_size"), "m"),
                  (detector, "distance", c.get("detector_distance"), "m"),
                  (detector, "beam_center_x", c.get("beam_center_x"), "pixel"),
                  (detector, "beam_center_y", c.get("beam_center_y"), "pixel"),
                  (detector, "count_time", c.get("count_time"), "s"),
                  (detector, "frame_time", c.get("frame_time"), "s"),
                  (detector, "sensor_thickness", c.get("sensor_thickness"), "m"),
                  (detector, "saturation_value", c.get("countrate_correction_count_cutoff"), None),
                  (detector, "description", c.get("description") or c.get("detector_description"), None),
                  (detector, "serial_number", c.get("detector_number") or c.get("detector_serial_number"), None),
                  (detector, "sensor_material", c.get("sensor_material"), None),
                  (beam, "incident_energy", c.get("photon_energy"), "eV"),
                  (beam, "incident_wavelength", c.get("wavelength"), "angstrom")]
        for group, name, value, units in fields:
            if name in group:
                del group[name]
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                group.create_dataset(name, data=value)
                if units:
                    group[name].attrs["units"] = units
        for name, table in (("pixel_mask", header.tables.get("pixelmask")),
                            ("flatfield", header.tables.get("flatfield"))):
            if name in detector:
                del detector[name]
            if table is not None:
                detector.create_dataset(name, data=table, compression="gzip")
        if "data" not in detector:
            detector["data"] = h5py.SoftLink("/entry/data/data")

    def close_entry(self) -> None:
        """The acquisition's end time (at close)."""
        entry = self._file["entry"]
        if "end_time" in entry:
            del entry["end_time"]
        entry.create_dataset("end_time", data=_now_iso())

    def _write_end(self, item: tuple[int, int, int, int]) -> None:
        series, frames, missing, short = item
        attrs = self._file["entry"].require_group("series").require_group(str(series)).attrs
        attrs["frames"], attrs["missing_frames"], attrs["short_of_nimages"] = frames, missing, short

    def _write_quarantine(self, item: tuple[str, str, list[bytes], int, list[int] | None]) -> None:
        kind, reason, parts, recv_ns, sizes = item
        quarantine = self._file["entry"].require_group("quarantine")
        quarantine.attrs["NX_class"] = "NXcollection"
        group = quarantine.create_group(f"{self.quarantined:08d}")
        group.attrs["NX_class"] = "NXcollection"
        sizes = sizes or [len(p) for p in parts]
        group.attrs.update({"kind": kind, "reason": reason, "recv_time_ns": recv_ns, "parts": len(parts),
                            "sizes": np.asarray(sizes, np.int64),
                            "truncated": any(len(p) < n for p, n in zip(parts, sizes))})
        for i, part in enumerate(parts):
            group.create_dataset(f"part_{i:03d}", data=np.frombuffer(part, np.uint8))
        self.quarantined += 1


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class RecordedFrame:
    index: int
    series: int
    frame_id: int
    image: np.ndarray
    position_m: tuple[float, float] | None
    position_px: tuple[float, float] | None
    amplitude: np.ndarray | None
    phase: np.ndarray | None


def _eiger_data(entry: h5py.Group) -> list[h5py.Dataset]:
    names = sorted(k for k in entry["data"] if k.startswith("data_"))
    out = []
    for name in names:
        try:
            out.append(entry["data"][name])
        except KeyError:  # a dangling external link: that data file is missing
            logger.warning("EIGER master file links %s, but its data file is missing", name)
    return out


def open_for_reading(path: str | Path) -> h5py.File:
    """The file, read-only, also while an ingest is still writing it: without file locks (another process's
    writer holds them); where this process itself has it open for writing (an ingest and a reader in one
    process: tests, a notebook), HDF5 refuses other locking flags, so it is opened with the writer's and shares
    its open file."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        if "locking flag values don't match" not in str(exc):
            raise
        return h5py.File(path, "r", locking=None)


def highest_series(path: str | Path) -> int:
    """The highest series id a recording of ours holds (a header, an end or a frame; 0 for one that received
    nothing): an ingest that continues its run numbers the new series above it (``ingest --after``)."""
    with open_for_reading(path) as f:
        entry = f.get("entry")
        if not isinstance(entry, h5py.Group) or "series" not in entry and "data" not in entry:
            raise ValueError(f"{path}: no /entry/series or /entry/data: not a ptychosteer recording")
        ids = [int(k) for k in entry.get("series", {}).keys() if k.isdigit()]
        column = entry.get("data", {}).get("series")
        if column is not None and column.shape[0]:
            ids.append(int(np.max(column[...])))
        return max(ids, default=0)


class Recording:
    """Read-only view of a recording: our layout, or an EIGER master file (``/entry/data/data_000001``, ...)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.unreadable = 0  # frames whose stored chunk did not decode (skipped by frames(), with a warning)
        self._file = open_for_reading(self.path)
        entry = self._file.get("entry")
        frames = entry is not None and "data" in entry and "data" in entry["data"]
        if entry is not None and not frames and ("series" in entry or "quarantine" in entry):
            self.layout, self._entry, self._datasets = "ptychosteer", entry, []  # ours, without frames (e.g. every
            return  # one quarantined): its series headers and quarantine are what a user needs to see
        if entry is None or "data" not in entry:
            self._file.close()
            raise ValueError(f"{path}: no /entry/data group: not a ptychosteer recording or an EIGER master file")
        self.layout = "ptychosteer" if "data" in entry["data"] else "eiger"
        self._entry = entry
        self._datasets = [entry["data"]["data"]] if self.layout == "ptychosteer" else _eiger_data(entry)
        if not self._datasets:
            self._file.close()
            raise ValueError(f"{path}: /entry/data holds no frames (no 'data' or 'data_NNNNNN' datasets)")

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __len__(self) -> int:
        return sum(ds.shape[0] for ds in self._datasets)

    def complete(self) -> int:
        """Frames whose every column is on disk: while the ingest is still writing (another process, HDF5
        without SWMR), the datasets of a block grow one after another and a reader can see them at different
        lengths; the first ``complete()`` frames are whole in all of them."""
        data = self._entry.get("data", {})
        names = [n for n in ("series", "frame_id", "position_m", "position_px", "labelled") if n in data]
        label = self._entry.get("label")
        lengths = [len(self), *(data[n].shape[0] for n in names),
                   *((label[n].shape[0] for n in ("amplitude", "phase") if n in label) if label is not None else ())]
        return min(lengths)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """(height, width); () for a recording without frames."""
        return tuple(self._datasets[0].shape[1:]) if self._datasets else ()

    @property
    def dtype(self) -> np.dtype | None:
        return self._datasets[0].dtype if self._datasets else None

    def _column(self, name: str, default: float) -> np.ndarray:
        data = self._entry.get("data", {})
        return data[name][...] if name in data else np.full(len(self), default)

    def appendices(self) -> list[bytes]:
        """Each frame's image appendix as received (b"" where a frame had none)."""
        data = self._entry.get("data", {})
        if "appendix" not in data:
            return [b""] * len(self)
        return [bytes(a) for a in data["appendix"][...]]

    def series_headers(self) -> list[str]:
        """Every series the recording has a header (or an end) for, frames or not."""
        return sorted(self._entry.get("series", {}).keys(), key=lambda k: (len(k), k))

    def series_ids(self) -> np.ndarray:
        return self._column("series", 1).astype(np.int64)

    def frame_ids(self) -> np.ndarray:
        """Each frame's id within its series (its index in the recording where none was recorded)."""
        ids = self._column("frame_id", -1).astype(np.int64)
        return np.where(ids >= 0, ids, np.arange(len(ids)))

    def labelled(self) -> np.ndarray:
        """Whether each frame carries a label (simulation's ground truth)."""
        return self._column("labelled", 0).astype(bool)

    def ended_series(self) -> set[int]:
        """Series whose end the ingest recorded (``dseries_end`` or an implicit end): complete on disk."""
        groups = self._entry.get("series", {})
        return {int(k) for k, g in groups.items() if "frames" in g.attrs}

    def series_config(self, series: int) -> dict[str, Any]:
        group = self._entry.get("series", {}).get(str(series))
        return json.loads(group.attrs["config"]) if group is not None and group.attrs.get("config") else {}

    def series_tables(self, series: int) -> dict[str, np.ndarray]:
        """A series header's tables (flatfield, pixelmask, countrate_table; header_detail all or stream v2)."""
        group = self._entry.get("series", {}).get(str(series))
        if group is None:
            return {}
        return {name: group[name][...] for name in group if isinstance(group[name], h5py.Dataset)}

    def detector_series(self, series: int) -> int:
        """The detector's own id of a recorded series (different where a re-armed detector reused an id and the
        ingest recorded the arming apart)."""
        group = self._entry.get("series", {}).get(str(series))
        return int(group.attrs.get("detector_series", series)) if group is not None else series

    def quarantine(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for group in self._entry.get("quarantine", {}).values():
            kinds[group.attrs["kind"]] = kinds.get(group.attrs["kind"], 0) + 1
        return kinds

    def frames(self, chunk: int = 256, indices: np.ndarray | None = None) -> Iterator[RecordedFrame]:
        """Every frame in order, or only those at ``indices`` (sorted; chunks without one are not read)."""
        if indices is not None:
            yield from self._frames_at(np.asarray(indices, np.int64), chunk)
            return
        series, ids = self.series_ids(), self._column("frame_id", -1).astype(np.int64)
        pos, pos_px = self._positions("position_m"), self._positions("position_px")
        label = self._entry.get("label")
        labelled_all = self._column("labelled", 0).astype(bool)
        index = 0
        for ds in self._datasets:
            for start in range(0, ds.shape[0], chunk):
                images = self._read(ds, np.arange(start, min(start + chunk, ds.shape[0])), index - start)
                stop = index + len(images)
                amp = label["amplitude"][index:stop] if label is not None else None
                phase = label["phase"][index:stop] if label is not None else None
                for k, image in enumerate(images):
                    i = index + k
                    if image is None:  # unreadable (counted in self.unreadable)
                        continue
                    has = label is not None and labelled_all[i]
                    yield RecordedFrame(i, int(series[i]), int(ids[i]) if ids[i] >= 0 else i, image, _opt(pos[i]),
                                        _opt(pos_px[i]), amp[k] if has else None, phase[k] if has else None)
                index = stop

    def _frames_at(self, indices: np.ndarray, chunk: int) -> Iterator[RecordedFrame]:
        if not len(indices):  # nothing asked (a file whose first block is not written yet has no dataset to open)
            return
        if self.layout != "ptychosteer":
            wanted = set(indices.tolist())
            yield from (f for f in self.frames(chunk) if f.index in wanted)
            return
        series, ids = self.series_ids(), self.frame_ids()
        pos, pos_px = self._positions("position_m"), self._positions("position_px")
        label = self._entry.get("label")
        labelled = self._column("labelled", 0).astype(bool)
        ds = self._datasets[0]
        for start in range(0, len(indices), chunk):
            idx = indices[start:start + chunk]
            images = self._read(ds, idx)
            amp = label["amplitude"][idx] if label is not None else None
            phase = label["phase"][idx] if label is not None else None
            for k, i in enumerate(idx):
                if images[k] is None:
                    continue
                has = label is not None and labelled[i]
                yield RecordedFrame(int(i), int(series[i]), int(ids[i]), images[k], _opt(pos[i]), _opt(pos_px[i]),
                                    amp[k] if has else None, phase[k] if has else None)

    def _read(self, ds: h5py.Dataset, idx: np.ndarray, offset: int = 0) -> list[np.ndarray | None] | np.ndarray:
        """Frames ``idx`` of ``ds`` (increasing), in one read; where that fails (a chunk whose bitshuffle-LZ4
        content does not decode, written as the detector sent it), frame by frame: an unreadable frame is None,
        logged (as frame ``offset + i`` of the recording) and counted in ``unreadable``; the others are read."""
        if len(idx) == 0:
            return []
        try:
            if len(idx) == idx[-1] - idx[0] + 1:
                return ds[int(idx[0]):int(idx[-1]) + 1]
            return ds[idx]  # h5py fancy indexing: one read per chunk of frames
        except OSError:
            pass
        out: list[np.ndarray | None] = []
        for i in idx:
            try:
                out.append(ds[int(i)])
            except OSError as exc:
                self.unreadable += 1
                logger.warning("%s: frame %d does not decode (%s): skipped", self.path, int(i) + offset,
                               str(exc)[:120])
                out.append(None)
        return out

    def _positions(self, name: str) -> np.ndarray:
        data = self._entry.get("data", {})
        return data[name][...] if name in data else np.full((len(self), 2), np.nan)


def _opt(pair: np.ndarray) -> tuple[float, float] | None:
    return None if np.isnan(pair).any() else (float(pair[0]), float(pair[1]))
