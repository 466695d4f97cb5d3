"""The labeler stage: labels from iterative reconstructions, for a detector that sends no ground truth.

A real detector sends diffraction frames and positions, never amplitude and phase. The edge-ptychography
practice (Babu et al. 2023) is to reconstruct each scan iteratively as it completes and train the network on
patches of that reconstruction. This stage does exactly that, beside the ingest: it watches the recording, and
for each series whose end is recorded (complete on disk) and that it has not labelled, it

1. reconstructs the series with :mod:`trainer.iterative` (the probe and flux from the series header, clipped and
   masked pixels not trusted);
2. cuts the reconstructed object at every frame's position into an (amplitude, phase) patch, with the one global
   phase that the reconstruction cannot know fixed by the vacuum reference (the most transmitting part is 0);
3. sends every frame with its label to the trainers (PUSH, round-robin, the internal frame format) and a
   ``series_end`` notice, in series order, while the detector measures the next series. With
   ``notice_endpoint``, the series' header and end also go to every trainer rank (:mod:`streamer.notices`).

The trainers connect to this stage instead of the ingest (``train --stream LABELER``) and treat its frames like
the ingest's: a task per series, closed by its ``series_end``. Nothing here reads the simulated ground truth: labels come only from the
measured frames (in simulation the recording's own labels, if any, are ignored). The reconstruction's data
error is reported per series in the status file, and in simulation its error against the truth is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zmq

from streamer.dectris import ImageFrame
from streamer.frames import encode_frame, encode_series_end, encode_series_start
from streamer.hdf5 import Recording
from streamer.notices import NoticePublisher
from trainer.iterative import EngineConfig, ScanInput, load_scan, reconstruct

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LabelerConfig:
    recording: str  # the ingest's recording, watched
    endpoint: str = "tcp://127.0.0.1:5565"  # bound PUSH: the trainers connect here (train --stream)
    notice_endpoint: str = ""  # bound XPUB: series notices for every rank (train --notices); "" disables
    engine: EngineConfig = EngineConfig(algorithm="lsqml", iterations=50)
    poll_s: float = 1.0  # how often the recording is looked at
    max_series: int = 0  # stop after labelling this many series (0: until stopped or idle)
    idle_timeout_s: float = 0.0  # stop when no new series ended for this long (0: never)
    status_path: str = ""
    send_timeout_s: float = 60.0  # a trainer that takes nothing for this long: the rest of the series is dropped
    threads: int = 0  # intra-op threads of CPU reconstructions (0: torch's default, one per core)

    def __post_init__(self) -> None:
        if not self.recording:
            raise ValueError("the labeler needs the recording to watch")
        if self.poll_s <= 0 or self.max_series < 0 or self.idle_timeout_s < 0 or self.send_timeout_s <= 0 \
                or self.threads < 0:
            raise ValueError("poll_s and send_timeout_s must be > 0, max_series, idle_timeout_s and threads >= 0")


def use_threads(config: LabelerConfig) -> None:
    """The stage process's intra-op threads for CPU reconstructions (process-wide: set by the stage's entry points,
    not by constructing a :class:`Labeler`). Beside busy trainer ranks on the same cores, one thread: with two, the
    OpenMP teams of a 32×32 LSQML reconstruction waited on each other and it took 32-36 s instead of 2.4 s (one
    thread alone: 2.5 s; 2-core VM, 2026-12-03)."""
    if config.threads and torch.device(config.engine.device).type == "cpu":
        torch.set_num_threads(config.threads)


def labels_from(obj: np.ndarray, scan: ScanInput, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amplitude, phase) patches (n, N, N) of the reconstructed ``obj`` at the frames' positions. The data cannot
    say the object's global phase; the convention is the vacuum reference: the most transmitting part of the
    well-covered object (its top 2 % in amplitude: vacuum, or the thinnest sample) has phase 0. Where phase and
    absorption both grow with the projected thickness, as in the simulator, that is the true phase."""
    region = coverage >= 0.25 * coverage.max()
    amp = np.abs(obj[region])
    bright = obj[region][amp >= np.quantile(amp, 0.98)]
    obj = obj * np.exp(-1j * np.angle(np.sum(bright)))
    size = scan.frames.shape[1]
    pos = np.round(scan.positions).astype(np.int64)
    patches = np.stack([obj[y:y + size, x:x + size] for y, x in pos])
    return np.abs(patches).astype(np.float32), np.angle(patches).astype(np.float32)


