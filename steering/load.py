"""Bounded decision latency under overload: which frames steering reconstructs when more arrive than it can.

When the detector outruns inference, reconstructing every frame in turn makes each decision describe the sample
as it was seconds ago. :class:`LoadShedder` bounds the *latency* instead of the queue length:

- **Age from the ingest's receipt.** A frame's age counts from ``t_recv_ns``, stamped by the ingest when the frame
  arrived from the detector, so the time it spent in the live PUB/SUB queues and the kernel's buffers (queues
  steering cannot see) is part of it. The two processes' clocks are related by the smallest offset seen
  (``wall clock at receipt here − t_recv_ns``, minimum over a sliding window): a clock skew between hosts cancels,
  and the age is underestimated by at most the fastest one-way transit (well under a millisecond on a LAN).
- **A cost model, measured as it runs.** Per received frame: the time to take it off the socket and decode it
  (``d``); per reconstructed frame: the model, the forward-model check and the mosaic (``c``); per batch: the
  decision step (``e``). Exponential moving averages of each.
- **Even thinning, not lost regions.** While the admitted frames waiting leave a new frame within a quarter of
  its budget, every frame is taken (a burst is absorbed). Beyond, with ``λ`` frames/s arriving, the fraction
  ``p`` admitted for reconstruction is the largest that keeps the busy fraction of the stage at ``utilisation``:
  ``λ·d + p·λ·(c + e/n) ≤ utilisation`` (but at least ``min_fraction``). Frames are admitted by an error-diffusion accumulator (``acc += p``; a
  frame is taken when ``acc ≥ 1``), so the skipped frames are spread evenly along the scan — in a raster, the
  kept positions shift from row to row and the mosaic stays covered — instead of whole stretches of the scan
  being dropped. Every arriving frame still counts for the scan's progress.
- **Batches up to what the budget allows.** A batch holds what has been admitted, up to ``batch_max``, and no
  more than a quarter of the budget's worth of reconstruction. Frames are not held back to fill a batch: the
  batch is what waited while the previous one ran. Batches are cheaper per frame (PtychoNN nconv 8 at 32×32 on
  one CPU thread: 2.8 ms per frame alone, 0.8 ms in a batch of 16, 2026-12-03; more so on a GPU), so under load
  the stage keeps up with more than the single-frame cost suggests.
- **A deadline, as a safety net.** A frame that could no longer be reconstructed within ``max_lag_s`` of its
  receipt (its age plus the predicted batch time, against the budget less a ``margin`` for what no prediction
  sees: the scheduler, other processes on the same cores) is skipped, oldest first, when it would be taken. In steady
  overload the thinning leaves nothing for this net; it catches transients (a model swap, a burst).

The class is pure bookkeeping with an injectable clock, so it is tested on constructed timings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class _Ewma:
    alpha: float
    value: float = float("nan")

    def update(self, x: float) -> float:
        self.value = x if math.isnan(self.value) else self.value + self.alpha * (x - self.value)
        return self.value

    def get(self, default: float) -> float:
        return default if math.isnan(self.value) else self.value


@dataclass
class LoadShedder:
    max_lag_s: float  # the latency budget: ingest receipt → decision
    batch_max: int = 64
    utilisation: float = 0.85  # the busy fraction the admission aims at (headroom for bursts and decisions)
    min_fraction: float = 0.02  # even when receiving alone fills the stage, one frame in 50 is tried
    margin: float = 0.2  # of the budget, kept for what no prediction sees (the scheduler, a page fault)
    window_s: float = 0.25  # arrival-rate window (or ``window_frames`` frames, whichever comes first)
    window_frames: int = 32
    offset_window_s: float = 30.0  # the clock-offset minimum is taken over the last one to two windows
    clock: Callable[[], float] = time.monotonic
    wall_ns: Callable[[], int] = time.time_ns
    fraction: float = 1.0  # the sustainable fraction: taken once the frames waiting fill a quarter of the budget
    admitted_fraction: float = 1.0  # of the frames that arrived in the last rate window, the share taken
    _seen: int = 0
    _taken: int = 0
    _acc: float = 0.0
    _decode: _Ewma = field(default_factory=lambda: _Ewma(0.05))
    _frame: _Ewma = field(default_factory=lambda: _Ewma(0.2))
    _decide: _Ewma = field(default_factory=lambda: _Ewma(0.2))
    _rate: _Ewma = field(default_factory=lambda: _Ewma(0.5))
    _window_start: float = float("nan")
    _window_count: int = 0
    _offsets: list = field(default_factory=lambda: [math.inf, math.inf])  # min offset: current, previous window
    _offset_since: float = float("nan")

    def __post_init__(self) -> None:
        if not self.max_lag_s > 0 or self.batch_max < 1 or not 0 < self.utilisation <= 1 or not 0 <= self.margin < 1:
            raise ValueError("max_lag_s must be > 0, batch_max >= 1, utilisation in (0, 1] and margin in [0, 1)")

    # -------------------------------------------------------------- arrivals
    def arrival(self, t_recv_ns: int) -> float:
        """The frame's receipt at the ingest on this process's monotonic clock (now when it carries no stamp)."""
        now = self.clock()
        if not t_recv_ns:
            return now
        offset = self.wall_ns() - t_recv_ns
        if math.isnan(self._offset_since) or now - self._offset_since >= self.offset_window_s:
            self._offsets = [math.inf, self._offsets[0]]
            self._offset_since = now
        self._offsets[0] = min(self._offsets[0], offset)
        age = (offset - min(self._offsets)) / 1e9
        return now - age

    def admit(self, arrival: float, waiting: int = 0) -> bool:
        """One frame arrived (in arrival order; ``arrival`` from :meth:`arrival`; ``waiting`` admitted frames are
        ahead of it): take it for reconstruction, or skip it to keep up. While the frames ahead leave the frame
        well within its budget (a quarter of it), every frame is taken: a finite burst is absorbed, not thinned.
        Beyond, the sustainable fraction is taken, evenly spread. The arrival rate is measured on the receipt
        times, so a burst that queued up while the stage was busy is not mistaken for a faster detector."""
        if math.isnan(self._window_start):
            self._window_start = arrival
        self._window_count += 1
        span = arrival - self._window_start
        if span > 0 and (span >= self.window_s or self._window_count >= self.window_frames):
            self._rate.update(self._window_count / span)
            self._window_start, self._window_count = arrival, 0
            self.fraction = self._admissible()
            self.admitted_fraction = self._taken / max(1, self._seen)
            self._seen = self._taken = 0
        self._seen += 1
        wait = self.clock() - arrival + waiting * self._frame.get(0.0)
        if wait <= self.max_lag_s / 4:
            take = True
        else:
            self._acc += self.fraction
            take = self._acc >= 1.0
            if take:
                self._acc -= 1.0
        self._taken += take
        return take

    def _admissible(self) -> float:
        rate = self._rate.get(0.0)
        c = self._frame.get(0.0)
        if rate <= 0 or c <= 0:
            return 1.0
        n = max(1.0, min(self.batch_max, self.fraction * rate * self.max_lag_s / 4))  # the batch it would run
        per_admitted = c + self._decide.get(0.0) / n
        spare = self.utilisation - rate * self._decode.get(0.0)
        return min(1.0, max(self.min_fraction, spare / (rate * per_admitted)))

    # -------------------------------------------------------------- measured costs
    def note_received(self, frames: int, seconds: float) -> None:
        if frames:
            self._decode.update(seconds / frames)

    def note_batch(self, frames: int, seconds: float) -> None:
        if frames:
            self._frame.update(seconds / frames)

    def note_decide(self, seconds: float) -> None:
        self._decide.update(seconds)

    # -------------------------------------------------------------- taking frames
    def batch_size(self, waiting: int) -> int:
        """How many of ``waiting`` admitted frames the next batch takes."""
        c = self._frame.get(0.0)
        cap = self.batch_max if c <= 0 else max(1, min(self.batch_max, int(self.max_lag_s / 4 / c)))
        return min(waiting, cap)

    def late(self, arrival: float, batch: int) -> bool:
        """Whether a frame that arrived at ``arrival`` can no longer be reconstructed within the budget."""
        predicted = self._frame.get(0.0) * batch + self._decide.get(0.0)
        return self.clock() - arrival + predicted > self.max_lag_s * (1 - self.margin)

    def status(self) -> dict[str, float]:
        return {"admitted_fraction": round(self.admitted_fraction, 4),
                "sustainable_fraction": round(self.fraction, 4),
                "arrival_rate_hz": round(self._rate.get(0.0), 1),
                "reconstruct_ms_per_frame": round(1e3 * self._frame.get(0.0), 3),
                "receive_ms_per_frame": round(1e3 * self._decode.get(0.0), 4),
                "decide_ms": round(1e3 * self._decide.get(0.0), 3)}
