"""Series notices to every trainer rank: an XPUB beside the frames' PUSH.

The frames go to the trainer ranks round-robin (PUSH), so a notice sent on that socket reaches one rank only, and
a rank whose queue is full at that moment may get none: it would prepare the series' frames without the header's
beam centre, pixel mask and flatfield. The notices (``series_start`` with its tables, ``series_end``) are
therefore also published here, where every subscribed rank gets each one. A rank that subscribes late (a restarted
trainer, a slow joiner) gets the start notices of the series still open as soon as its subscription arrives; the
ranks that have them already get them again, which is harmless (the same header) but costs the header's size per
subscriber (an EIGER2 16M's mask and flatfield: about 145 MB): the pipeline therefore waits for every rank's
subscription before the detector starts, so only a restarted rank causes a resend. Only notices travel here, never
frames, so a subscriber's queue does not fill behind a frame stream. Resends are at most one per
``resend_interval_s``: subscriptions that arrive closer together share one (a client that keeps resubscribing
cannot make the publisher send large headers over and over).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import zmq


class NoticePublisher:
    """Bound XPUB for series notices; call :meth:`serve` now and then (it re-sends open headers to newcomers)."""

    def __init__(self, context: zmq.Context, endpoint: str, hwm: int = 10_000, resend_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sock = context.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, not only a topic's first and last
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise zmq.ZMQError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._open: dict[int, list[Any]] = {}  # series → its start notice, until the series ends
        self.subscribers = 0
        self.resent = 0  # start notices sent again for a newcomer
        self._interval, self._clock = resend_interval_s, clock
        self._resend_due = False
        self._last_resend = -float("inf")

    def start(self, series: int, parts: list[Any]) -> None:
        self._open[series] = parts
        self._publish(parts)

    def end(self, series: int, parts: list[Any]) -> None:
        self._open.pop(series, None)
        self._publish(parts)

    def serve(self) -> int:
        """Read subscription events; after new subscriptions, publish the open series' headers again (at most
        once per ``resend_interval_s``: a later call sends what is due). Returns the number of subscriptions now."""
        while True:
            try:
                event = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                self.subscribers += 1
                self._resend_due = True
            elif event[:1] == b"\x00":
                self.subscribers -= 1
        now = self._clock()
        if self._resend_due and now - self._last_resend >= self._interval:
            self._resend_due, self._last_resend = False, now
            for series in sorted(self._open):
                self._publish(self._open[series])
                self.resent += 1
        return self.subscribers

    def _publish(self, parts: list[Any]) -> None:
        # a PUB never blocks; a subscriber with 10,000 notices unread (a dead one) misses this one
        self._sock.send_multipart(parts, zmq.NOBLOCK, copy=False)

    def close(self, linger_ms: int = 1000) -> None:
        self._sock.close(linger=linger_ms)
