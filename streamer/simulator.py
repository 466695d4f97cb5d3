"""The detector simulator: a far-field ptychography experiment on a bound PUSH socket speaking SIMPLON stream v1
(or, with ``protocol="v2"``, stream v2: CBOR, one channel ``threshold_1``).

:class:`Detector` owns the socket and the wire (series header, images, series end, pacing, progress);
a *source* yields scans of frames: :class:`SimulatedSource` (physics in :mod:`streamer.physics`) or
:class:`streamer.replay.FileSource` (a recorded HDF5 file).

The simulator also has a small control interface for closed-loop steering, safe to call from any thread:
:meth:`Detector.stop_scan`, :meth:`Detector.add_positions` and :meth:`Detector.set_exposure`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import zmq

from streamer import dectris, stream2
from streamer.compression import encode, encoding_for
from streamer.config import SimulatorConfig
from streamer.physics import (ScanData, detect, far_field_intensity, make_object, make_probe, object_pixel_size_m,
                              patches, scan_positions)

logger = logging.getLogger(__name__)

_CHUNK = 64  # frames computed per vectorised FFT


@dataclass(frozen=True)
class SimFrame:
    image: np.ndarray
    position_px: tuple[float, float] | None = None
    position_m: tuple[float, float] | None = None
    amplitude: np.ndarray | None = None
    phase: np.ndarray | None = None


@dataclass(frozen=True)
class Progress:
    series: int
    frames_sent: int
    frames_in_series: int
    elapsed_s: float

    @property
    def rate_hz(self) -> float:
        return self.frames_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Control:
    """Thread-safe commands from steering to the measurement loop."""

    def __init__(self, follow_wait_s: float = 0.0) -> None:
        self._stop_scan = threading.Event()
        self._positions: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._exposure = 1.0
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self.follow_wait_s = follow_wait_s  # > 0: at the end of a scan, wait this long for steering
        self.actions: list[str] = []  # what the detector did on request, for the log and tests

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def stop_scan(self) -> None:
        self._stop_scan.set()
        self._notify()

    def add_positions(self, positions_px: np.ndarray) -> None:
        self._positions.put(np.asarray(positions_px, dtype=np.int64).reshape(-1, 2))
        self._notify()

    def wait_for_steering(self) -> None:
        """End of the planned positions: give steering ``follow_wait_s`` to ask for more or to stop."""
        if self.follow_wait_s <= 0:
            return
        with self._wake:
            if self._stop_scan.is_set() or not self._positions.empty():
                return
            self._wake.wait(self.follow_wait_s)

    def set_exposure(self, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"exposure factor must be > 0, got {factor}")
        with self._lock:
            self._exposure = float(factor)

    @property
    def exposure(self) -> float:
        with self._lock:
            return self._exposure

    def take_stop(self) -> bool:
        stopped = self._stop_scan.is_set()
        self._stop_scan.clear()
        return stopped

    def take_positions(self) -> np.ndarray | None:
        extra = []
        while True:
            try:
                extra.append(self._positions.get_nowait())
            except queue.Empty:
                break
        return np.concatenate(extra) if extra else None


def follow(detector: "Detector", endpoint: str, stop: threading.Event, context: zmq.Context | None = None,
           server_key: str = "", client_cert: str = "") -> None:
    """Act on steering decisions (``ptychosteer simulate --follow``): stop, rescan, exposure; every action logged.

    Decisions are JSON on a SUB socket (see ``steering.protocol``); only the current series is acted on, and each
    decision (its steering session and sequence number) at most once: the feed repeats its cached state to every
    subscriber whenever one joins.
    """
    acted: set[tuple[str, int]] = set()
    sock = (context or zmq.Context.instance()).socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"steer.")
    if server_key:  # a feed on CURVE (ptychosteer steer --curve-secret): this follower's keys
        from streamer.netsec import curve_client

        curve_client(sock, server_key, client_cert)
    sock.connect(endpoint)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            parts = sock.recv_multipart()
            try:
                d = json.loads(parts[-1])
                if not isinstance(d, dict):
                    raise ValueError(f"not a JSON object: {str(d)[:100]}")
                own = d.get("detector_series")  # where the ingest recorded a re-arming under another id
                kind, scan = d["kind"], int(own if own is not None else d["scan"])
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring malformed steering message: %s", exc)
                continue
            if scan != detector.current_series or kind == "continue":
                continue
            key = (str(d.get("session", "")), d.get("seq") if isinstance(d.get("seq"), int) else -1)
            if key[1] >= 0 and key in acted:
                logger.debug("decision %s already acted on: a repeat of the feed's cached state", key)
                continue
            acted.add(key)
            action = _act(detector, d)
            if action:
                detector.control.actions.append(f"{kind}->{action}")
                logger.info("steering decision %s (seq %s, %s) → %s", kind, d.get("seq"), d.get("reason"), action)
    finally:
        sock.close(linger=0)


def _act(detector: "Detector", d: dict) -> str:
    if d["kind"] == "stop_scan":
        detector.stop_scan()
        return "scan stopped"
    if d["kind"] == "rescan_region":
        positions = np.asarray(d.get("positions_px") or [], dtype=np.int64).reshape(-1, 2)
        detector.add_positions(positions)
        return f"{len(positions)} positions queued"
    if d["kind"] == "adjust_exposure":
        factor = float(d.get("exposure_factor") or 1.0)
        detector.set_exposure(detector.control.exposure * factor)
        return f"exposure x{factor:g} (now {detector.control.exposure:g})"
    return ""


class Source(Protocol):
    def series_config(self, scan: int) -> dict: ...
    def scans(self, control: Control) -> Iterator[Iterator[SimFrame]]: ...


def make_scan(config: SimulatorConfig, index: int) -> ScanData:
    """Scan ``index`` of a simulated run: the same config and index always give the same object and positions."""
    rng = np.random.default_rng([config.seed, index])
    family = config.families[index % len(config.families)]
    n = config.object_size_px
    obj = make_object(family, (n, n), rng)
    probe = make_probe(config.frame_size, config.probe_diameter, config.probe_curvature_rad)
    pos = scan_positions(config.scan_pattern, (n, n), config.frame_size, config.step_px)
    pixel = object_pixel_size_m(config.energy_eV, config.detector_distance_m, config.detector_pixel_size_m,
                                config.frame_size)
    return ScanData(index=index, family=family, obj=obj, probe=probe, positions=pos, pixel_size_m=pixel)


class SimulatedSource:
    """Scans of simulated frames (Poisson noise, saturation), labelled with the ground-truth patch."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._cached: dict[int, ScanData] = {}

    def scan(self, index: int) -> ScanData:
        if index not in self._cached:
            self._cached = {index: make_scan(self.config, index)}  # keep only the scan being measured
        return self._cached[index]

    def series_config(self, scan: int) -> dict:
        c = self.config
        data = self.scan(scan)
        return {
            "x_pixels_in_detector": c.frame_size, "y_pixels_in_detector": c.frame_size,
            "x_pixel_size": c.detector_pixel_size_m, "y_pixel_size": c.detector_pixel_size_m,
            "detector_distance": c.detector_distance_m, "photon_energy": c.energy_eV,
            "wavelength": 1e10 * 1.239841984e-6 / c.energy_eV,  # Ångström, as the SIMPLON API reports it
            "nimages": int(len(data.positions)), "ntrigger": 1, "count_time": 1.0 / c.rate_hz if c.rate_hz else 1e-3,
            "bit_depth_image": c.bit_depth, "countrate_correction_count_cutoff": c.saturation,
            "description": "ptychosteer detector simulator",
            "ptychosteer": {"family": data.family, "scan_index": scan, "object_pixel_size_m": data.pixel_size_m,
                            "object_shape": list(data.obj.shape), "scan_pattern": c.scan_pattern,
                            "probe_diameter_px": c.probe_diameter, "probe_curvature_rad": c.probe_curvature_rad,
                            "overlap": c.overlap,
                            "photons_per_frame": c.photons_per_frame},  # the incident flux, at series start
        }

    def scans(self, control: Control) -> Iterator[Iterator[SimFrame]]:
        for index in range(self.config.scans):
            yield self._frames(self.scan(index), control)

    def _frames(self, data: ScanData, control: Control) -> Iterator[SimFrame]:
        c = self.config
        rng = np.random.default_rng([c.seed, data.index, 1])
        pending = [data.positions]
        while pending:
            positions = pending.pop(0)
            for start in range(0, len(positions), _CHUNK):
                if control.take_stop():
                    logger.info("scan %d stopped by control after steering request", data.index)
                    return
                chunk = positions[start : start + _CHUNK]
                obj_patches = patches(data.obj, chunk, c.frame_size)
                images = detect(far_field_intensity(data.probe, obj_patches), c.photons_per_frame * control.exposure,
                                rng, c.saturation, c.dtype)
                amp, phase = np.abs(obj_patches).astype(np.float32), np.angle(obj_patches).astype(np.float32)
                for i, pos in enumerate(chunk):
                    yield SimFrame(image=images[i], position_px=(float(pos[0]), float(pos[1])),
                                   position_m=data.position_m(pos), amplitude=amp[i], phase=phase[i])
                extra = control.take_positions()
                if extra is not None:
                    pending.append(np.clip(extra, 0, c.object_size_px - c.frame_size))
            if not pending:
                control.wait_for_steering()  # coarse-then-refine: steering may add positions or stop the scan
                if control.take_stop():
                    logger.info("scan %d stopped by steering after its positions", data.index)
                    return
                extra = control.take_positions()
                if extra is not None:
                    pending.append(np.clip(extra, 0, c.object_size_px - c.frame_size))


