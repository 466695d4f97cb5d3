"""A trainer rank's view of the stream: a thread pulling frames from the ingest's trainer endpoint.

Each frame is cut to the model as it arrives (:mod:`trainer.prepare`: region of interest around the beam,
binning, masks, flatfield) with its series header. The header comes as a ``series_start`` on the frames' socket
(one copy per connected rank, dealt round-robin: a rank at its high-water mark can miss it) and, with a notice
endpoint (``notice_endpoint``, :mod:`streamer.notices`), to every rank on a subscription of its own. With one, a
frame whose header has not arrived yet waits for it (up to ``header_wait_s``); a frame whose header never comes
is prepared without one (frame centre, masking only pixels at the type's maximum) and counted in
``without_header``.
Frames are kept per series (scan = task) until the training loop takes them; a frame of a series whose task the
loop has closed is counted (``late_for_closed_task``), not kept. A header of another arming (another fingerprint:
the arming date differs) under a closed series id starts a new run (a restarted detector numbers from 1 again, a
trainer resumed into a new beamtime): the closed ids open again and their new series are trained as new tasks.
Unlabelled frames are counted and skipped; malformed messages are counted and logged once. Frames replayed from the recording after a restart
(:mod:`trainer.catchup`) are queued first; their live copies are dropped. The end of a series is known from a ``series_end``
notice on the frames' socket (only one rank receives each: PUSH is round-robin; it comes after that rank's
frames of the series) or from frames of a later series. The ``series_end`` on the notice endpoint is not a task
boundary: it can overtake frames still queued on the frames' socket. It only ends any wait for the header.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Any

import zmq

from streamer.frames import (Frame, FrameFormatError, SeriesEndNotice, SeriesStartNotice, decode_message,
                             header_fingerprint, recv_message)
from streamer.notices import subscribe as subscribe_notices
from trainer.prepare import Preparation, SeriesContext

logger = logging.getLogger(__name__)


class FrameReceiver:
    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, rcvhwm: int = 10_000,
                 poll_ms: int = 100, prepare: Preparation | None = None, physics: bool = False,
                 probe: Any = None, notice_endpoint: str = "", header_wait_s: float = 5.0) -> None:
        self.endpoint, self.notice_endpoint, self.header_wait_s = endpoint, notice_endpoint, header_wait_s
        self.prepare = prepare
        # physics loss: unlabelled frames are trained on too, with their scan's probe (``probe``: one for every
        # scan, e.g. from a file; otherwise the one each series header describes)
        self.physics, self.probe = physics, probe
        self.probes: dict[int, Any] = {}
        self.fluxes: dict[int, float] = {}  # photons per frame the header states (only where frames keep their
        # geometry: a region of interest or binning changes what the probe's total intensity corresponds to)
        self.without_probe = 0
        self.contexts: dict[int, SeriesContext] = {}  # series → what its header says for preparing its frames
        self.without_header = 0  # frames prepared without their series header
        self.held_for_header = 0  # frames that waited for their header (it came later than they did)
        self._held: dict[int, tuple[float, list[Frame]]] = {}  # series → (since, frames) waiting for its header
        self._no_wait: set[int] = set()  # series whose header will not come (ended, or overdue): frames go on
        self._headers: set[int] = set()  # series whose header this rank has (from either socket, or from disk)
        self.scan_identity: dict[int, tuple[int, str | None]] = {}  # series → (scan index, object family) its
        # header states (the simulator's ``ptychosteer.scan_index``/``family``): which truth evaluates it
        self._ctx = context or zmq.Context.instance()
        self._rcvhwm, self._poll_ms = rcvhwm, poll_ms
        self._pending: dict[int, deque[Frame]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.received = self.unlabelled = self.malformed = 0
        self.closed: set[int] = set()  # series whose task the trainer closed (discard): later frames of them
        self.late_for_closed_task = 0  # are counted here, never queued (the loop would wait on them forever)
        self.fingerprints: dict[int, str] = {}  # series → its header's fingerprint (which arming it belongs to)
        self.trained_headers: dict[int, str] = {}  # resumed: closed series → the fingerprint they were trained with
        self.new_run = False  # a header under a trained series id differed: the detector numbers from 1 again
        self.armings_mixed = 0  # headers of another arming under a series id whose task was still open
        self.replayed = self.duplicates = 0  # frames handed over from the recording (catch-up); live repeats
        self._replayed_ids: dict[int, set[int]] = {}  # series → frame ids replayed: their live copies are dropped
        self.highest_series = -1
        self.ended_series = -1
        self.last_arrival = time.monotonic()
        self.heard = False  # anything arrived yet (a labeler's first frames come a whole scan late)
        self.lag_s = 0.0  # ingest receive → here, for the latest frame
        self._thread = threading.Thread(target=self._loop, name="frame-receiver", daemon=True)

    def start(self) -> "FrameReceiver":
        self._thread.start()
        return self

    def _loop(self) -> None:
        sock = self._ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, self._rcvhwm)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        notices = None
        if self.notice_endpoint:
            notices = self._ctx.socket(zmq.SUB)
            subscribe_notices(notices)  # the broadcast notices and, on a topic of its own, resends to it alone
            notices.connect(self.notice_endpoint)
            poller.register(notices, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(self._poll_ms))
                if notices is not None and notices in ready:  # headers first: frames may be waiting for them
                    parts = recv_message(notices)
                    self._handle(parts[1:] or parts, notice=True)  # without its topic (alone: malformed)
                if sock in ready:
                    self._handle(recv_message(sock))
                if self._held:
                    self._release_overdue()
        finally:
            sock.close(linger=0)
            if notices is not None:
                notices.close(linger=0)

    def _handle(self, parts: list, notice: bool = False) -> None:
        try:
            msg = decode_message(parts)
        except FrameFormatError as exc:
            if not self.malformed:
                logger.warning("malformed message on the trainer stream: %s (further ones only counted)", exc)
            self.malformed += 1
            return
        with self._arrived:
            self.last_arrival = time.monotonic()
            self.heard = True
            if isinstance(msg, SeriesEndNotice):
                if not notice:  # after this rank's frames of the series (one socket, in order)
                    self.ended_series = max(self.ended_series, msg.scan)
                self._no_wait.add(msg.scan)  # its header will not come any more
                self._release(msg.scan)
            elif isinstance(msg, SeriesStartNotice):
                self._note_fingerprint(msg.scan, msg.config)  # first: a new run forgets the last run's headers
                self._headers.add(msg.scan)
                self._note_identity(msg.scan, msg.config)
                if self.prepare is not None:
                    self.contexts[msg.scan] = self.prepare.context(msg.config, msg.tables)
                if self.physics:
                    self._note_probe(msg.scan, msg.config)
                self._release(msg.scan)
            elif isinstance(msg, Frame):
                if msg.frame in self._replayed_ids.get(msg.scan, ()):
                    self.duplicates += 1  # trained from the recording already
                    return
                self.received += 1
                self.highest_series = max(self.highest_series, msg.scan)
                self.lag_s = max(0.0, time.time() - msg.t_recv_ns / 1e9) if msg.t_recv_ns else 0.0
                if not msg.labelled:
                    self.unlabelled += 1
                if self._waits_for_header(msg):
                    self._held.setdefault(msg.scan, (time.monotonic(), []))[1].append(msg)
                    self.held_for_header += 1
                else:
                    self._accept(msg)
            self._arrived.notify_all()

    def _waits_for_header(self, frame: Frame) -> bool:
        """With a notice endpoint, a frame whose header (its cut, its probe) is not here yet waits for it (the
        header is on its way on the other socket), unless frames of its series were given up on already. So does
        a frame under the id of a closed series whose arming is known: it is a late one of that series, or the
        first of a new run's series of that id, and only the header tells (a new run's header resets what this
        receiver knows of the last run; a late frame is released after ``header_wait_s`` and counted late)."""
        if frame.scan in self._held:
            return True
        if not self.notice_endpoint or frame.scan in self._no_wait:
            return False
        return frame.scan in self.trained_headers or (frame.scan not in self._headers
                                                      and frame.scan > self.ended_series)

    def _release(self, scan: int) -> None:
        """Frames that waited for ``scan``'s header go on (with it, if it came). Hold the lock."""
        _, frames = self._held.pop(scan, (0.0, []))
        for frame in frames:
            self._accept(frame)

    def _release_overdue(self) -> None:
        now = time.monotonic()
        with self._arrived:
            for scan in [s for s, (since, _) in self._held.items() if now - since >= self.header_wait_s]:
                if scan not in self.closed:  # a closed series' late frames: counted as such (_accept)
                    logger.warning("series %d: its header did not come within %.1f s of its first frame", scan,
                                   self.header_wait_s)
                self._no_wait.add(scan)
                self._release(scan)
            self._arrived.notify_all()

    def _accept(self, msg: Frame) -> None:
        """A received frame to train on (prepared), or counted as one that cannot be. Hold the lock."""
        if msg.scan in self.closed:
            self.late_for_closed_task += 1
            if self.late_for_closed_task == 1:
                logger.warning("a frame of series %d came after its task was closed (late, or released after "
                               "waiting for its header): not trained (further ones only counted)", msg.scan)
        elif msg.labelled and not self.physics:
            self._pending[msg.scan].append(self._prepared(msg))
        elif self.physics and self.probes.get(msg.scan) is not None and msg.position_px is not None:
            self._pending[msg.scan].append(self._prepared(msg))
        elif self.physics:
            self.without_probe += 1
            if self.without_probe == 1:
                logger.warning("physics loss: a frame of series %d without a probe (no --probe file and "
                               "none in its header) or without a position: skipped (further ones only "
                               "counted)", msg.scan)

    def _note_fingerprint(self, scan: int, config: dict) -> None:
        """Remember which arming ``scan`` belongs to. A header of another arming under the id of a series whose
        task was closed (a restarted detector numbers from 1 again; a trainer resumed into a new run) starts a
        new run: the ids closed before are open again, so its series are trained as new tasks, not dropped as late
        (``new_run`` tells the training loop). Hold the lock."""
        if not config:  # a header without configuration (rejected, or header_detail none) tells no arming apart
            return
        fingerprint = header_fingerprint(config)
        trained = self.trained_headers.get(scan)
        if scan in self.closed and trained is not None and trained != fingerprint:
            logger.warning("series %d: its header is another arming's than the series %d trained before: a new run, "
                           "whose series ids start over (trained as new tasks)", scan, scan)
            self._forget_run(keep=scan)
            self.new_run = True
        elif scan not in self.closed and self.fingerprints.get(scan, fingerprint) != fingerprint:
            self.armings_mixed += 1  # the new run came before the last run's series of that id was trained
            logger.warning("series %d: a header of another arming came while the last run's series %d is still "
                           "trained: frames under one id cannot be told apart, so both runs' frames of it train as "
                           "one task (armings_mixed)", scan, scan)
        self.fingerprints[scan] = fingerprint

    def _forget_run(self, keep: int | None = None) -> None:
        """A new run: what this receiver knows of the last run's series ids goes (closed ids, headers, cuts,
        probes, which scan each was, ends seen); frames waiting for a header are kept only under ``keep``, the
        id whose new header just came (the others are the last run's, counted late). Hold the lock."""
        for scan in [s for s in self._held if s != keep]:
            self.late_for_closed_task += len(self._held.pop(scan)[1])
        for table in (self.closed, self.trained_headers, self._headers, self._no_wait, self.contexts, self.probes,
                      self.fluxes, self.scan_identity, self.fingerprints, self._replayed_ids):
            table.clear()
        self.highest_series = self.ended_series = -1  # the new run's come; the loop ends the last run's task

    def start_new_run(self) -> None:
        """The training loop starts a new run (on every rank, once any rank has seen one): no series id is
        closed any more; the trained tasks stay in the model and the buffer. A rank that did not see the new
        run's header itself forgets the last run here."""
        with self._lock:
            if not self.new_run:
                self._forget_run()
            self.new_run = False

    def _note_identity(self, scan: int, config: dict) -> None:
        ext = config.get("ptychosteer")
        index = ext.get("scan_index") if isinstance(ext, dict) else None
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            family = ext.get("family")
            self.scan_identity[scan] = (index, family if isinstance(family, str) else None)

    def _note_probe(self, scan: int, config: dict) -> None:
        from trainer.physics import header_probe

        from trainer.physics import header_flux

        size = self.prepare.size if self.prepare is not None else int(config.get("y_pixels_in_detector", 0))
        self.probes[scan] = self.probe if self.probe is not None else header_probe(config, size)
        same = int(config.get("y_pixels_in_detector", size)) == size and (self.prepare is None
                                                                          or self.prepare.binning == 1)
        self.fluxes[scan] = header_flux(config) if same else 0.0

    def _prepared(self, frame: Frame) -> Frame:
        if self.prepare is None:
            return frame
        ctx = self.contexts.get(frame.scan)
        if ctx is None:
            self.without_header += 1
            if self.without_header == 1:
                logger.warning("frame of series %d arrived before (or without) its series header: prepared with "
                               "the frame's centre and no header mask or flatfield (further ones only counted)",
                               frame.scan)
            ctx = SeriesContext()
        return self.prepare.frame(frame, ctx)

    def preload(self, frames: list[Frame], frame_ids: dict[int, list[int]], ended: list[int],
                contexts: dict[int, SeriesContext] | None = None, configs: dict[int, dict] | None = None) -> None:
        """Frames replayed from the recording (catch-up), queued ahead of anything live; ``frame_ids``: every
        id of those series that was on disk (live copies of them are dropped); ``ended``: series complete on
        disk. Call before :meth:`start`, so that no live duplicate slips in first."""
        with self._arrived:
            self._replayed_ids = {s: set(ids) for s, ids in frame_ids.items()}
            self._headers.update(contexts or {})
            self._headers.update(configs or {})
            self.contexts.update(contexts or {})
            for scan, config in (configs or {}).items():
                self._note_identity(scan, config)
                if config:
                    self.fingerprints[scan] = header_fingerprint(config)
            if self.physics:
                for scan, config in (configs or {}).items():
                    self._note_probe(scan, config)
            for f in frames:
                self._pending[f.scan].append(self._prepared(f))
                self.highest_series = max(self.highest_series, f.scan)
            self.replayed += len(frames)
            if ended:
                self.ended_series = max(self.ended_series, max(ended))
            self._arrived.notify_all()

    def idle_s(self, before_first: float = 10.0) -> float:
        """Seconds since the last message; before the first one, that time divided by ``before_first``, so a
        stream that has not begun (a labeler's first frames come after a whole scan and its reconstruction) is
        given ``before_first`` times the idle timeout."""
        idle = time.monotonic() - self.last_arrival
        return idle if self.heard else idle / before_first

    def wait(self, timeout_s: float) -> None:
        """Wait until a message arrives or ``timeout_s`` passes (condition variable, not a sleep)."""
        with self._arrived:
            self._arrived.wait(timeout_s)

    def count(self, series: int) -> int:
        with self._lock:
            return len(self._pending.get(series, ()))

    def lowest_pending(self) -> int:
        with self._lock:
            live = [s for s, q in self._pending.items() if q]
            return min(live) if live else -1

    def take(self, series: int, n: int) -> list[Frame]:
        with self._lock:
            q = self._pending[series]
            return [q.popleft() for _ in range(min(n, len(q)))]

    def discard(self, series: int) -> int:
        """The trainer closed ``series``' task: its queued frames are dropped (returned: how many), later ones
        only counted (``late_for_closed_task``), unless a header of another arming reopens the id (a new run)."""
        with self._lock:
            self.closed.add(series)
            if series in self.fingerprints:  # its late frames wait for a header: another arming's opens a new run
                self.trained_headers[series] = self.fingerprints[series]
                self._no_wait.discard(series)
            return len(self._pending.pop(series, ()))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
