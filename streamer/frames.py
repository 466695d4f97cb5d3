"""The compact internal frame format, ingest → trainers (PUSH) and → live consumers (PUB).

One multipart message per frame: part 0 is a small JSON header, then raw little-endian buffers, sent with
``copy=False``. Header fields::

    {"schema": 1, "kind": "frame", "scan": 3, "frame": 17, "position_m": [y, x] | null,
     "position_px": [y, x] | null, "dtype": "uint16", "shape": [h, w], "label": true|false,
     "t_recv_ns": 1700000000000000000}

followed by the image buffer and, when ``label`` is true, the float32 amplitude and phase buffers of the same
shape. With ``"encoding": "bslz4"`` in the header the image buffer is the detector's bitshuffle-LZ4 blob (HDF5
framing) as it came, which :func:`decode_message` decodes: the consumers, not the ingest, pay for decoding.
``kind: "series_start"`` (the detector ``config``, and the header's ``pixelmask`` and ``flatfield`` as buffers
named in ``tables``; on the PUB, and one copy per connected trainer rank on the PUSH) and ``kind: "series_end"``
(no buffers; both sockets) mark the scan boundaries; on the PUB socket the topic is the first bytes of part 0
(``{"schema"``), so subscribe to ``b""``.

Consumers use :func:`decode_message`; it raises :class:`FrameFormatError` on anything malformed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Final, Sequence

import numpy as np

from streamer.compression import DTYPES, Chunk, DecodeError
from streamer.dectris import ImageFrame, loads, part_bytes

SCHEMA: Final = 1
_DTYPES: Final = ("uint8", "uint16", "uint32", "float32")
_NAMES: Final = {np.dtype(name).char: name for name in _DTYPES}  # dtype.name is slow on the hot path
_LE: Final = {name: np.dtype(name).newbyteorder("<") for name in _DTYPES}


_CHUNK: Final = '"encoding":"bslz4",'


class FrameFormatError(ValueError):
    """A message on an internal frame socket that does not follow this module's format."""


@dataclass(frozen=True)
class Frame:
    scan: int
    frame: int
    image: np.ndarray
    position_m: tuple[float, float] | None = None
    position_px: tuple[float, float] | None = None
    amplitude: np.ndarray | None = None
    phase: np.ndarray | None = None
    t_recv_ns: int = 0
    valid: np.ndarray | None = None  # after preparation (trainer.prepare): False where the pixel is masked

    @property
    def labelled(self) -> bool:
        return self.amplitude is not None and self.phase is not None


@dataclass(frozen=True)
class SeriesEndNotice:
    scan: int
    frames: int


def encode_frame(image: ImageFrame, t_recv_ns: int | None = None, buffers: Sequence[Any] | None = None) -> list[Any]:
    """Parts for one frame; buffers are the decoded arrays themselves (send with ``copy=False``).

    ``buffers`` replaces the arrays by objects holding the same little-endian bytes (the ingest passes the
    received zmq.Frames of a raw ``<`` image, which ZeroMQ then forwards without copying). The header is
    formatted by hand (the hot path of the ingest); it is plain JSON.
    """
    shape = image.shape
    head = (f'{{"schema":{SCHEMA},"kind":"frame","scan":{image.series},"frame":{image.frame},'
            f'"position_m":{_pair(image.position_m)},"position_px":{_pair(image.position_px)},'
            f'"dtype":"{_NAMES[image.dtype.char]}","shape":[{shape[0]},{shape[1]}],'
            f'"label":{"true" if image.labelled else "false"},'
            f'{_CHUNK if image.chunk is not None else ""}'
            f'"t_recv_ns":{time.time_ns() if t_recv_ns is None else t_recv_ns}}}')
    if buffers is not None:
        return [head.encode(), *buffers]
    parts: list[Any] = [head.encode(), image.image if image.chunk is None else image.chunk.data]
    if image.labelled:
        parts += [image.amplitude, image.phase]
    return parts


@dataclass(frozen=True)
class SeriesStartNotice:
    scan: int
    config: dict[str, Any]
    detector_series: int | None = None  # the detector's own series id, where the ingest renumbered a re-arming
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # the header's pixelmask and flatfield


def canonical_header(config: dict[str, Any]) -> str:
    """A series configuration as one comparable string (a NaN in a header equals itself here, not in a dict)."""
    return json.dumps(config, sort_keys=True, default=str)


def header_fingerprint(config: dict[str, Any]) -> str:
    """A short digest of a series configuration: which arming a series id belongs to. Detectors number series
    from 1 again after a restart; the arming date in the header (``data_collection_date``, ``arm_date``) tells
    two series of one id apart."""
    import hashlib

    return hashlib.sha256(canonical_header(config).encode()).hexdigest()[:16]


_NOTICE_TABLES: Final = {"pixelmask": "uint32", "flatfield": "float32"}


def encode_series_start(scan: int, config: dict[str, Any], detector_series: int | None = None,
                        tables: dict[str, np.ndarray] | None = None) -> list[Any]:
    """A series start; ``tables``: the header's ``pixelmask`` and ``flatfield`` (what preparing frames for the
    model needs), sent as raw little-endian buffers after the header, named in its ``tables``."""
    header: dict[str, Any] = {"schema": SCHEMA, "kind": "series_start", "scan": scan, "config": config}
    if detector_series is not None and detector_series != scan:
        header["detector_series"] = detector_series
    buffers = []
    for name, dtype in _NOTICE_TABLES.items():
        table = (tables or {}).get(name)
        if table is not None and table.ndim == 2:
            header.setdefault("tables", []).append({"name": name, "dtype": dtype, "shape": list(table.shape)})
            buffers.append(np.ascontiguousarray(table, dtype=_LE[dtype]))
    return [json.dumps(header, separators=(",", ":")).encode(), *buffers]


