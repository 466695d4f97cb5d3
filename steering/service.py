"""The steering stage (``run(config)``): live reconstruction with the newest model, quality, decisions, pictures.

Sockets: SUB to the ingest's live PUB (frames, series start/end), SUB to the trainer's model announcements, XPUB
for the decision feed. Frames are reconstructed in batches with the current model; a new model version is
loaded in a background thread and swapped in between two batches, so no frame waits for a load. A missing or
corrupt checkpoint, or a malformed announcement, keeps the current model and is counted. Frames of a scan whose
``series_start`` was never seen are counted as ``unknown_scan`` and skipped.

Under overload the latency stays bounded, not the queue (:mod:`steering.load`): a frame is reconstructed only if
that can happen within ``max_lag_ms`` of its receipt at the ingest; when frames arrive faster than the model
reconstructs them, an evenly spread fraction is taken and the rest are skipped — counted as ``skipped_behind``
with the reason (``skipped_thinned``: not admitted to keep up; ``skipped_late``: past the deadline when its turn
came; ``skipped_upstream``: dropped by the live PUB/SUB queues before steering saw it, from the gaps in the frame
ids; ``skipped_backlog``: over ``max_backlog``; ``skipped_no_model``: the stage was done and no first model came
within ``model_wait_s``; frames otherwise wait for the first model). Skipped frames count for the scan's progress
(a skipped frame is still measured and on disk in the recording; a rescan never asks for a received one's position
again), and the status reports ``reconstructed_fraction``. Received frames
that were skipped are kept (up to ``backfill_mb``) and reconstructed when the stage is idle (``backfilled``),
newest first; the policy holds a scan's end-of-scan decision for them up to ``backfill_wait_s``. Frames the
live queues dropped never reached steering, but the ingest recorded them: with ``recording`` (the ingest's HDF5
file; ``launch`` sets it) steering reads them from there when idle and reconstructs them too (``recovered``);
what is not on disk within ``RECORDING_WAIT_S`` of the scan's last frame found missing, or cannot be read, is
counted (``unrecovered``, ``recording_errors``) and stays skipped. Their labels, where a simulated recording
holds any, are never read. A dropped series end would leave its scan open for ever (and a stage waiting for
``max_scans`` ends waiting): the next series' start ends the open scans (``implicit_ends``; the ingest takes one
series at a time), and with ``recording``, when the live socket is quiet, an open scan whose end the recording
holds is ended with the recorded count (``ends_from_recording``), its dropped tail then read from there. A
dropped series start (or steering started mid-scan) is read from the recording's header
(``starts_from_recording``), and so is a series none of whose messages arrived (a stall through a short scan),
when the socket is quiet, if it came after the first series steering saw. The stage stops (``max_scans``,
``idle_timeout_s``) only after this known work and a last look in the recording for dropped ends. Nothing is read
from a recording before it is shown to be this run's: the header it holds for a scan whose header arrived live must
equal that one (a detector's header carries its arming's date: ``data_collection_date``, stream v2's ``arm_date``);
for a scan started from the recording's header (no header arrived live), the recorded frame must equal the live
frame that started it (the next one, where that one's pixels were all one value, as a dark frame's are in any
run's file), and nothing more is read for that scan until that frame is on disk. A recording that holds
another series under a live scan's id, or another frame — an old file, while a restarted ingest writes a new one —
is never read again (``foreign_recording``), and its frames stay skipped (``unrecovered``).

A long beamtime's scans do not pile up: beyond ``keep_ended_scans`` ended scans, the oldest is retired (its last
picture written, its mosaic, figure and state dropped; ``scans_retired``), so memory and the per-step decision
work stay bounded by the scans still in view.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zmq

from steering.feed import DecisionPublisher
from steering.forward import data_misfit
from steering.load import LoadShedder
from steering.mosaic import Mosaic
from steering.policy import DecisionPolicy, PolicyConfig, ScanState
from steering.protocol import Decision
from streamer.dectris import check_series_config
from streamer.frames import (Frame, FrameFormatError, SeriesEndNotice, SeriesStartNotice, canonical_header,
                             decode_message, recv_message)
from streamer.netsec import curve_client
from streamer.physics import make_probe
from trainer.checkpoint import load_model
from trainer.data import preprocess
from trainer.prepare import Preparation, SeriesContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SteeringConfig:
    live_endpoint: str = "tcp://127.0.0.1:5561"  # the ingest's live PUB
    models_endpoint: str = "tcp://127.0.0.1:5570"  # the trainer's model announcements; "" disables
    feed_endpoint: str = "tcp://127.0.0.1:5580"  # bound XPUB for decisions (loopback by default)
    model_path: str = ""  # a checkpoint's model.pt to start with (optional)
    models_dir: str = "runs/train/checkpoints"  # announced models are loaded only from inside this directory
    models_server_key: str = ""  # the announcer's public certificate: hear the announcements over CURVE
    models_client_cert: str = ""  # this steering's secret certificate, authorised by the trainer
    device: str = "cpu"
    batch_max: int = 64  # frames per inference batch at most (also capped to a quarter of max_lag_ms's worth)
    max_lag_ms: float = 100.0  # latency budget, ingest receipt → decision (the decision-latency target)
    live_hwm: int = 1000  # receive high-water mark of the live socket, in messages (ages count this queue too)
    threads: int = 1  # intra-op threads for CPU inference
    forward_check: bool = True  # predicted patch x probe vs measured frame (needs the probe in the header)
    max_backlog: int = 2000  # admitted frames waiting, at most (a memory bound; the deadline usually acts first)
    backfill_mb: float = 256.0  # frames skipped under load kept to reconstruct when idle (0: none)
    recording: str = ""  # the ingest's recording: frames the live queues dropped are read from it when idle
    out_dir: str = "runs/steering"
    picture_interval_s: float = 5.0
    keep_ended_scans: int = 8  # ended scans kept (mosaic, picture, state); older ones are retired from memory
    max_scans: int = 0  # stop after this many series ended (0: until stopped)
    idle_timeout_s: float = 0.0
    model_wait_s: float = 60.0  # done (max_scans, idle_timeout_s) while frames wait for a first model: wait this
    # long for one to be announced, then stop, counting them (skipped_no_model); no wait without models_endpoint
    curve_secret: str = ""  # server certificate (.key_secret) to require CURVE on the feed
    authorized_keys: str = ""  # folder of authorised client public keys
    status_path: str = ""  # counters as JSON, refreshed every second
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.batch_max < 1 or self.max_backlog < 1 or self.threads < 1 or self.live_hwm < 1 \
                or self.keep_ended_scans < 1:
            raise ValueError("batch_max, max_backlog, live_hwm, threads and keep_ended_scans must be >= 1")
        if self.backfill_mb < 0 or self.model_wait_s < 0:
            raise ValueError(f"backfill_mb and model_wait_s must be >= 0, got {self.backfill_mb}, "
                             f"{self.model_wait_s}")
        if not 0 < self.max_lag_ms <= 3_600_000:
            raise ValueError(f"max_lag_ms must be in (0, 3600000], got {self.max_lag_ms}")
        if bool(self.curve_secret) != bool(self.authorized_keys):
            raise ValueError("CURVE needs both curve_secret and authorized_keys")
        if bool(self.models_server_key) != bool(self.models_client_cert):
            raise ValueError("CURVE on the model announcements needs both models_server_key and models_client_cert")
        if self.curve_secret and self.models_endpoint and not self.models_server_key:
            raise ValueError("the feed is authenticated (CURVE), so the model announcements must be too: give "
                             "--models-server-key and --models-client-cert (or --models '' to load no models)")


class Steering:
    def __init__(self, config: SteeringConfig, *, context: zmq.Context | None = None,
                 on_decision: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self._ctx = context or zmq.Context.instance()
        self.policy = DecisionPolicy(config.policy)
        self.counters: Counter = Counter()
        self.scans: dict[int, ScanState] = {}
        self.model: torch.nn.Module | None = None
        self.model_version = 0
        self._requested_version = 0
        self._pending_model: tuple[torch.nn.Module, int, Preparation] | None = None
        self.prepare: Preparation | None = None  # how the model in use was trained to see frames (its checkpoint)
        self._headers: dict[int, tuple[dict, dict]] = {}  # scan → its series header's config and tables
        self._contexts: dict[tuple[int, Preparation], SeriesContext] = {}  # (scan, preparation) → its header
        self._lock = threading.Lock()
        self._backlog: deque[tuple[Frame, float]] = deque()  # (frame, its receipt at the ingest, monotonic here)
        self._undecided: list[float] = []  # receipt times of reconstructed frames no decision has covered yet
        self.latency_s: deque[float] = deque(maxlen=100_000)  # ingest receipt → first decision published after it
        self.load = LoadShedder(max_lag_s=config.max_lag_ms / 1e3, batch_max=config.batch_max)
        self._deferred: deque[Frame] = deque()  # frames skipped under load, kept for backfill when idle
        self._deferred_cap = 0  # frames; set from backfill_mb once the first frame's size is known
        self._stop = threading.Event()
        self._on_decision = on_decision
        self.decisions: list[Any] = []
        self.loaders: list[threading.Thread] = []  # background model loads (joinable in tests)
        self.out = Path(config.out_dir)
        self._pictured: dict[int, int] = {}  # scan -> mosaic frames at its last picture
        self._pictures: dict[int, Any] = {}  # scan -> its kept figure (steering.pictures.MosaicPicture)
        self._ended: deque[int] = deque()  # ended scans still kept, oldest first (keep_ended_scans)
        self._probes: dict[int, np.ndarray] = {}  # scan -> the probe of its header, for the forward-model check
        self._warned: set[str] = set()
        self._dropped: dict[int, list[tuple[int, int]]] = {}  # scan -> frame-id ranges [a, b) to read from disk
        self._dropped_next: dict[int, float] = {}  # scan -> when to look on disk again (monotonic)
        self._dropped_until: dict[int, float] = {}  # ended scan -> when to stop waiting for its frames on disk
        self._open_next = 0.0  # when to look in the recording for the ends of open scans again (monotonic)
        self._header_next: dict[int, float] = {}  # unknown scan -> when to look for its header on disk again
        self._started: set[int] = set()  # every scan id started (an int per scan: small for any beamtime)
        self._live_started: set[int] = set()  # scans kept whose header arrived live (not from the recording)
        self._matched: set[int] = set()  # scans the recording is shown to hold as received: the recorded header
        # is the live one, or (a scan started from the recording) the recorded frame is the live one
        self._foreign = False  # the recording holds another series under a live scan's id: never read again
        self._witness: dict[int, Frame | None] = {}  # scans started from the recording, not yet checked against
        # it: the live frame that started each, to compare with the recorded frame of that id once it is on disk
        # (None: that frame told nothing, all pixels one value; the scan's next live frame that does)
        self._done_at: float | None = None  # when the stage was first done while frames waited for a first model
        if config.model_path:
            self._load(config.model_path, 0)
            self._swap()

    # ------------------------------------------------------------------ sockets
    def start(self) -> None:
        c = self.config
        self.live = self._ctx.socket(zmq.SUB)
        self.live.setsockopt(zmq.SUBSCRIBE, b"")
        self.live.setsockopt(zmq.RCVHWM, c.live_hwm)
        self.live.connect(c.live_endpoint)
        self.models = None
        if c.models_endpoint:
            self.models = self._ctx.socket(zmq.SUB)
            self.models.setsockopt(zmq.SUBSCRIBE, b"")
            if c.models_server_key:
                curve_client(self.models, c.models_server_key, c.models_client_cert)
            self.models.connect(c.models_endpoint)
        self.feed = DecisionPublisher(c.feed_endpoint, context=self._ctx,
                                      curve_secret=Path(c.curve_secret) if c.curve_secret else None,
                                      authorized_keys=Path(c.authorized_keys) if c.authorized_keys else None)
        self.poller = zmq.Poller()
        for sock in (self.live, self.models, self.feed._sock):
            if sock is not None:
                self.poller.register(sock, zmq.POLLIN)
        self._last = dict.fromkeys(("msg", "pic", "status"), time.monotonic())  # the loop's clocks (step())
        self._write_status()  # at once: the feed endpoint it bound (launch waits for it)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for sock in (getattr(self, "live", None), getattr(self, "models", None)):
            if sock is not None:
                sock.close(linger=0)
        if hasattr(self, "feed"):
            self.feed.close()

    def _warn(self, kind: str, message: str) -> None:
        self.counters[kind] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("%s (further '%s' events are only counted)", message, kind)

    # ------------------------------------------------------------------ models
    def _load(self, path: str, version: int) -> None:
        try:
            model, config = load_model(path, self.config.device)
            prepare = Preparation.from_dict(config.get("prepare"), int(config["frame_size"]))
        except ValueError as exc:
            self._warn("model_errors", f"keeping model v{self.model_version}: {exc}")
            return
        with self._lock:
            self._pending_model = (model, version, prepare)

    def _on_announcement(self, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
            if not (isinstance(msg, dict) and msg.get("kind") == "model" and isinstance(msg.get("version"), int)
                    and isinstance(msg.get("path"), str)):
                raise ValueError(f"not a model announcement: {str(msg)[:200]}")
        except (ValueError, UnicodeDecodeError) as exc:
            self._warn("bad_announcements", f"ignoring malformed model announcement: {exc}")
            return
        if msg["version"] <= max(self.model_version, self._requested_version):
            return  # not newer than what we use or are already loading
        path = confined(msg["path"], self.config.models_dir)
        if path is None:
            self._warn("models_refused", f"refusing model v{msg['version']} at {msg['path'][:200]!r}: not a "
                                         f"model.pt inside the trainer's checkpoints {self.config.models_dir!r}")
            return
        self._requested_version = msg["version"]
        loader = threading.Thread(target=self._load, args=(str(path), msg["version"]), daemon=True)
        loader.start()
        self.loaders.append(loader)

    def _swap(self) -> None:
        with self._lock:
            pending, self._pending_model = self._pending_model, None
        if pending is not None:
            self.model, self.model_version, self.prepare = pending
            self.counters["model_swaps"] += 1
            logger.info("steering now uses model v%d", self.model_version)

    # ------------------------------------------------------------------ frames
    def _on_live(self, parts: list[Any]) -> None:
        try:
            msg = decode_message(parts)
        except FrameFormatError as exc:
            self._warn("malformed", f"malformed message on the live feed: {exc}")
            return
        if isinstance(msg, Frame) and self._witness.get(msg.scan, False) is None and _telling(msg):
            self._witness[msg.scan] = _own_copy(msg)  # the witness its scan waited for (its first frame told nothing)
        if isinstance(msg, SeriesStartNotice):
            self._start_scan(msg)
            if msg.scan in self.scans:
                self._live_started.add(msg.scan)
        elif isinstance(msg, SeriesEndNotice):
            self._end_scan(msg)
        elif msg.scan not in self.scans and not self._start_from_recording(msg):
            self._warn("unknown_scan", f"frame of scan {msg.scan}, whose series_start was never seen: skipped")
        elif msg.position_px is None:
            self._warn("unpositioned", f"frame {msg.frame} of scan {msg.scan} has no position: cannot be stitched")
        elif self._from_disk_later(msg):
            self.counters["late_frames"] += 1
        else:
            state = self.scans[msg.scan]
            if not self._deferred_cap and self.config.backfill_mb > 0:
                self._deferred_cap = max(1, int(self.config.backfill_mb * 2**20 // max(1, msg.image.nbytes)))
            if msg.frame > state.last_frame + 1:  # the live queues dropped frames before they reached us
                self._skip(state, msg.frame - state.last_frame - 1, "upstream")
                self._want_recorded(state, state.last_frame + 1, msg.frame)
            state.last_frame = max(state.last_frame, msg.frame)
            self.policy.observe(state, np.asarray(msg.image))
            arrival = self.load.arrival(msg.t_recv_ns)
            if not self.load.admit(arrival, len(self._backlog)):
                self._skip(state, 1, "thinned", msg)
                return
            self._backlog.append((msg, arrival))
            if len(self._backlog) > self.config.max_backlog:
                old, _ = self._backlog.popleft()
                self._skip(self.scans[old.scan], 1, "backlog", old)

    def _skip(self, state: ScanState | None, frames: int, reason: str, frame: Frame | None = None) -> None:
        """Frames not reconstructed on the latency path: counted, and (still measured, on disk) part of their
        scan's progress. A received ``frame`` is kept for backfill while the store has room."""
        self.counters["skipped_behind"] += frames
        self.counters[f"skipped_{reason}"] += frames
        if state is None:
            return
        state.skipped += frames
        if frame is not None and frame.position_px is not None:  # measured: a rescan must not ask for it again
            skipped = [(tuple(frame.position_px), tuple(frame.image.shape))]
            if state.mosaic.frames == 0:  # kept while the mosaic may still be replaced (see _prepared)
                state.skipped_positions += skipped
            self._note_measured(state, skipped)
        if frame is not None and self._deferred_cap:
            self._deferred.append(frame)
            state.deferred += 1
            if len(self._deferred) > self._deferred_cap:  # full: the oldest is skipped for good
                old = self._deferred.popleft()
                if old.scan in self.scans:
                    self.scans[old.scan].deferred -= 1

    def _end_scan(self, notice: SeriesEndNotice) -> None:
        state = self.scans.get(notice.scan)
        if state is not None and state.ended:  # already ended from the recording (or a repeated notice)
            self.counters["repeated_ends"] += 1
            return
        self.counters["scans_ended"] += 1
        if state is not None and notice.frames > state.last_frame + 1:  # the tail the live queues dropped
            self._skip(state, notice.frames - state.last_frame - 1, "upstream")
            self._want_recorded(state, state.last_frame + 1, notice.frames)
            state.last_frame = notice.frames - 1
        if state is not None:
            state.ended = True
            self._ended.append(notice.scan)
        self._retire()

    def _start_from_recording(self, frame: Frame) -> bool:
        """A frame of a scan whose start never reached steering (it was dropped, or steering started or restarted
        mid-scan): its series header is read from the recording (``starts_from_recording``) and the scan starts;
        the frames it missed are then read from there too. Looked for at most every ``RECORDING_RETRY_S`` per
        scan (the ingest writes the header a little after it publishes it). With no live header to compare, the
        live frame itself is the witness that the file is this run's: where the file holds that frame and it
        differs, the file is another run's (``foreign_recording``) and the scan does not start; where the file
        does not hold it yet, the scan starts and nothing more is read for it until the frame is there and equal.
        A frame whose pixels are all one value (a dark frame) would be equal in any run's file: the next live
        frame of the scan that is not is the witness, and nothing is read for the scan until then."""
        scan = frame.scan
        now = time.monotonic()
        if not self.config.recording or self._foreign or scan in self._started or \
                now < self._header_next.get(scan, 0.0):
            return False  # no (usable) recording, or a straggler of a scan steering has had (and may have retired)
        if len(self._header_next) > 1000:  # ids that never appear on disk: the table stays bounded
            self._header_next.clear()
        self._header_next[scan] = now + RECORDING_RETRY_S
        header = self._read_recording(f"the header of scan {scan}", recorded_header, scan)
        if header is UNREAD or header is None:
            return False
        self._header_next.pop(scan, None)
        verdict = self._witnessed(frame) if _telling(frame) else None
        if verdict is False:
            return False
        self._start_scan(header)  # (a fresh scan state: not matched yet)
        if scan not in self.scans:  # a header steering cannot use (counted by _start_scan)
            return False
        if verdict:
            self._matched.add(scan)
        else:  # checked once the frame is on disk; a frame that tells nothing: the next live one that does
            self._witness[scan] = _own_copy(frame) if _telling(frame) else None
        self._warn("starts_from_recording", f"scan {scan}: its start never arrived, read from the recording")
        return True

    def _from_disk_later(self, msg: Frame) -> bool:
        """A frame of a scan already ended (from the recording) that is among the frames to read from there: it
        arrived after all; it is read with the others, not counted twice."""
        state = self.scans[msg.scan]
        return state.ended and any(a <= msg.frame < b for a, b in self._dropped.get(msg.scan, ()))

    def _end_open_scans(self, new: int) -> None:
        """A series starts while others are open: the ingest ended those (one series at a time), but the live
        queues dropped their ends. Each is ended here with the frame count the recording holds for it (its dropped
        tail is then read from there), or with the frames seen where the recording has no count (yet)."""
        for scan in [s for s, st in self.scans.items() if not st.ended and s < new]:  # the ingest's ids increase
            state = self.scans[scan]
            frames = None
            if self._recording_is_ours(scan):
                frames = self._read_recording(f"the frame count of scan {scan}", recorded_frames, scan)
                frames = None if frames is UNREAD else frames
            self._warn("implicit_ends", f"scan {new} started while scan {scan} was open: its end was dropped on "
                                        f"the way, ended with {frames if frames is not None else 'the'} frames"
                                        f"{'' if frames is not None else ' seen'}")
            self._end_scan(SeriesEndNotice(scan=scan, frames=max(frames or 0, state.last_frame + 1)))

    def _ends_from_recording(self, now: float | None = None) -> None:
        """Nothing arrives, and scans are open: the live queues may have dropped their ends (and the next
        series' start, which would end them: :meth:`_end_open_scans`). An open scan whose end the recording
        holds is ended with the recorded count (``ends_from_recording``); looked at every ``RECORDING_RETRY_S``."""
        now = time.monotonic() if now is None else now
        if not self.config.recording or now < self._open_next:
            return
        self._open_next = now + RECORDING_RETRY_S
        self._unseen_from_recording()
        for scan in [s for s, st in self.scans.items() if not st.ended]:
            if not self._recording_is_ours(scan):
                continue
            frames = self._read_recording(f"the frame count of scan {scan}", recorded_frames, scan)
            if frames is UNREAD:
                return
            if frames is not None:
                self._warn("ends_from_recording", f"scan {scan}: its end never arrived, the recording has it "
                                                  f"({frames} frames): ended")
                self._end_scan(SeriesEndNotice(scan=scan, frames=max(frames, self.scans[scan].last_frame + 1)))

    def _unseen_from_recording(self) -> None:
        """Series the recording holds that steering never saw a message of (every one was dropped: a stall
        through a short scan), after the first one it saw (it does not reconstruct a beamtime's history when it
        starts): each starts from its recorded header (``starts_from_recording``); the ended ones end with their
        recorded count, so their frames are read from there."""
        if not self._started or not self._recording_is_ours():
            return
        first = min(self._started)

        def unseen(path: str) -> list[tuple[int, SeriesStartNotice | None, int | None]]:
            return [(s, recorded_header(path, s), recorded_frames(path, s)) for s in recorded_series(path)
                    if s not in self._started and s > first]

        headers = self._read_recording("the series", unseen)
        if headers is UNREAD:
            return
        for scan, header, frames in headers:
            if header is None:
                continue
            self._start_scan(header)
            if scan not in self.scans:  # a header steering cannot use (counted by _start_scan)
                continue
            self._warn("starts_from_recording", f"scan {scan}: none of its messages arrived, read from the "
                                                f"recording")
            if frames is not None:
                self._end_scan(SeriesEndNotice(scan=scan, frames=frames))

    def _retire(self) -> None:
        """Forget the oldest ended scans beyond ``keep_ended_scans``: a beamtime's hundreds of scans must not
        each keep a mosaic (seven maps of the field) and a figure, nor be looked at by every decision step. A
        retired scan gets its last picture first; frames of it still waiting are dropped (``retired_frames``)."""
        from steering.pictures import MosaicPicture, save_mosaic

        while len(self._ended) > self.config.keep_ended_scans:
            scan = self._ended.popleft()
            state = self.scans.get(scan)
            if state is None or not state.ended:  # replaced by a new series of the same id meanwhile
                continue
            if state.mosaic.frames and self._pictured.get(scan) != state.mosaic.frames:
                save_mosaic(state, self.out, self._pictures.get(scan, MosaicPicture()))
            for table in (self.scans, self._pictured, self._pictures, self._probes, self._headers, self._dropped,
                          self._dropped_next, self._dropped_until):
                table.pop(scan, None)
            self._live_started.discard(scan)
            self._matched.discard(scan)
            self._witness.pop(scan, None)
            for key in [k for k in self._contexts if k[0] == scan]:
                del self._contexts[key]
            self.policy.forget(scan)
            waiting = sum(1 for f, _ in self._backlog if f.scan == scan)
            if waiting:
                self._backlog = deque((f, t) for f, t in self._backlog if f.scan != scan)
                self.counters["retired_frames"] += waiting
            self.counters["scans_retired"] += 1
            logger.info("scan %d retired from memory (%d ended scans kept)", scan, self.config.keep_ended_scans)

    def _start_scan(self, notice: SeriesStartNotice) -> None:
        self._end_open_scans(notice.scan)
        self._started.add(notice.scan)
        try:
            geometry = scan_geometry(notice.config)
        except ValueError as exc:  # a series configuration that passed the ingest but that steering cannot use
            self._warn("bad_series_config", f"scan {notice.scan}: skipped, its series configuration is unusable: "
                                            f"{exc}")
            return
        if geometry is None:
            self._warn("unknown_geometry", f"scan {notice.scan}: the series header lacks the object geometry")
            return
        shape, frame, fwhm, curvature, nimages, saturation = geometry
        self._headers[notice.scan] = (notice.config, notice.tables)
        self._live_started.discard(notice.scan)  # a new series of a reused id: its recorded header is checked anew
        self._matched.discard(notice.scan)
        self._witness.pop(notice.scan, None)
        for table in (self._dropped, self._dropped_next, self._dropped_until):  # a new series of a reused id
            table.pop(notice.scan, None)
        self.scans[notice.scan] = ScanState(scan=notice.scan, mosaic=self._mosaic(notice.scan, self.prepare),
                                            nimages=nimages, saturation=saturation,
                                            detector_series=notice.detector_series)
        if self.config.forward_check and fwhm > 0:  # the probe the header describes: the forward-model check
            self._probes[notice.scan] = make_probe(frame, fwhm, curvature)
        logger.info("scan %d started: %s field, %d positions", notice.scan, shape, self.scans[notice.scan].nimages)

    def _mosaic(self, scan: int, prepare: Preparation | None) -> Mosaic:
        """The scan's mosaic in the object pixels of the frames as ``prepare`` cuts them (the frame's own without
        one): a region of interest of R from M detector pixels makes object pixels M/R times larger."""
        shape, frame, fwhm = scan_geometry(self._headers[scan][0])[:3]
        if prepare is None:
            return Mosaic(shape, frame, fwhm)
        sy, sx = prepare.scale((frame, frame))
        return Mosaic((max(prepare.size, math.ceil(shape[0] * sy)), max(prepare.size, math.ceil(shape[1] * sx))),
                      prepare.size, fwhm * sy)

    def _prepared(self, frame: Frame) -> Frame | None:
        """``frame`` cut as the model in use was trained to see it; None when its scan's mosaic was begun with
        another preparation (a model trained otherwise took over mid-scan: counted as ``geometry_changed``)."""
        prepare = self.prepare
        state = self.scans[frame.scan]
        if prepare is None:
            return frame
        if state.mosaic.frames == 0:  # nothing stitched yet: the mosaic follows the model's preparation
            wanted = self._mosaic(frame.scan, prepare)
            if (wanted.shape, wanted.frame) != (state.mosaic.shape, state.mosaic.frame):
                state.mosaic = wanted
                self._note_measured(state, state.skipped_positions)  # in the new mosaic's pixels
        elif state.mosaic.frame != prepare.size:
            self._warn("geometry_changed", f"scan {frame.scan}: the model now cuts frames otherwise than the scan's "
                                           "mosaic was begun with: its further frames are not stitched")
            return None
        key = (frame.scan, prepare)  # a frozen dataclass: hashable, no per-frame serialisation
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = prepare.context(*self._headers[frame.scan])
        return prepare.frame(frame, ctx)

    @torch.no_grad()
    def _reconstruct(self) -> None:
        if self.model is None or not self._backlog:
            return
        n = self.load.batch_size(len(self._backlog))
        while self._backlog and self.load.late(self._backlog[0][1], n):  # past the deadline: oldest first
            old, _ = self._backlog.popleft()
            self._skip(self.scans.get(old.scan), 1, "late", old)
            n = self.load.batch_size(len(self._backlog))
        if not n:
            return
        t0 = time.perf_counter()
        items = [self._backlog.popleft() for _ in range(n)]
        self._undecided += [t for _, t in items]
        self._infer([f for f, _ in items])
        self.counters["reconstructed"] += n
        self.load.note_batch(n, time.perf_counter() - t0)

    @torch.no_grad()
    def _backfill(self) -> None:
        """Idle (nothing admitted waits): reconstruct frames skipped under load, newest first (the scan being
        measured, whose end-of-scan decision may be waiting for them). Outside the latency budget by design;
        a batch is no larger than a live one, so a frame arriving meanwhile waits no longer than behind one."""
        if self.model is None or self._backlog or not self._deferred:
            return
        batch = [self._deferred.pop() for _ in range(self.load.batch_size(len(self._deferred)))]
        batch = [f for f in batch if f.scan in self.scans]
        for f in batch:
            state = self.scans[f.scan]
            state.deferred -= 1
            state.skipped -= 1
        if batch:
            t0 = time.perf_counter()
            self._infer(batch)
            self.counters["backfilled"] += len(batch)
            self.load.note_batch(len(batch), time.perf_counter() - t0)  # the same work: it keeps the cost current

    def _want_recorded(self, state: ScanState, first: int, stop: int) -> None:
        """Frames ``first`` … ``stop - 1`` of the scan never reached steering: read them from the recording later
        (deferred meanwhile, so the scan's end-of-scan decision waits for them as for other deferred frames)."""
        if not self.config.recording or stop <= first:
            return
        self._dropped.setdefault(state.scan, []).append((first, stop))
        self._dropped_until[state.scan] = time.monotonic() + RECORDING_WAIT_S  # then given up, open scan or not
        state.deferred += stop - first

    def _read_recording(self, what: str, read: Callable[..., Any], *args: Any) -> Any:
        """``read(recording, *args)``, or ``UNREAD`` where the recording cannot be read now (a file still being
        written, or missing: h5py raises many kinds), counted as ``recording_errors``."""
        try:
            return read(self.config.recording, *args)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self._warn("recording_errors", f"cannot read {what} from {self.config.recording}: "
                                           f"{type(exc).__name__}: {exc}")
            return UNREAD

    def _recording_is_ours(self, scan: int | None = None) -> bool | None:
        """Whether the recording may be read for ``scan`` (None: for series steering never saw): True once the
        header it holds for ``scan`` equals the one that arrived live (for ``scan=None``, for any live scan); for a
        scan whose header came from the recording itself, once the live frame that started it equals the recorded
        one (:meth:`_witnessed`); while nothing arrived live to compare with, True. False without a recording, or
        once it held another series under a live scan's id (``foreign_recording``: never read again). None while
        it cannot tell (the header or the frame not on disk yet)."""
        if not self.config.recording or self._foreign:
            return False
        if scan is not None and scan not in self._live_started:
            if scan in self._matched or scan not in self._witness:
                return True
            witness = self._witness[scan]
            return None if witness is None else self._witnessed(witness)
        if scan is None and not self._live_started:
            unsure = False
            for witness in list(self._witness.values()):
                verdict = None if witness is None else self._witnessed(witness)
                if verdict is False:
                    return False
                unsure |= verdict is None
            return True if self._matched or not unsure else None
        if scan is None and self._matched:
            return True
        for s in [scan] if scan is not None else sorted(self._live_started):
            if s in self._matched:
                return True
            header = self._read_recording(f"the header of scan {s}", recorded_header, s)
            if header is UNREAD or header is None:
                continue
            config, state = self._headers[s][0], self.scans[s]
            if canonical_header(header.config) == canonical_header(config) and \
                    (header.detector_series or s) == (state.detector_series or s):
                self._matched.add(s)
                return True
            self._mark_foreign(f"another series {s} than steering received live (its header differs)")
            return False
        return None

    def _witnessed(self, frame: Frame) -> bool | None:
        """Whether the recording holds ``frame`` as it arrived live (pixels and position): True (its scan is
        matched), False (another run's file: ``foreign_recording``), None (not on disk yet, or unreadable now)."""
        got = self._read_recording(f"frame {frame.frame} of scan {frame.scan}", read_dropped, frame.scan,
                                   [(frame.frame, frame.frame + 1)], 1)
        if got is UNREAD or not got:
            return None
        self._witness.pop(frame.scan, None)
        recorded = got[0]
        same_position = frame.position_px is None or recorded.position_px is None or \
            np.allclose(recorded.position_px, frame.position_px)
        if np.array_equal(np.asarray(recorded.image), np.asarray(frame.image)) and same_position:
            self._matched.add(frame.scan)
            return True
        self._mark_foreign(f"another frame {frame.frame} of scan {frame.scan} than steering received live")
        return False

    def _mark_foreign(self, what: str) -> None:
        self._foreign = True
        self._witness.clear()
        self._warn("foreign_recording", f"{self.config.recording} holds {what}: the recording is another run's "
                                        f"(an ingest restarted onto a new file?) and is not read from again")

    def _give_up_recorded(self, scan: int, counter: str) -> None:
        n = sum(b - a for a, b in self._dropped.pop(scan, []))
        self._dropped_next.pop(scan, None)
        self._dropped_until.pop(scan, None)
        self.counters[counter] += n
        if scan in self.scans:
            self.scans[scan].deferred -= n

    def _recover(self, now: float | None = None) -> None:
        """Idle (nothing admitted or deferred waits): read frames the live queues dropped from the recording, up
        to ``RECOVER_FRAMES`` at a time, into the deferred store, which :meth:`_backfill` reconstructs. The ingest
        writes them a little later than it publishes them, so a scan whose frames are not on disk yet is looked
        at again every ``RECORDING_RETRY_S``, until ``RECORDING_WAIT_S`` after its last frame found missing."""
        if self.model is None or self._backlog or self._deferred or not self._dropped:
            return
        now = time.monotonic() if now is None else now
        scan = next((s for s in self._dropped if self._dropped_next.get(s, 0.0) <= now), None)
        if scan is None:
            return
        ours = self._recording_is_ours(scan) if scan in self.scans else False
        if ours is False:
            self._give_up_recorded(scan, "unrecovered")
            return
        frames = [] if ours is None else \
            self._read_recording(f"dropped frames of scan {scan}", read_dropped, scan, self._dropped[scan],
                                 RECOVER_FRAMES)  # None: its header is not on disk yet, looked for again later
        if frames is UNREAD:
            frames = []
        if frames:
            got = {f.frame for f in frames}
            left = [i for a, b in self._dropped[scan] for i in range(a, b) if i not in got]
            self._dropped[scan] = [(i, i + 1) for i in left]  # small: only what was dropped and is not on disk
            self._deferred.extend(frames)  # counted as deferred since they were found missing (_want_recorded)
            self.counters["recovered"] += len(frames)
            if not left:
                self._give_up_recorded(scan, "unrecovered")  # nothing left: counts 0, clears the tables
            return
        self._dropped_next[scan] = now + RECORDING_RETRY_S
        if now >= self._dropped_until.get(scan, math.inf):
            self._give_up_recorded(scan, "unrecovered")

    def _infer(self, batch: list[Frame]) -> None:
        """The model on ``batch`` (each frame cut as the model was trained to see it), the forward-model check, and
        the patches into their scans' mosaics."""
        batch = [p for p in (self._prepared(f) for f in batch if f.scan in self.scans) if p is not None]
        if not batch:
            return
        x = preprocess(np.stack([f.image for f in batch])).to(self.config.device)
        amp, phase = self.model(x)
        amp, phase = amp.cpu().numpy(), phase.cpu().numpy()
        by_scan: dict[int, list[int]] = {}
        for i, f in enumerate(batch):
            by_scan.setdefault(f.scan, []).append(i)
        for scan, idx in by_scan.items():
            pos = np.array([batch[i].position_px for i in idx])
            misfit = None
            probe = self._probes.get(scan)
            if probe is not None and probe.shape == amp.shape[1:]:  # not where preparing changed the geometry
                valid = [batch[i].valid for i in idx]
                misfit = data_misfit(np.stack([batch[i].image for i in idx]), amp[idx], phase[idx], probe,
                                     self.scans[scan].saturation,
                                     None if all(v is None for v in valid) else
                                     np.stack([np.ones(amp.shape[1:], bool) if v is None else v for v in valid]))
            self.scans[scan].mosaic.add(pos, amp[idx], phase[idx], misfit)

    def _decide(self) -> None:
        t0 = time.perf_counter()
        published = False
        for state in self.scans.values():
            for decision in self.policy.decide(state, self.model_version):
                stamped = self.feed.publish(self._in_object_pixels(decision, state))
                self.decisions.append(stamped)
                self.counters[f"decisions_{decision.kind}"] += 1
                if decision.kind != "continue":
                    logger.info("decision %s for scan %d: %s", decision.kind, decision.scan, decision.reason)
                if self._on_decision:
                    self._on_decision(stamped)
                published = True
        if published and self._undecided:
            now = time.monotonic()
            self.latency_s.extend(now - t for t in self._undecided)
            self._undecided.clear()
        self.load.note_decide(time.perf_counter() - t0)

    def _note_measured(self, state: ScanState, skipped: list[tuple[tuple[float, float], tuple[int, int]]]) -> None:
        """Positions of frames skipped under load (the frames' object pixels) into the mosaic's measured set, in
        its pixels (those of the model's preparation, as :meth:`_prepared` places stitched patches)."""
        prepare = self.prepare
        if not skipped:
            return
        if prepare is None or state.mosaic.frame != prepare.size:
            pos = [p for p, _ in skipped]
        else:
            pos = [prepare.position(p, shape) for p, shape in skipped]
        state.mosaic.note_measured(np.array(pos, np.float64))

    def _in_object_pixels(self, decision: Decision, state: ScanState) -> Decision:
        """A rescan's positions from the mosaic's pixels into the experiment's (the frames' object pixels): they
        differ where the model's preparation rescales the field (a region of interest) or keeps its centre
        (binning)."""
        prepare = self.prepare
        if decision.kind != "rescan_region" or not decision.positions_px or prepare is None:
            return decision
        shape, frame = scan_geometry(self._headers[decision.scan][0])[:2]
        if state.mosaic.frame != prepare.size:
            return decision  # the mosaic is in the frames' own pixels
        span = np.array(shape) - frame
        pos = np.array([prepare.object_position(tuple(p), (frame, frame)) for p in decision.positions_px])
        pos = np.unique(np.clip(np.round(pos), 0, span).astype(int), axis=0)
        region = [int(pos[:, 0].min()), int(pos[:, 1].min()), int(pos[:, 0].max()) + frame,
                  int(pos[:, 1].max()) + frame]
        return replace(decision, positions_px=pos.tolist(), region_px=region)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        if not hasattr(self, "live"):
            self.start()
        while not self._stop.is_set() and not self.step():
            pass
        self.save_pictures()
        self._write_status(done=True)
        return self.snapshot()

    def step(self) -> bool:
        """One turn of the loop: take what arrived, swap in a loaded model, reconstruct one batch, decide, and
        the periodic status and pictures. True when the stage is done (``max_scans`` or ``idle_timeout_s``)."""
        c = self.config
        busy = self.model is not None and bool(self._backlog or self._deferred or any(  # work it can do now
            self._dropped_next.get(s, 0.0) <= time.monotonic() for s in self._dropped))
        events = dict(self.poller.poll(0 if busy else 50))
        waited = not busy and not events  # listened for 50 ms, idle, and nothing came
        if self.live in events:
            self._drain()
            self._last["msg"] = time.monotonic()
        if self.models is not None and self.models in events:
            self._on_announcement(self.models.recv())
        self.feed.service()
        self._swap()
        self._reconstruct()
        if not events:
            self._backfill()
            self._recover()
            if waited and time.monotonic() - self._last["msg"] >= RECORDING_RETRY_S:  # quiet: ends dropped?
                self._ends_from_recording()
        self._decide()
        now = time.monotonic()
        if c.status_path and now - self._last["status"] >= 1.0:
            self._last["status"] = now
            self._write_status()
        if now - self._last["pic"] >= c.picture_interval_s:
            self._last["pic"] = now
            self.save_pictures()
        done = bool((c.max_scans and self.counters["scans_ended"] >= c.max_scans)
                    or (c.idle_timeout_s and now - self._last["msg"] >= c.idle_timeout_s))
        if not done:
            self._done_at = None
        elif self.model is None and self._backlog and self._no_model_coming(now):
            self._give_up_without_model()
        if self._backlog or (self.model is not None and (self._deferred or self._dropped)):
            return False  # work it knows of first: the last scan's skipped frames (the store and the disk are bounded)
        if done and any(not st.ended for st in self.scans.values()):
            self._open_next = 0.0  # a last look for ends the live queues dropped, whose tails are then read
            self._ends_from_recording(now)
            return not (self.model is not None and self._dropped)
        return done

    def _no_model_coming(self, now: float) -> bool:
        """Done, with frames waiting for a first model: none can come without a models endpoint; with one, the
        trainer is given ``model_wait_s`` from the moment the stage was first done."""
        if any(t.is_alive() for t in self.loaders):
            return False  # an announced model is being loaded
        if not self.config.models_endpoint:
            return True
        self._done_at = self._done_at if self._done_at is not None else now
        return now - self._done_at >= self.config.model_wait_s

    def _give_up_without_model(self) -> None:
        """Stop with the frames that waited for a model that never came: skipped (``skipped_no_model``), their
        positions measured all the same."""
        waiting = len(self._backlog)
        while self._backlog:
            frame, _ = self._backlog.popleft()
            self._skip(self.scans.get(frame.scan), 1, "no_model", frame)
        logger.warning("stopping with %d frames never reconstructed: no model %s", waiting,
                       f"was announced within {self.config.model_wait_s:g} s of the end"
                       if self.config.models_endpoint else "(no --model and no --models endpoint)")

    def _drain(self) -> None:
        """Take everything the live socket holds (so no queue hides there), but for at most a quarter of the
        latency budget at a time: reconstruction and decisions must run too."""
        t0 = time.perf_counter()
        deadline, received = t0 + self.config.max_lag_ms / 4e3, 0
        while True:
            try:
                self._on_live(recv_message(self.live, zmq.NOBLOCK))
            except zmq.Again:
                break
            received += 1
            if received % 16 == 0 and time.perf_counter() > deadline:
                break
        self.load.note_received(received, time.perf_counter() - t0)

    def _write_status(self, done: bool = False) -> None:
        if self.config.status_path:
            from streamer.status import write_status

            write_status(self.config.status_path, "steering", {**self.snapshot(), "feed_endpoint": self.feed.endpoint,
                                                               "done": done})

    def snapshot(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_s) * 1e3
        extra = {"decision_latency_ms_p50": float(np.percentile(lat, 50)),
                 "decision_latency_ms_p99": float(np.percentile(lat, 99))} if len(lat) else {}
        done, skipped = self.counters["reconstructed"], self.counters["skipped_behind"]
        return {"model_version": self.model_version, "scans": sorted(self.scans), **dict(self.counters), **extra,
                "reconstructed_fraction": done / (done + skipped) if done + skipped else 1.0, **self.load.status()}

    def save_pictures(self) -> list[Path]:
        """Render the mosaics that changed since their last picture, each into its scan's kept figure."""
        from steering.pictures import MosaicPicture, save_mosaic

        saved = []
        for scan, state in self.scans.items():
            if state.mosaic.frames and self._pictured.get(scan) != state.mosaic.frames:
                saved.append(save_mosaic(state, self.out, self._pictures.setdefault(scan, MosaicPicture())))
                self._pictured[scan] = state.mosaic.frames
        return saved