# stream v2 names its compression algorithms (tag 56500) without the v1 wire suffix
_V2_COMPRESSION = {"raw": "none", "none": "none", "<": "none", "lz4": "lz4", "lz4<": "lz4", "bslz4": "bslz4",
                   "bs8-lz4<": "bslz4", "bs16-lz4<": "bslz4", "bs32-lz4<": "bslz4"}


class Detector:
    """Owns the bound PUSH socket; sends each scan of a source as one SIMPLON series."""

    def __init__(self, config: SimulatorConfig, source: Source | None = None, *, context: zmq.Context | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self.source = source or SimulatedSource(config)
        self.control = Control(config.follow_wait_s)
        self._own_ctx = context is None  # close() terminates an own context: the queued tail gets delivered
        self._ctx = context or zmq.Context()
        self._clock = clock
        self._sock: zmq.Socket | None = None
        self.endpoint = ""
        self.frames_sent = 0
        self.current_series = -1
        self.series_sent: list[int] = []
        self.unsent = 0  # messages given up after a stop because no receiver took them (``_send``)
        self._stopping = threading.Event()
        self._progress: Callable[[Progress], None] | None = None
        self._progress_interval_s = 1.0
        self._last_progress = 0.0

    def __enter__(self) -> "Detector":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> str:
        """Bind; returns the actual endpoint (port 0 or ``*`` in the config resolves to a free port)."""
        if self._sock is not None:  # already bound (start() then ``with``)
            return self.endpoint
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        try:
            sock.bind(self.config.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)  # an open socket would block the context's termination forever
            raise
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info("detector simulator bound at %s", self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        """End the measurement (thread- and signal-safe): the current series is closed with its dseries_end, as a
        detector that is disarmed does, and no further scan starts. A message no receiver takes within
        ``linger_ms`` after the stop is given up (``unsent``)."""
        self._stopping.set()
        self.control.stop_scan()

    # control interface (thread-safe)
    def stop_scan(self) -> None:
        self.control.stop_scan()

    def add_positions(self, positions_px: np.ndarray) -> None:
        self.control.add_positions(positions_px)

    def set_exposure(self, factor: float) -> None:
        self.control.set_exposure(factor)

    def run(self, progress: Callable[[Progress], None] | None = None, progress_interval_s: float = 1.0) -> int:
        """Send every scan of the source; returns the number of frames sent."""
        if self._sock is None:
            self.start()
        t0 = self._clock()
        self._progress, self._progress_interval_s, self._last_progress = progress, progress_interval_s, t0
        for offset, frames in enumerate(self.source.scans(self.control)):
            if self._stopping.is_set():
                break
            series = self.config.first_series + offset
            n = self._send_series(series, offset, frames, t0)
            self.series_sent.append(series)
            logger.info("series %d sent: %d frames", series, n)
        if progress:
            progress(Progress(self.config.first_series + len(self.series_sent) - 1, self.frames_sent, 0,
                              self._clock() - t0))
        return self.frames_sent

    def _send_series(self, series: int, scan: int, frames: Iterator[SimFrame], t0: float) -> int:
        c = self.config
        self.current_series = series
        v2 = c.protocol == "v2"
        config = self.source.series_config(scan)
        if not v2:  # the arming's date, as the detector's configuration reports it (a v2 start message carries its
            # own arm_date): what tells this series from one of the same id in an old recording (foreign_recording)
            config["data_collection_date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        if v2:  # header_detail all sends the (unit) flatfield and (empty) pixel mask, as v1 does
            h, w = config["y_pixels_in_detector"], config["x_pixels_in_detector"]
            tables = {"flatfield": np.ones((h, w)), "pixelmask": np.zeros((h, w))} if c.header_detail == "all" else None
            sent = self._send(stream2.start_message(series, config, tables=tables))
        else:
            sent = self._send(dectris.header_message(series, config, c.header_detail))
        if not sent:
            return 0
        count = 0
        period = 1.0 / c.rate_hz if c.rate_hz else 0.0
        start_ns = time.time_ns()
        for frame in frames:
            if period:
                self._pace(t0 + self.frames_sent * period)
            if self._stopping.is_set():
                break
            image = frame.image
            now_ns = time.time_ns() - start_ns
            times = (now_ns, now_ns + int(period * 1e9), int(period * 1e9))
            pos_m = frame.position_m if c.send_positions else None
            pos_px = frame.position_px if c.send_positions else None
            amplitude = frame.amplitude if c.send_labels else None
            phase = frame.phase if c.send_labels else None
            if v2:
                message = stream2.image_message(series, count, {"threshold_1": image},
                                                compression=_V2_COMPRESSION[c.encoding], times_ns=times,
                                                position_m=pos_m, position_px=pos_px, amplitude=amplitude,
                                                phase=phase)
            else:
                wire = encoding_for(image.dtype, c.encoding)  # a replayed file may hold another pixel type
                message = dectris.image_message(series, count, encode(image, wire), image.shape, image.dtype.name,
                                                wire, times_ns=times, position_m=pos_m, position_px=pos_px,
                                                amplitude=amplitude, phase=phase)
            if not self._send(message, copy=False):
                return count
            count += 1
            self.frames_sent += 1
            if self._progress and count % 32 == 0:
                self._report(series, count, t0)
        self._send(stream2.end_message(series) if v2 else dectris.end_message(series))
        return count

    def _send(self, message: bytes | list, copy: bool = True) -> bool:
        """Send one message (a v2 CBOR message or v1 multipart). While the receiver takes none (its queue full, or
        none connected) this waits; after a stop it waits at most ``linger_ms`` more, then gives up (False: the
        receiver is gone, and a blocking send would keep a stopped simulator alive for good)."""
        sock = self._sock
        assert sock is not None
        send = sock.send_multipart if isinstance(message, list) else sock.send
        give_up = None
        while True:
            try:
                send(message, flags=zmq.NOBLOCK, copy=copy)
                return True
            except zmq.Again:
                pass
            if self._stopping.is_set():
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.config.linger_ms / 1000
                if now >= give_up:
                    self.unsent += 1
                    logger.warning("stopping: the receiver took no message for %d ms; series %d ends unsent",
                                   self.config.linger_ms, self.current_series)
                    return False
            sock.poll(100, zmq.POLLOUT)  # until the receiver takes messages again, or 100 ms to look at a stop

    def _report(self, series: int, count: int, t0: float) -> None:
        now = self._clock()
        if now - self._last_progress >= self._progress_interval_s:
            self._last_progress = now
            self._progress(Progress(series, self.frames_sent, count, now - t0))

    def _pace(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay > 0:
            self._stopping.wait(delay)  # pacing a frame rate (a stop cuts it short), not synchronisation

    def close(self) -> None:
        """Close the socket; frames still queued are delivered for up to ``linger_ms`` before this returns."""
        if self._sock is not None:
            self._sock.close(linger=self.config.linger_ms)
            self._sock = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()


def run(config: SimulatorConfig, source: Source | None = None,
        progress: Callable[[Progress], None] | None = None) -> int:
    """Stage entry point: bind, send every scan, close (waiting up to ``linger_ms`` for the receiver)."""
    with Detector(config, source) as detector:
        return detector.run(progress)


def heldout_frames(config: SimulatorConfig, scan: int, count: int, seed: int = 12345) -> tuple[np.ndarray, ...]:
    """An evaluation set for scan ``scan``: same object and probe, ``count`` positions *not* on the scan grid.

    Returns (images, amplitude, phase, positions_px). Positions are drawn uniformly over the object and any that
    coincide with a training position are redrawn; photon noise has its own seed.
    """
    data = make_scan(config, scan)
    rng = np.random.default_rng([config.seed, scan, seed])
    taken = {tuple(p) for p in data.positions.tolist()}
    span = config.object_size_px - config.frame_size
    picked: list[tuple[int, int]] = []
    while len(picked) < count:
        p = (int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1)))
        if p not in taken:
            picked.append(p)
            taken.add(p)
    pos = np.asarray(picked, np.int64)
    obj_patches = patches(data.obj, pos, config.frame_size)
    images = detect(far_field_intensity(data.probe, obj_patches), config.photons_per_frame, rng, config.saturation,
                    config.dtype)
    return images, np.abs(obj_patches).astype(np.float32), np.angle(obj_patches).astype(np.float32), pos
