"""The ingest: receive SIMPLON stream v1 or v2 from a detector, validate, persist every frame, fan out.

One receive thread does: PULL (connect to the detector's PUSH) → parse/validate → append to the current
HDF5 block (handed to :class:`streamer.hdf5.RecordingWriter`'s thread when full or after ``flush_interval_s``) →
non-blocking sends to the trainers' PUSH (round-robin) and the live PUB. A trainer that cannot take a frame makes
it *dropped for training*, never blocks the loop, and the frame is on disk all the same. Series notices (a header
with its mask and flatfield, an end) also go to every trainer rank on ``notice_endpoint`` (:mod:`streamer.notices`),
so no rank prepares frames without their header.

Rejected messages (malformed, out of order, duplicate frame, image without series header, ...) are logged once
per kind, counted in ``malformed[kind]`` and kept raw under ``/entry/quarantine``; the loop goes on.

Each arming of the detector is its own series in the recording and downstream, and the recorded ids increase in
arming order (steering and the trainers rely on it: a newer series ends the older open ones): a series id the
detector used before, or one below an id already given (a restarted EIGER numbers from 1 again), is given the next
id above all given so far, with the detector's own id kept as ``detector_series`` (counted as ``rearmed``).
An ingest restarted after a detector restart continues the earlier recording's numbering (``first_series``,
``ingest --after``), so that trainers and steering that outlive the restart never see one id for two armings.

A bitshuffle-LZ4 frame (v1 ``bs16/bs32-lz4<``, v2 ``bslz4``) is not decoded here when the recording is
bitshuffle-LZ4 compressed (the default): its framing is checked, the blob is written as the frame's HDF5 chunk
as it came (direct chunk write) and forwarded compressed; trainers and steering decode it in their processes.
A blob whose framing is intact but whose LZ4 content is corrupt is then recorded as received and counted by
the consumer that fails to decode it.

Hot path: parts stay zmq.Frames (one receive call per part), the ``dimage_d`` descriptor is validated once per
distinct value, and a raw (``<``) frame is forwarded as the received buffers, which ZeroMQ shares without a copy.
:meth:`Ingest.close` terminates the ingest's own ZeroMQ context, so frames still queued for trainers are
delivered (for up to ``close_linger_ms``) before the process can exit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import zmq

from streamer import dectris, stream2
from streamer.config import IngestConfig
from streamer.frames import encode_frame, encode_series_end, encode_series_start, recv_message
from streamer.hdf5 import FrameBlock, RecordingWriter
from streamer.notices import NoticePublisher

logger = logging.getLogger(__name__)
QUARANTINE_HEAD_BYTES = 1024  # of each part, for an oversized message or one past the quarantine budget


@dataclass
class IngestStats:
    messages: int = 0  # every multipart message received
    received: int = 0  # valid images received
    forwarded: int = 0  # images taken by a trainer socket
    published: int = 0  # images handed to the live PUB
    dropped: int = 0  # images no trainer could take (still persisted)
    series_started: int = 0
    series_ended: int = 0
    trainer_peers: int = 0
    live_subscribers: int = 0
    notice_subscribers: int = 0  # trainer ranks subscribed to the series notices
    notices_dropped: int = 0  # series_end notices no trainer could take
    quarantine_truncated: int = 0  # quarantined past the byte budget: only each part's head was kept
    missing_frames: int = 0  # frames of ended series that never arrived (per series in the recording)
    short_of_nimages: int = 0  # frames fewer than the headers announced, after the last received (stopped early?)
    rearmed: int = 0  # series ids the detector used again (a restart): recorded under new ids, apart
    malformed: Counter = field(default_factory=Counter)

    def as_dict(self, persisted: int, quarantined: int) -> dict[str, Any]:
        return {"messages": self.messages, "received": self.received, "persisted": persisted,
                "forwarded": self.forwarded, "published": self.published, "dropped": self.dropped,
                "malformed": sum(self.malformed.values()), "malformed_by_kind": dict(self.malformed),
                "quarantined": quarantined, "series_started": self.series_started, "series_ended": self.series_ended,
                "trainer_peers": self.trainer_peers, "live_subscribers": self.live_subscribers,
                "notice_subscribers": self.notice_subscribers,
                "notices_dropped": self.notices_dropped, "quarantine_truncated": self.quarantine_truncated,
                "missing_frames": self.missing_frames, "short_of_nimages": self.short_of_nimages,
                "rearmed": self.rearmed}


class _SeriesTracker:
    """Which series are open and which frame ids each has seen (duplicates, images without header, gaps)."""

    def __init__(self) -> None:
        self.open: dict[int, set[int]] = {}
        self.announced: dict[int, int] = {}  # series → nimages × ntrigger of its header (0: not said)

    def begin(self, series: int, config: dict | None = None) -> None:
        self.open[series] = set()
        n, t = (config or {}).get("nimages"), (config or {}).get("ntrigger", 1)
        self.announced[series] = n * t if isinstance(n, int) and isinstance(t, int) and n > 0 and t > 0 else 0

    def short(self, series: int) -> int:
        """Frames fewer than the header announced (``nimages`` × ``ntrigger``), beyond the last one received: a
        scan stopped early (steering's ``stop_scan``, an operator) or its last frames lost — which of the two,
        the stream cannot tell; counted apart from ``missing``."""
        seen = self.open.get(series) or set()
        return max(0, self.announced.get(series, 0) - (max(seen) + 1 if seen else 0))

    def missing(self, series: int) -> int:
        """Frames of an open series that did not arrive: the gaps between the ids received (a detector numbers
        them consecutively). Frames lost after the last one received cannot be told from a scan stopped early
        (fewer than ``nimages`` is normal then), so they are not counted."""
        seen = self.open.get(series) or set()
        return max(seen) - min(seen) + 1 - len(seen) if seen else 0

    def check(self, series: int, frame: int) -> tuple[str, str] | None:
        seen = self.open.get(series)
        if seen is None:
            return "no_series_header", f"image {frame} of series {series} arrived without a dheader-1.0 for it"
        if frame in seen:
            return "duplicate_frame", f"frame {frame} of series {series} was already received"
        seen.add(frame)
        return None

    def end(self, series: int) -> int | None:
        seen = self.open.pop(series, None)
        return None if seen is None else len(seen)


class Ingest:
    """Use as a context manager or ``start()``/``close()``; :meth:`run` blocks until a stop condition."""

    def __init__(self, config: IngestConfig, *, context: zmq.Context | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        # an own context unless given one: close() terminates it, which is what makes libzmq deliver the frames
        # still queued for trainers (up to close_linger_ms) before the process may exit
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._clock = clock
        self.stats = IngestStats()
        self._series = _SeriesTracker()
        self._acquisition: dict[int, int] = {}  # detector series id → the id its current arming is recorded under
        self._used: set[int] = set()  # series ids given to armings so far
        self._stop = threading.Event()
        self._writer: RecordingWriter | None = None
        self._block: FrameBlock | None = None
        self._block_t0 = 0.0
        self._pull = self._train = self._live = self._monitor = None
        self._notices: NoticePublisher | None = None
        self.train_endpoint = self.live_endpoint = self.notice_endpoint = ""
        self._warned: set[str] = set()
        self._queued_quarantine = 0
        self._frame_shape: tuple[int, ...] | None = None
        self._frame_dtype: Any = None
        self._channels: tuple[str, ...] | None = None  # threshold channels beyond the first (stream v2)
        self._largest_frame_bytes = 0  # of the latest series header's detector (4 bytes per pixel)
        self._quarantine_bytes = 0
        # bitshuffle-LZ4 frames go to a bitshuffle-LZ4 recording as they came, and downstream compressed
        self._keep_chunks = config.compression == "bslz4" and config.direct_chunks

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Ingest":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        c = self.config
        if c.output_path:
            self._writer = RecordingWriter(c.output_path, c.compression, c.writer_queue_blocks,
                                           overwrite=c.overwrite)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, c.rcvhwm)
        self._pull.connect(c.detector_endpoint)
        if c.train_endpoint:
            self._train = self._bind(zmq.PUSH, c.train_endpoint, c.train_hwm)
            self.train_endpoint = self._train.getsockopt_string(zmq.LAST_ENDPOINT)
            self._monitor = self._train.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        if c.live_endpoint:  # XPUB: a PUB that also tells us how many subscribers are attached
            self._live = self._bind(zmq.XPUB, c.live_endpoint, c.live_hwm)
            self.live_endpoint = self._live.getsockopt_string(zmq.LAST_ENDPOINT)
        if c.train_endpoint and c.notice_endpoint:
            self._notices = NoticePublisher(self._ctx, c.notice_endpoint)
            self.notice_endpoint = self._notices.endpoint
        logger.info("ingest: detector %s, trainers %s (notices %s), live %s, recording %s", c.detector_endpoint,
                    self.train_endpoint or "-", self.notice_endpoint or "-", self.live_endpoint or "-",
                    c.output_path or "-")

    def _bind(self, kind: int, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, hwm)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)  # an open socket would block the context's termination forever
            raise zmq.ZMQError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from exc
        return sock

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread-safe, e.g. from a signal handler)."""
        self._stop.set()

    def live_subscribers(self) -> int:
        """Subscriptions on the live XPUB now (each subscriber usually subscribes once, to everything)."""
        if self._live is None:
            return 0
        while True:
            try:
                event = self._live.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.stats.live_subscribers
            if event[:1] in (b"\x00", b"\x01"):
                self.stats.live_subscribers += 1 if event[:1] == b"\x01" else -1

    def notice_subscribers(self) -> int:
        """Subscriptions to the series notices now; a new one gets the open series' headers again."""
        if self._notices is not None:
            self.stats.notice_subscribers = self._notices.serve()
        return self.stats.notice_subscribers

    def trainer_peers(self) -> int:
        """Trainer ranks connected to the trainer endpoint now (from the socket monitor)."""
        if self._monitor is None:
            return 0
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            self.stats.trainer_peers += 1 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else -1
        return self.stats.trainer_peers

    def close(self) -> None:
        """Hand over the partial block, close the file intact, close sockets (idempotent)."""
        self._hand_over()
        if self._monitor is not None:
            self._train.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._writer is not None:
            self._writer.close()
        if self._pull is not None:
            self._pull.close(linger=0)
        for sock in (self._train, self._live):  # frames still queued for a slow consumer get delivered
            if sock is not None:
                sock.close(linger=self.config.close_linger_ms)
        if self._notices is not None:
            self._notices.close(self.config.close_linger_ms)
            self._notices = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()  # blocks until the queued frames are out or the linger has expired
        self._pull = self._train = self._live = None

    @property
    def persisted(self) -> int:
        return self._writer.persisted if self._writer else 0

    def snapshot(self) -> dict[str, Any]:
        snap = self.stats.as_dict(self.persisted, self._writer.quarantined if self._writer else 0)
        snap["first_series"] = self.config.first_series
        if self._writer is not None and self._writer.error is not None:
            snap["writer_error"] = str(self._writer.error)
        return snap

    # ------------------------------------------------------------------ loop
    def run(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Receive until stopped, ``max_series``/``max_frames`` reached or ``idle_timeout_s`` elapsed."""
        if self._pull is None:
            self.start()
        c = self.config
        last_msg = last_stats = self._clock()
        while not self._stop.is_set() and not self._done():
            if self._pull.poll(c.recv_timeout_ms):
                self._drain()
                last_msg = self._clock()
            self.notice_subscribers()
            now = self._clock()
            if self._block is not None and now - self._block_t0 >= c.flush_interval_s:
                self._hand_over()
            if now - last_stats >= c.stats_interval_s:
                last_stats = now
                self.trainer_peers()
                self.live_subscribers()
                snap = self.snapshot()
                logger.info("ingest stats: %s", json.dumps(snap))
                if progress:
                    progress(snap)
            if c.idle_timeout_s and now - last_msg >= c.idle_timeout_s:
                logger.info("ingest: nothing received for %.1f s, stopping", c.idle_timeout_s)
                break
        self._hand_over()
        return self.snapshot()

    def _done(self) -> bool:
        c = self.config
        return bool((c.max_series and self.stats.series_ended >= c.max_series)
                    or (c.max_frames and self.stats.received >= c.max_frames))

    def _drain(self, budget: int = 2000) -> None:
        pull, handle = self._pull, self.handle
        for _ in range(budget):
            try:
                parts = recv_message(pull, zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(parts)
            if self._done():
                return

    def handle(self, parts: list[Any]) -> None:
        """Validate one multipart message and act on it; never raises for bad input."""
        self.stats.messages += 1
        sizes = [len(p) for p in parts]
        if sum(sizes) > self._message_limit():  # refused before any parsing or decoding; only heads are kept
            self._reject("oversized", f"message of {sum(sizes)} bytes exceeds the limit of {self._message_limit()}",
                         [_view(p)[:QUARANTINE_HEAD_BYTES] for p in parts], sizes)
            return
        try:
            if self.config.protocol == "v2":
                msg = stream2.parse(parts, keep_chunks=self._keep_chunks)
            else:
                msg = dectris.parse(parts, verify_hash=self.config.verify_hash, keep_chunks=self._keep_chunks)
        except dectris.MalformedMessage as exc:
            self._reject(exc.kind, str(exc), parts)
            return
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the recording: quarantine, say so
            logger.exception("the parser failed on a message (a bug: please report it with the quarantined parts)")
            self._reject("parser_error", f"{type(exc).__name__}: {str(exc)[:200]}", parts)
            return
        if isinstance(msg, dectris.SeriesHeader):
            self._on_header(self._arm(msg), parts)
            return
        acquisition = self._acquisition.get(msg.series, msg.series)
        if acquisition != msg.series:  # a re-armed detector's frames and end, under the id its arming was given
            msg = replace(msg, series=acquisition)
        if isinstance(msg, dectris.ImageFrame):
            self._on_image(msg, parts)
        else:
            self._on_end(msg, parts)

    def _arm(self, header: dectris.SeriesHeader) -> dectris.SeriesHeader:
        """Each arming of the detector is its own acquisition: a series id the detector used before in this
        recording (a restarted detector numbers from 1 again, or reuses an id) is given the next id above all
        given so far, so neither its header nor its frames merge with the earlier run's; so is an unused id below
        one given (series 5, 6, a restart, series 1): the recorded ids increase in arming order, which
        downstream relies on (a newer series ends the older open ones). An id below ``first_series`` (the
        earlier run's numbering this ingest continues) is given ``first_series`` or the next one above. Its own
        id goes along (``detector_series``)."""
        own = header.series
        low = max(self._used) + 1 if self._used else self.config.first_series
        series = own if own >= low else low
        if series != own:
            self.stats.rearmed += 1
            if self._used:
                logger.warning("the detector armed series %d after series %d (a restart?): recorded as series %d, "
                               "after the earlier ones (detector_series %d)", own, max(self._used), series, own)
            else:
                logger.warning("the detector armed series %d, below the first series id %d this ingest continues "
                               "from (--first-series, --after): recorded as series %d (detector_series %d)",
                               own, self.config.first_series, series, own)
        self._acquisition[own] = series
        self._used.add(series)
        return replace(header, series=series, detector_series=own)

    def _on_header(self, header: dectris.SeriesHeader, parts: list[Any]) -> None:
        problem = dectris.check_series_config(header.config)
        if problem is not None:  # the header is quarantined; the series opens (its valid frames are kept) without it
            self._reject("bad_series_config", f"series {header.series}: {problem}", parts)
            header = replace(header, config={})
        x, y = header.config.get("x_pixels_in_detector"), header.config.get("y_pixels_in_detector")
        if isinstance(x, int) and isinstance(y, int) and 0 < x <= dectris.MAX_SIDE and 0 < y <= dectris.MAX_SIDE:
            self._largest_frame_bytes = 4 * x * y
        for other in [s for s in self._series.open if s != header.series]:  # its dseries_end never came
            logger.warning("series %d had no dseries_end before series %d began: ended here", other, header.series)
            self._end_series(other)
        self._series.begin(header.series, header.config)  # a fresh id (see _arm): never one already open
        self.stats.series_started += 1
        if self._writer:
            self._writer.put_series_header(header)
        notice = encode_series_start(header.series, header.config, header.detector_series, header.tables)
        if self._live is not None:
            self._live.send_multipart(notice, zmq.NOBLOCK)
        if self._notices is not None:  # every subscribed rank gets it (see streamer.notices)
            self._notices.start(header.series, notice)
        if self._train is not None:  # each rank prepares its frames with the header (beam centre, mask, flatfield):
            for _ in range(self.trainer_peers()):  # one copy per connected rank, which PUSH deals round-robin; a
                if not _send_parts(self._train, notice):  # rank at its high-water mark misses it (the notices fix that)
                    self.stats.notices_dropped += 1

    def _on_end(self, end: dectris.SeriesEnd, parts: list[Any]) -> None:
        if end.series not in self._series.open:  # only series that started count (toward --max-series too)
            self._reject("unknown_series_end", f"dseries_end-1.0 for series {end.series} that was never started",
                         parts)
            return
        self._end_series(end.series)

    def _end_series(self, series: int) -> None:
        """Close an open series: its frame count and missing frames in the recording, notices downstream."""
        missing, short = self._series.missing(series), self._series.short(series)
        self._series.announced.pop(series, None)
        frames = self._series.end(series) or 0
        self.stats.short_of_nimages += short
        if short:
            logger.info("series %d ended %d frames short of its header's nimages x ntrigger (stopped early, or its "
                        "last frames lost upstream)", series, short)
        self.stats.series_ended += 1
        self.stats.missing_frames += missing
        if missing:
            logger.warning("series %d ended with %d frames missing (never received: another receiver on the "
                           "detector's endpoint, or lost upstream)", series, missing)
        self._hand_over()
        if self._writer:
            self._writer.put_series_end(series, frames, missing, short)
        notice = encode_series_end(series, frames)
        if self._live is not None:
            self._live.send_multipart(notice, zmq.NOBLOCK)
        if self._notices is not None:
            self._notices.end(series, notice)
        # a notice nobody can take must not delay the next series: wait for room only when a trainer is there
        if self._train is not None and not (self.trainer_peers() and self._send_control(self._train, notice)):
            self.stats.notices_dropped += 1
            logger.warning("series_end of series %d could not be handed to a trainer (all queues full or none "
                           "connected); trainers will see the boundary from the next series", series)
        logger.info("series %d ended: %d frames", series, frames)

    @staticmethod
    def _send_control(sock: zmq.Socket, parts: list[bytes], timeout_ms: int = 1000) -> bool:
        """A control notice (a task boundary) may wait briefly for room, unlike frames; True when sent."""
        for _ in range(2):
            if _send_parts(sock, parts):
                return True
            if not sock.poll(timeout_ms, zmq.POLLOUT):
                return False
        return False

    def _on_image(self, image: dectris.ImageFrame, parts: list[Any]) -> None:
        problem = self._series.check(image.series, image.frame)
        shape, dtype = image.shape, image.dtype
        if problem is None and self._frame_shape not in (None, shape):
            problem = ("shape_changed", f"frame shape {shape} differs from the recording's {self._frame_shape}")
        if problem is None and self._frame_dtype not in (None, dtype):  # never cast: it alters values
            problem = ("dtype_changed", f"frame type {dtype} differs from the recording's "
                                        f"{self._frame_dtype}; kept whole in the quarantine, not cast")
        channels = tuple(name for name, _ in image.channels)
        if problem is None and self._channels not in (None, channels):
            problem = ("channels_changed", f"channels {channels} differ from the recording's {self._channels}")
        if problem is not None:
            self._reject(*problem, parts)
            return
        self._frame_shape, self._frame_dtype, self._channels = shape, dtype, channels
        self.stats.received += 1
        recv_ns = time.time_ns()
        if self._writer:
            self._persist(image, recv_ns)
        self._forward(image, recv_ns, parts)

    def _persist(self, image: dectris.ImageFrame, recv_ns: int) -> None:
        if self._block is None:
            self._block = FrameBlock(self.config.block_frames, image.shape, image.dtype)
            self._block_t0 = self._clock()
        self._block.append(image, recv_ns)
        if self._block.full:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._block is not None and self._writer is not None:
            self._writer.put_block(self._block)
        self._block = None

    def _forward(self, image: dectris.ImageFrame, recv_ns: int, received: list[Any]) -> None:
        if self._train is None and self._live is None:
            return
        buffers = None
        if image.encoding == "<" and isinstance(received[2], zmq.Frame):  # raw: forward the received buffers
            buffers = [received[2], received[5], received[6]] if image.labelled else [received[2]]
        parts = encode_frame(image, recv_ns, buffers)
        if self._train is not None:
            if _send_parts(self._train, parts):
                self.stats.forwarded += 1
            else:
                self.stats.dropped += 1
        if self._live is not None:
            _send_parts(self._live, parts)  # PUB/XPUB never blocks: a slow subscriber loses frames, not us
            self.stats.published += 1

    def _reject(self, kind: str, reason: str, parts: list[Any], sizes: list[int] | None = None) -> None:
        """Count, log once per kind, quarantine (``sizes``: the sizes as received when ``parts`` are heads)."""
        self.stats.malformed[kind] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("rejected message (%s): %s; further '%s' rejections are only counted", kind, reason, kind)
        else:
            logger.debug("rejected message (%s): %s", kind, reason)
        if self._writer and self._queued_quarantine < self.config.max_quarantine:
            self._queued_quarantine += 1
            views = [_view(p) for p in parts]
            sizes = sizes or [len(v) for v in views]
            if self._quarantine_bytes + sum(len(v) for v in views) > self.config.quarantine_budget_bytes:
                views = [v[:QUARANTINE_HEAD_BYTES] for v in views]
                self.stats.quarantine_truncated += 1
            self._quarantine_bytes += sum(len(v) for v in views)
            self._writer.put_quarantine(kind, reason, [bytes(v) for v in views], time.time_ns(), sizes)

    def _message_limit(self) -> int:
        """Largest message accepted: ``max_message_bytes``, or 4x the largest legal frame of the latest series
        header (its detector size at 4 bytes per pixel), at least 64 MiB."""
        if self.config.max_message_bytes:
            return self.config.max_message_bytes
        return max(64 << 20, 4 * self._largest_frame_bytes)


def _view(part: Any) -> memoryview:
    """The bytes of a part (zmq.Frame, bytes or memoryview) without a copy."""
    return memoryview(part.buffer if hasattr(part, "buffer") else part).cast("B")


def _send_parts(sock: zmq.Socket, parts: list[Any]) -> bool:
    """Non-blocking multipart send (what ``send_multipart`` does, less its per-part checks); False when full.

    ZeroMQ queues a multipart message atomically: the high-water mark is checked at the first part, and a
    peer lost in mid-message makes libzmq discard the parts already queued (EAGAIN: counted as not sent).
    """
    last = len(parts) - 1
    try:
        for i in range(last):
            sock.send(parts[i], zmq.NOBLOCK | zmq.SNDMORE, copy=False)
        sock.send(parts[last], zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def run(config: IngestConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Stage entry point: run an ingest until a stop condition; returns the final counters (file closed)."""
    ingest = Ingest(config)
    ingest.start()
    try:
        ingest.run(progress)
    except KeyboardInterrupt:
        logger.info("ingest interrupted; closing the recording")
    finally:
        ingest.close()
    return ingest.snapshot()