UNREAD = object()  # what Steering._read_recording returns for a recording it cannot read now
RECOVER_FRAMES = 256  # frames read from the recording at a time (then reconstructed in live-sized batches)
RECORDING_RETRY_S = 0.5  # a scan whose dropped frames are not on disk yet is looked for again after this
RECORDING_WAIT_S = 30.0  # and given up this long after its last frame found missing (the ingest writes a block
# at least every flush_interval_s)


def _telling(frame: Frame) -> bool:
    """Whether a frame can witness which run a recording is (:meth:`Steering._start_from_recording`): not
    when its pixels are all one value (a dark frame, a closed shutter), which any run's file may hold as well."""
    image = np.asarray(frame.image)
    return image.size > 1 and bool((image != image.flat[0]).any())


def _own_copy(frame: Frame) -> Frame:
    """The frame with its own copy of the pixels (a live frame's may be a view of a ZeroMQ buffer)."""
    return replace(frame, image=np.array(frame.image))


def recorded_frames(path: str, scan: int) -> int | None:
    """The frame count the ingest recorded at the end of ``scan`` (None: its end is not on disk)."""
    from streamer.hdf5 import open_for_reading

    with open_for_reading(path) as f:
        group = f.get(f"entry/series/{int(scan)}")
        return int(group.attrs["frames"]) if group is not None and "frames" in group.attrs else None


