"""The decision feed: an XPUB publisher that greets every new subscriber with the latest state, and a subscriber.

A late subscriber gets, at once, the last decision of each kind for the current scan (last-value cache keyed by
kind), then the live feed. The publisher never blocks: a subscriber that never reads loses messages at its
high-water mark (counted by ZeroMQ, not by us), the loop goes on. Optional CURVE: with ``server_secret`` set,
only clients whose public key is in ``authorized_keys`` can connect (pyzmq's ``zmq.auth`` thread authenticator).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Iterator

import zmq

from steering.protocol import Decision, DecisionFormatError, decode, encode
from streamer.netsec import curve_client as client_curve
from streamer.netsec import curve_server

logger = logging.getLogger(__name__)


class DecisionPublisher:
    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, hwm: int = 1000,
                 curve_secret: Path | None = None, authorized_keys: Path | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._auth = None
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, also repeated ones
        if curve_secret is not None:
            self._curve(curve_secret, authorized_keys)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._last: dict[str, list[bytes]] = {}
        self._scan = -1
        self.session = secrets.token_hex(8)  # with seq, identifies each decision (followers act on it once)
        self.seq = 0
        self.published = 0
        self.greeted = 0

    def _curve(self, secret: Path, authorized: Path | None) -> None:
        self._auth = curve_server(self._sock, self._ctx, secret, authorized)

    def publish(self, decision: Decision) -> Decision:
        self.seq += 1
        stamped = Decision(**{**decision.__dict__, "seq": self.seq, "session": self.session})
        parts = encode(stamped)
        if stamped.scan > self._scan:
            self._last.clear()  # a new scan: the cached state of the old one is stale
            self._scan = stamped.scan
        if stamped.scan == self._scan:  # an older scan's late heartbeat must not evict the current scan's state
            self._last[stamped.kind] = parts
        self._send(parts)
        self.published += 1
        return stamped

    def _send(self, parts: list[bytes]) -> None:
        try:
            self._sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:  # pragma: no cover - XPUB drops rather than blocks; kept for safety
            pass

    def service(self) -> None:
        """Handle pending subscriptions: each new subscriber gets the cached latest state. Call often."""
        while True:
            try:
                event = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                topic = event[1:]
                for parts in self._last.values():
                    if parts[0].startswith(topic):
                        self._send(parts)
                self.greeted += 1

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()


def subscribe(endpoint: str, *, topic: bytes = b"steer.", context: zmq.Context | None = None,
              timeout_ms: int = 1000, curve_server_key: Path | None = None, curve_client: Path | None = None
              ) -> Iterator[Decision | None]:
    """Yield decisions as they arrive (``None`` every ``timeout_ms`` without one, so callers can stop)."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    bad = 0
    try:
        if curve_server_key is not None and curve_client is not None:
            client_curve(sock, curve_server_key, curve_client)
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
        while True:
            if not sock.poll(timeout_ms):
                yield None
                continue
            parts = sock.recv_multipart()
            try:
                yield decode(parts)
            except DecisionFormatError as exc:
                bad += 1
                if bad == 1:
                    logger.warning("ignoring malformed decision message: %s (further ones only counted)", exc)
    finally:
        sock.close(linger=0)
