"""Series notices to every trainer rank: an XPUB beside the frames' PUSH.

The frames go to the trainer ranks round-robin (PUSH), so a notice sent on that socket reaches one rank only, and
a rank whose queue is full at that moment may get none: it would prepare the series' frames without the header's
beam centre, pixel mask and flatfield. The notices (``series_start`` with its tables, ``series_end``) are
therefore also published here, where every subscribed rank gets each one. Only notices travel here, never frames,
so a subscriber's queue does not fill behind a frame stream.

Each message carries a topic frame first: :data:`BROADCAST` for the notices every subscriber gets, or
``b"to:" + id`` for one subscriber alone. A consumer subscribes with :func:`subscribe` (the broadcast topic and one
of its own, a random 32-hex-digit id) and strips the topic with :func:`unwrap`. A rank that subscribes late (a
restarted trainer, a slow joiner) gets the start notices of the series still open as soon as its subscription
arrives, on its own topic: the ranks that have them already do not get them again (an EIGER2 16M's mask and
flatfield are about 145 MB per copy). Resends are at most one round per ``resend_interval_s``: subscriptions that
arrive closer together share one (a client that keeps resubscribing under new ids costs at most one round of
headers per interval, each sent to it alone).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Sequence

import zmq

BROADCAST = b"notice"
TARGET = b"to:"  # + a subscriber's own id: the open headers, for that newcomer only


def subscribe(sock: zmq.Socket) -> bytes:
    """Subscribe a SUB socket to the broadcast notices and to a topic of its own (for resends to it alone);
    returns that topic. Call before ``connect``."""
    own = TARGET + uuid.uuid4().hex.encode()
    sock.setsockopt(zmq.SUBSCRIBE, BROADCAST)
    sock.setsockopt(zmq.SUBSCRIBE, own)
    return own


def unwrap(parts: Sequence[Any]) -> list[Any]:
    """The notice without its topic frame (``ValueError`` for a message without one)."""
    if len(parts) < 2:
        raise ValueError("a notice has a topic frame and at least one more")
    return list(parts[1:])


class NoticePublisher:
    """Bound XPUB for series notices; call :meth:`serve` now and then (it sends the open headers to newcomers)."""

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
        self.subscribers = 0  # subscriptions to the broadcast topic
        self.resent = 0  # start notices sent again, each to one newcomer
        self._interval, self._clock = resend_interval_s, clock
        self._newcomers: set[bytes] = set()  # own topics subscribed since the last resend round
        self._last_resend = -float("inf")

    def start(self, series: int, parts: list[Any]) -> None:
        self._open[series] = parts
        self._publish(BROADCAST, parts)

    def end(self, series: int, parts: list[Any]) -> None:
        self._open.pop(series, None)
        self._publish(BROADCAST, parts)

    def serve(self) -> int:
        """Read subscription events; send the open series' headers to each newcomer on its own topic (one round
        at most per ``resend_interval_s``: a later call sends what is due). Returns the broadcast subscriptions
        now."""
        while True:
            try:
                event = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            kind, topic = event[:1], event[1:]
            if topic == BROADCAST:
                self.subscribers += 1 if kind == b"\x01" else -1 if kind == b"\x00" else 0
            elif topic.startswith(TARGET) and len(topic) > len(TARGET):
                if kind == b"\x01":
                    self._newcomers.add(topic)
                elif kind == b"\x00":
                    self._newcomers.discard(topic)
        now = self._clock()
        if self._newcomers and now - self._last_resend >= self._interval:
            self._last_resend = now
            for topic in sorted(self._newcomers):
                for series in sorted(self._open):
                    self._publish(topic, self._open[series])
                    self.resent += 1
            self._newcomers.clear()
        return self.subscribers

    def _publish(self, topic: bytes, parts: list[Any]) -> None:
        # a PUB never blocks; a subscriber with 10,000 notices unread (a dead one) misses this one
        self._sock.send_multipart([topic, *parts], zmq.NOBLOCK, copy=False)

    def close(self, linger_ms: int = 1000) -> None:
        self._sock.close(linger=linger_ms)