def recorded_series(path: str) -> list[int]:
    """The series ids the recording holds a header or an end for."""
    from streamer.hdf5 import Recording

    with Recording(path) as rec:
        return [int(k) for k in rec.series_headers() if k.isdigit()]


def recorded_header(path: str, scan: int) -> SeriesStartNotice | None:
    """The series header the ingest recorded for ``scan`` as a start notice (None: not on disk yet)."""
    from streamer.hdf5 import Recording

    with Recording(path) as rec:
        if str(int(scan)) not in rec.series_headers():
            return None
        config = rec.series_config(scan)
        if not config:
            return None
        tables = {k: v for k, v in rec.series_tables(scan).items() if k in ("pixelmask", "flatfield")}
        return SeriesStartNotice(scan=scan, config=config, detector_series=rec.detector_series(scan), tables=tables)


def read_dropped(path: str, scan: int, ranges: list[tuple[int, int]], limit: int) -> list[Frame]:
    """Up to ``limit`` frames of ``scan`` with ids in ``ranges`` ([a, b) each) from the recording at ``path``, as
    far as it is whole on disk; without their labels (steering never reads the truth). The recording may still be
    written by the ingest: only its ``complete()`` frames are looked at."""
    from streamer.hdf5 import Recording

    if limit < 1:
        return []
    with Recording(path) as rec:
        n = rec.complete()
        series, ids = rec.series_ids()[:n], rec.frame_ids()[:n]
        wanted = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.empty(0, np.int64)
        index = np.flatnonzero((series == scan) & np.isin(ids, wanted))[:limit]
        return [Frame(scan=scan, frame=f.frame_id, image=f.image, position_m=f.position_m, position_px=f.position_px)
                for f in rec.frames(indices=index)]