class Labeler:
    def __init__(self, config: LabelerConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        try:
            self._sock.bind(config.endpoint)
        except zmq.ZMQError:
            self._sock.close(linger=0)
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._notices: NoticePublisher | None = None
        if config.notice_endpoint:
            try:
                self._notices = NoticePublisher(self._ctx, config.notice_endpoint)
            except zmq.ZMQError:
                self._sock.close(linger=0)
                raise
        self.notice_endpoint = self._notices.endpoint if self._notices is not None else ""
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.done: list[int] = []
        self.counters: dict[str, Any] = {"frames_sent": 0, "frames_dropped": 0, "read_errors": 0,
                                         "trainer_peers": 0, "series": {}}
        self._stop = threading.Event()
        self._write_status()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._sock.close(linger=int(self.config.send_timeout_s * 1000))
        if self._notices is not None:
            self._notices.close(int(self.config.send_timeout_s * 1000))
            self._notices = None

    def trainer_peers(self) -> int:
        """Trainer ranks connected now (from the socket monitor)."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and not self._monitor.closed and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            self.counters["trainer_peers"] += 1 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else -1
        return self.counters["trainer_peers"]

    def pending(self) -> list[int]:
        """Series complete on disk and not labelled yet, in order ([] while the recording cannot be read)."""
        from trainer.catchup import plan

        p = plan(self.config.recording, self.done)
        if p.error:
            self.counters["read_errors"] += 1
            logger.debug("labeler: the recording cannot be read now (%s); next look in %.1f s", p.error,
                         self.config.poll_s)
            return []
        return sorted(p.ended)

    def label(self, series: int) -> dict[str, Any]:
        """Reconstruct one series and send its frames with their labels; returns what it did."""
        t0 = time.perf_counter()
        scan = load_scan(self.config.recording, series)
        result = reconstruct(scan.frames, scan.positions, scan.probe, scan.object_shape, photons=scan.photons,
                             valid=scan.valid, config=self.config.engine)
        amplitude, phase = labels_from(result.obj, scan, result.coverage)
        with Recording(self.config.recording) as rec:  # the header, for the trainers to cut frames to the model
            notice = encode_series_start(series, rec.series_config(series), rec.detector_series(series),
                                         rec.series_tables(series))
        if self._notices is not None:  # to every rank
            self._notices.serve()
            self._notices.start(series, notice)
        for _ in range(max(1, self.trainer_peers())):  # one per connected rank (PUSH deals them round-robin)
            self._send(notice)
        sent = 0
        for i, image in enumerate(scan.frames):
            frame = ImageFrame(series=series, frame=i, image=image, encoding="<",
                               position_px=tuple(scan.positions[i]), amplitude=amplitude[i], phase=phase[i])
            if not self._send(encode_frame(frame)):
                break
            sent += 1
        end = encode_series_end(series, len(scan.frames))
        self._send(end)
        if self._notices is not None:
            self._notices.end(series, end)
        info = {"frames": len(scan.frames), "sent": sent, "data_error": float(result.data_error[-1]),
                "reconstruct_s": round(result.seconds, 2), "total_s": round(time.perf_counter() - t0, 2),
                "photons_source": scan.photons_source}
        self.counters["frames_sent"] += sent
        self.counters["frames_dropped"] += len(scan.frames) - sent
        self.counters["series"][str(series)] = info
        logger.info("labeler: series %d labelled from its reconstruction (%s, %d iterations): %s", series,
                    self.config.engine.algorithm, self.config.engine.iterations, info)
        return info

    def _send(self, parts: list[Any]) -> bool:
        """Send, waiting for a trainer to take it up to ``send_timeout_s`` (labels are few and precious)."""
        deadline = time.monotonic() + self.config.send_timeout_s
        while not self._stop.is_set():
            try:
                self._sock.send_multipart(parts, zmq.NOBLOCK)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False
                self._sock.poll(100, zmq.POLLOUT)
        return False

    def run(self) -> dict[str, Any]:
        c = self.config
        last_new = time.monotonic()
        while not self._stop.is_set():
            todo = self.pending()
            for series in todo:
                if self._stop.is_set():
                    break
                try:
                    self.label(series)
                except ValueError as exc:  # a series the engine cannot use (no probe, no positions, ...)
                    logger.warning("labeler: series %d cannot be labelled: %s", series, exc)
                    self.counters["series"][str(series)] = {"error": str(exc)}
                except (OSError, KeyError, IndexError) as exc:  # a torn read of a file being written: next look
                    self.counters["read_errors"] += 1
                    logger.info("labeler: series %d not readable now (%s); trying again", series, exc)
                    break
                self.done.append(series)
                last_new = time.monotonic()
                self._write_status()
                if c.max_series and len(self.done) >= c.max_series:
                    return self._finish()
            if c.idle_timeout_s and time.monotonic() - last_new >= c.idle_timeout_s:
                logger.info("labeler: no new series for %.0f s: stopping", c.idle_timeout_s)
                break
            self._stop.wait(c.poll_s)  # the recording is polled: nothing signals a series end on disk
            self._write_status()
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        self._write_status(done=True)
        return {"labelled": self.done, **self.counters}

    def _write_status(self, done: bool = False) -> None:
        self.trainer_peers()
        if self._notices is not None:
            self.counters["notice_subscribers"] = self._notices.serve()
        if self.config.status_path:
            from streamer.status import write_status

            write_status(self.config.status_path, "labeler", {"endpoint": self.endpoint,
                                                              "notice_endpoint": self.notice_endpoint,
                                                              "labelled": self.done,
                                                              "threads": torch.get_num_threads(),
                                                              "done": done, **self.counters})


def run(config: LabelerConfig) -> dict[str, Any]:
    """Stage entry point: label series as they complete until ``max_series``, idle, or a stop."""
    use_threads(config)
    labeler = Labeler(config)
    try:
        return labeler.run()
    except KeyboardInterrupt:
        return labeler._finish()
    finally:
        labeler.close()