def _pair(value: tuple[float, float] | None) -> str:
    return "null" if value is None else f"[{float(value[0])!r},{float(value[1])!r}]"


def encode_series_end(scan: int, frames: int) -> list[bytes]:
    header = {"schema": SCHEMA, "kind": "series_end", "scan": scan, "frames": frames}
    return [json.dumps(header, separators=(",", ":")).encode()]


def recv_message(sock: Any, flags: int = 0) -> list[Any]:
    """One multipart message as zmq.Frames: ``recv_multipart(copy=False)`` without its per-part getsockopt.

    Raises ``zmq.Again`` with ``zmq.NOBLOCK`` when nothing is waiting; once the first part is here, the rest
    is too (ZeroMQ delivers multipart messages atomically).
    """
    part = sock.recv(flags, copy=False)
    parts = [part]
    while part.more:
        part = sock.recv(copy=False)
        parts.append(part)
    return parts


def _buf(part: Any) -> memoryview:
    """Bytes view of a zmq.Frame, bytes or array (as handed to ``send_multipart``)."""
    view = part.buffer if hasattr(part, "buffer") else memoryview(part)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _tables(specs: Any, parts: Sequence[Any]) -> dict[str, np.ndarray]:
    if not isinstance(specs, list) or len(specs) != len(parts):
        raise FrameFormatError(f"series_start announces {str(specs)[:100]} tables but has {len(parts)} buffers")
    out = {}
    for spec, part in zip(specs, parts):
        name, dtype, shape = (spec.get("name"), spec.get("dtype"), spec.get("shape")) if isinstance(spec, dict) \
            else (None, None, None)
        if name not in _NOTICE_TABLES or dtype != _NOTICE_TABLES[name] or not (
                isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise FrameFormatError(f"bad series_start table {str(spec)[:100]}")
        buf = _buf(part)
        if len(buf) != shape[0] * shape[1] * 4:
            raise FrameFormatError(f"series_start table {name} has {len(buf)} bytes for {shape}")
        out[name] = np.frombuffer(buf, dtype=_LE[dtype]).reshape(shape)
    return out


def decode_message(parts: Sequence[Any]) -> Frame | SeriesStartNotice | SeriesEndNotice:
    """Decode one internal message (zmq frames or bytes)."""
    if not parts:
        raise FrameFormatError("empty message")
    try:
        head = loads(part_bytes(parts[0]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FrameFormatError(f"header is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(head, dict) or head.get("schema") != SCHEMA:
        raise FrameFormatError(f"unsupported header (schema {SCHEMA} expected): {str(head)[:200]}")
    kind = head.get("kind")
    try:
        if kind == "series_end":
            return SeriesEndNotice(scan=int(head["scan"]), frames=int(head.get("frames", 0)))
        if kind == "series_start":
            own = head.get("detector_series")
            return SeriesStartNotice(scan=int(head["scan"]), config=dict(head.get("config") or {}),
                                     detector_series=int(own) if own is not None else None,
                                     tables=_tables(head.get("tables") or [], parts[1:]))
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameFormatError(f"bad {kind} notice: {exc}") from exc
    if kind != "frame":
        raise FrameFormatError(f"unknown message kind {kind!r}")
    shape, dtype = head.get("shape"), head.get("dtype")
    if not isinstance(dtype, str) or dtype not in _LE or not (isinstance(shape, list) and len(shape) == 2
                                and all(isinstance(v, int) and v > 0 for v in shape)):
        raise FrameFormatError(f"bad dtype/shape {dtype!r} {shape!r}")
    shape = (shape[0], shape[1])
    need = 4 if head.get("label") else 2
    if len(parts) != need:
        raise FrameFormatError(f"expected {need} parts, got {len(parts)}")
    arrays = []
    encoding = head.get("encoding")
    if encoding is not None:
        if encoding != "bslz4" or dtype not in DTYPES:
            raise FrameFormatError(f"unknown frame encoding {str(encoding)[:40]!r} for {dtype}")
        try:
            arrays.append(Chunk(_buf(parts[1]), shape, dtype).decode())
        except DecodeError as exc:
            raise FrameFormatError(f"the frame's bitshuffle-LZ4 blob does not decode: {exc}") from exc
    for part, dt in list(zip(parts[1:], (_LE[dtype], _LE["float32"], _LE["float32"])))[len(arrays):]:
        buf = _buf(part)
        if len(buf) != shape[0] * shape[1] * dt.itemsize:
            raise FrameFormatError(f"buffer of {len(buf)} bytes does not match {dt.name} {list(shape)}")
        arrays.append(np.frombuffer(buf, dtype=dt).reshape(shape))
    pos, pos_px = head.get("position_m"), head.get("position_px")
    try:
        return Frame(scan=int(head["scan"]), frame=int(head["frame"]), image=arrays[0],
                     position_m=tuple(pos) if pos else None, position_px=tuple(pos_px) if pos_px else None,
                     amplitude=arrays[1] if need == 4 else None, phase=arrays[2] if need == 4 else None,
                     t_recv_ns=int(head.get("t_recv_ns", 0)))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise FrameFormatError(f"bad frame header fields: {str(exc)[:200]}") from exc