MAX_MOSAIC_PIXELS = 1 << 26  # a mosaic holds 7 float64 maps: 3.8 GB at this size


def scan_geometry(config: Any) -> tuple[tuple[int, int], int, float, float, int, int] | None:
    """(object shape, frame side, probe FWHM [px] or 0, probe curvature [rad], nimages, saturation) from a series
    configuration; None when it has no object geometry (a real detector's header); ValueError when a value is
    unusable. The ingest's own check (:func:`streamer.dectris.check_series_config`) runs again here, defensively,
    plus what a mosaic needs: its size, and a frame and probe that fit the object."""
    problem = check_series_config(config)
    if problem is not None:
        raise ValueError(problem)
    ext = config.get("ptychosteer", {})
    shape, frame = ext.get("object_shape"), config.get("y_pixels_in_detector", 0)
    if not shape or not frame:
        return None
    shape = (shape[0], shape[1])
    if shape[0] * shape[1] > MAX_MOSAIC_PIXELS:
        raise ValueError(f"object_shape {shape} exceeds {MAX_MOSAIC_PIXELS} pixels")
    if frame > min(shape):
        raise ValueError(f"y_pixels_in_detector {frame} exceeds the object {shape}")
    fwhm, curvature = ext.get("probe_diameter_px") or 0.0, ext.get("probe_curvature_rad", 1.0)
    if not 0 <= fwhm <= 2 * frame:
        raise ValueError(f"probe_diameter_px must be in 0..{2 * frame}, got {fwhm}")
    return (shape, frame, float(fwhm), float(curvature), config.get("nimages", 0),
            config.get("countrate_correction_count_cutoff", 0))


def use_threads(config: SteeringConfig) -> None:
    """The stage process's intra-op threads for CPU inference (process-wide: set by the stage's entry points, not
    by constructing a :class:`Steering`); beside trainer ranks on the same cores, one does not oversubscribe."""
    if torch.device(config.device).type == "cpu":
        torch.set_num_threads(config.threads)


def confined(path: str, directory: str) -> Path | None:
    """``path`` resolved (symlinks followed, ``..`` removed) if it is an existing ``model.pt`` inside
    ``directory``; else None. A path that arrives on a socket is never trusted further than that."""
    try:
        root = Path(directory).resolve(strict=True)
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        return None
    return real if real.name == "model.pt" and real.is_file() and real.is_relative_to(root) else None


def run(config: SteeringConfig, on_decision: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Stage entry point: steer until ``max_scans`` ended, the feed is idle, or Ctrl-C."""
    use_threads(config)
    steering = Steering(config, on_decision=on_decision)
    steering.start()
    try:
        return steering.run()
    except KeyboardInterrupt:
        return steering.snapshot()
    finally:
        steering.close()
