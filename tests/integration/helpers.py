"""Test helpers: a running ingest in a thread, a raw detector socket, and frame hashing."""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import zmq

from streamer.config import IngestConfig
from streamer.ingest import Ingest


@contextmanager
def running_ingest(config: IngestConfig, ctx: zmq.Context) -> Iterator[tuple[Ingest, threading.Thread]]:
    """Start an ingest, run it in a thread; on exit wait for it to finish (bounded) and close it."""
    ingest = Ingest(config, context=ctx)
    ingest.start()
    thread = threading.Thread(target=ingest.run, daemon=True)
    thread.start()
    try:
        yield ingest, thread
    finally:
        thread.join(timeout=60)
        if thread.is_alive():
            ingest.stop()
            thread.join(timeout=10)
        ingest.close()


def raw_detector(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(zmq.PUSH)
    sock.bind("tcp://127.0.0.1:*")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def frame_digest(images: Iterator[np.ndarray]) -> str:
    h = hashlib.sha256()
    for image in images:
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()
