"""DECTRIS SIMPLON stream v2: one CBOR message per ZeroMQ message (``start``, ``image``, ``end``).

Parsed into the same :class:`~streamer.dectris.SeriesHeader` / ``ImageFrame`` / ``SeriesEnd`` as stream v1, so
one ingest records both protocols in one HDF5 layout. From DECTRIS's public specification (``stream_v2/README.md``
and ``cbor/dectris-compression-tag.md`` of the ``dectris/documentation`` repository):

* every message is a CBOR map of text keys (optionally behind the self-described tag 55799) with a ``type``;
* images are ``data: {channel: MultiDimArray}``, one entry per threshold channel, in the start message's
  ``channels`` order; a MultiDimArray is tag 40 ``[[rows, columns], typed array]`` (RFC 8746, row-major), the
  typed array a tag (64 uint8, 69 uint16 LE, 70 uint32 LE, 85 float32 LE, ...) over a byte string, and where
  the detector compresses, that byte string is DECTRIS's tag 56500 ``[algorithm, modifier, bytes]``
  (``bslz4`` with the element size, or ``lz4`` with 0; both in the HDF5 filters' framing);
* times are rationals ``[ticks, time base]`` (seconds), ``start_time``/``stop_time`` relative to ``series_date``;
* ``user_data`` (any CBOR) in start and image messages is the detector's header/image appendix.

The start message's keys are kept in the series configuration as sent (JSON-safe), plus the stream v1 names
the pipeline reads (``x_pixels_in_detector``, ``nimages``, ``x_pixel_size``, ``photon_energy``, ...). Its
flatfield, pixel mask and count-rate table become the series tables (per channel where there are several).

ptychosteer's simulator puts what stream v1 sends in its image appendix into ``user_data`` under the key
``ptychosteer`` (positions; in simulation the ground-truth patch as two float32 MultiDimArrays); a foreign
``user_data`` is kept per frame as its CBOR encoding.

CBOR is decoded with ``cbor2`` (a tag hook that keeps compressed blobs as they are), compressed data with
DECTRIS's ``dectris-compression``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Sequence

import cbor2
import numpy as np

from streamer.compression import Chunk, DecodeError, decode, encode_bslz4, encode_lz4_hdf5
from streamer.dectris import (MAX_PIXELS, MAX_SIDE, EXT_HTYPE, ImageFrame, MalformedMessage, Message, Part,
                              SeriesEnd, SeriesHeader, _buffer, _pair, check_series_config)

SELF_DESCRIBED: Final = 55799
TAG_MULTIDIM: Final = 40
TAG_COMPRESSED: Final = 56500
# RFC 8746 typed-array tags this pipeline reads (little-endian and byte-order-free ones)
TYPED_TAGS: Final = {64: "uint8", 69: "uint16", 70: "uint32", 71: "uint64", 85: "float32", 86: "float64"}
_TAG_OF: Final = {v: k for k, v in TYPED_TAGS.items()}
_IMAGE_DTYPES: Final = ("uint8", "uint16", "uint32")
EXT_KEY: Final = EXT_HTYPE.split("-")[0]  # "ptychosteer" in user_data
# stream v2 start keys → the stream v1 configuration names the pipeline reads
_V1_NAMES: Final = {"image_size_x": "x_pixels_in_detector", "image_size_y": "y_pixels_in_detector",
                    "pixel_size_x": "x_pixel_size", "pixel_size_y": "y_pixel_size", "number_of_images": "nimages",
                    "incident_energy": "photon_energy", "incident_wavelength": "wavelength",
                    "saturation_value": "countrate_correction_count_cutoff"}
_TABLES: Final = (("flatfield", "flatfield"), ("pixel_mask", "pixelmask"))


@dataclass(frozen=True)
class _Compressed:
    algorithm: str
    modifier: int
    data: bytes


@dataclass(frozen=True)
class _Typed:
    tag: int
    payload: "bytes | _Compressed"


@dataclass(frozen=True)
class _MultiDim:
    shape: tuple[int, ...]
    typed: _Typed


def _tag_hook(tag: cbor2.CBORTag, immutable: bool = False) -> Any:
    """Keep DECTRIS's compressed blobs and typed arrays as they are (decoded later, or never: see Chunk)."""
    value = tag.value
    if tag.tag == TAG_COMPRESSED:
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[1], int) and not isinstance(value[1], bool) and isinstance(value[2], bytes)):
            raise MalformedMessage("malformed_cbor", "tag 56500 must be [algorithm, modifier, bytes]")
        return _Compressed(value[0], value[1], value[2])
    if tag.tag in TYPED_TAGS:
        if not isinstance(value, (bytes, _Compressed)):
            raise MalformedMessage("malformed_cbor", f"typed array tag {tag.tag} must hold a byte string")
        return _Typed(tag.tag, value)
    if tag.tag == TAG_MULTIDIM:
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (list, tuple))
                and isinstance(value[1], _Typed)):
            raise MalformedMessage("malformed_cbor", "tag 40 must be [dimensions, typed array]")
        dims = value[0]
        if not (1 <= len(dims) <= 3 and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIDE
                                             for d in dims) and math.prod(dims) <= MAX_PIXELS):
            raise MalformedMessage("malformed_json", f"array dimensions must be 1 to 3 sizes in 1..{MAX_SIDE}, at most "
                                                     f"{MAX_PIXELS} elements, got {str(dims)[:100]}")
        return _MultiDim(tuple(dims), value[1])
    return tag


def _array(item: Any, what: str, keep_chunk: bool = False) -> "np.ndarray | Chunk":
    """A MultiDimArray (or a bare typed array) as a numpy array, or as a Chunk where kept compressed."""
    if isinstance(item, _Typed):
        item = _MultiDim((-1,), item)
    if not isinstance(item, _MultiDim):
        raise MalformedMessage("malformed_cbor", f"{what} must be a tag-40 multi-dimensional typed array, "
                                                 f"got {type(item).__name__}")
    dtype = TYPED_TAGS[item.typed.tag]
    payload = item.typed.payload
    shape = item.shape
    itemsize = np.dtype(dtype).itemsize
    if isinstance(payload, _Compressed):
        if shape == (-1,):
            raise MalformedMessage("malformed_cbor", f"{what}: a compressed typed array needs tag 40's dimensions")
        if payload.algorithm == "bslz4":
            if payload.modifier != itemsize:
                raise MalformedMessage("size_mismatch", f"{what}: bslz4 element size {payload.modifier} for "
                                                        f"{dtype} data")
            encoding = f"bs{itemsize * 8}-lz4<"
        elif payload.algorithm == "lz4":
            encoding = "lz4-hdf5<"
        else:
            raise MalformedMessage("unknown_encoding", f"{what}: compression {payload.algorithm[:40]!r} is not "
                                                       "bslz4 or lz4")
        if keep_chunk and encoding != "lz4-hdf5<" and len(shape) == 2 and dtype in _IMAGE_DTYPES:
            chunk = Chunk(payload.data, (shape[0], shape[1]), dtype)
            try:
                chunk.check()
            except DecodeError as exc:
                raise MalformedMessage(exc.kind, f"{what}: {exc}") from exc
            return chunk
        blob, wire_dtype = payload.data, dtype
    else:
        encoding, blob, wire_dtype = "<", payload, dtype
        if shape == (-1,):
            if len(blob) % itemsize:
                raise MalformedMessage("size_mismatch", f"{what}: {len(blob)} bytes of {dtype}")
            shape = (len(blob) // itemsize,)
    try:
        return decode(blob, encoding, wire_dtype, shape, any_type=True)
    except DecodeError as exc:
        raise MalformedMessage(exc.kind, f"{what}: {exc}") from exc


def loads(data: bytes | memoryview) -> Mapping[str, Any]:
    """One stream v2 message as a mapping (typed arrays still wrapped); raises MalformedMessage."""
    try:
        obj = cbor2.loads(data, tag_hook=_tag_hook, max_depth=64)
    except MalformedMessage:
        raise
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError, KeyError,
            IndexError) as exc:
        cause = exc.__cause__  # cbor2 wraps what the tag hook raised
        if isinstance(cause, MalformedMessage):
            raise cause from None
        raise MalformedMessage("malformed_cbor", f"not valid CBOR: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if isinstance(obj, cbor2.CBORTag) and obj.tag == SELF_DESCRIBED:  # where the library leaves it on
        obj = obj.value
    if not isinstance(obj, Mapping):
        raise MalformedMessage("malformed_cbor", f"a stream v2 message is a CBOR map, got {type(obj).__name__}")
    return obj


def parse(parts: Sequence[Part], *, keep_chunks: bool = False) -> Message:
    """Parse one stream v2 message (one ZeroMQ message part); raises :class:`MalformedMessage` with a counter kind.

    ``keep_chunks``: a ``bslz4`` image is not decoded, only its framing checked (see :class:`Chunk`).
    """
    if not parts:
        raise MalformedMessage("missing_parts", "empty message")
    head = bytes(_buffer(parts[0])[:1])
    if len(parts) > 1 or head == b"{":
        raise MalformedMessage("wrong_protocol", f"a {len(parts)}-part message starting {head!r}: this is SIMPLON "
                                                 "stream v1 (multipart JSON), not v2; run the ingest with "
                                                 "--protocol v1")
    msg = loads(_buffer(parts[0]))
    kind = msg.get("type")
    if kind == "image":
        return _image(msg, keep_chunks)
    if kind == "start":
        return _start(msg)
    if kind == "end":
        return SeriesEnd(series=_uint(msg, "series_id", "end"))
    raise MalformedMessage("unknown_htype", f"unknown stream v2 message type {str(kind)[:40]!r}")


def _uint(msg: Mapping[str, Any], key: str, what: str) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise MalformedMessage("malformed_json", f"{what} lacks a valid {key!r} (got {str(value)[:60]})")
    return value


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a decoded CBOR value (typed arrays reduced to a description)."""
    if depth > 32:
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, _MultiDim):
        return {"array": TYPED_TAGS[value.typed.tag], "shape": list(value.shape)}
    if isinstance(value, (bytes, _Typed, _Compressed)):
        return {"bytes": len(value) if isinstance(value, bytes) else None}
    return str(value)[:200]


def _start(msg: Mapping[str, Any]) -> SeriesHeader:
    series = _uint(msg, "series_id", "start")
    config = {k: _jsonable(v) for k, v in msg.items() if k not in ("flatfield", "pixel_mask",
                                                                  "countrate_correction_lookup_table", "user_data")}
    config["stream"] = "v2"
    for v2, v1 in _V1_NAMES.items():
        if v2 in config:
            config[v1] = config[v2]
    if "number_of_images" in config:
        config.setdefault("ntrigger", 1)
    user = msg.get("user_data")
    appendix = None
    if isinstance(user, Mapping) and isinstance(user.get(EXT_KEY), Mapping):
        config[EXT_KEY] = _jsonable(user[EXT_KEY])
    elif user is not None:
        appendix = json.dumps(_jsonable(user), separators=(",", ":"))
    channels = msg.get("channels")
    names = [c for c in channels if isinstance(c, str)] if isinstance(channels, (list, tuple)) else []
    tables: dict[str, np.ndarray] = {}
    for key, name in _TABLES:
        per_channel = msg.get(key)
        if per_channel is None:
            continue
        if not isinstance(per_channel, Mapping):
            raise MalformedMessage("malformed_cbor", f"start {key} must map channel names to arrays")
        for i, (channel, item) in enumerate(per_channel.items()):
            first = channel == (names[0] if names else None) or (not names and i == 0)
            tables[name if first else f"{name}_{channel}"] = np.asarray(_array(item, f"start {key}[{channel}]"))
    table = msg.get("countrate_correction_lookup_table")
    if table is not None:
        tables["countrate_table"] = np.asarray(_array(table, "start countrate_correction_lookup_table"))
    for name, arr in tables.items():
        if name.startswith(("flatfield", "pixelmask")) and arr.ndim != 2:
            raise MalformedMessage("malformed_cbor", f"start {name} must be 2-d, got shape {arr.shape}")
    return SeriesHeader(series=series, detail="all" if tables else "basic", config=config, tables=tables,
                        appendix=appendix)


def _ns(msg: Mapping[str, Any], key: str) -> int:
    """A rational [ticks, time base] in seconds → ns (absent: 0)."""
    value = msg.get(key)
    if value is None:
        return 0
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63 for v in value)
            and value[1] > 0):
        raise MalformedMessage("malformed_json", f"image {key} must be a rational [ticks, time base > 0], got "
                                                 f"{str(value)[:60]}")
    return min(value[0] * 1_000_000_000 // value[1], (1 << 63) - 1)


def _image(msg: Mapping[str, Any], keep_chunks: bool) -> ImageFrame:
    series = _uint(msg, "series_id", "image")
    frame = _uint(msg, "image_id", "image")
    data = msg.get("data")
    if not isinstance(data, Mapping) or not data:
        raise MalformedMessage("missing_parts", "image message without data (a map of channel name → array)")
    channels: list[tuple[str, Any]] = []
    for name, item in data.items():
        arr = _array(item, f"image data[{str(name)[:40]}]", keep_chunks)
        if len(arr.shape) != 2 or str(arr.dtype) not in _IMAGE_DTYPES:
            raise MalformedMessage("unknown_dtype", f"image data[{str(name)[:40]}] must be a 2-d uint8/16/32 array, "
                                                    f"got {arr.dtype} {arr.shape}")
        channels.append((str(name), arr))
    shape = tuple(channels[0][1].shape)
    if any(tuple(a.shape) != shape for _, a in channels):
        raise MalformedMessage("shape_changed", "the channels of one image differ in shape")
    first_name, first = channels[0]
    user = msg.get("user_data")
    ext = user.get(EXT_KEY) if isinstance(user, Mapping) and isinstance(user.get(EXT_KEY), Mapping) else None
    appendix = None
    amplitude = phase = None
    pos = pos_px = None
    if ext is not None:
        pos, pos_px = (_pair(list(v) if isinstance(v, tuple) else v, name)  # v1's check (cbor2 gives tuples)
                       for name, v in (("position_m", ext.get("position_m")), ("position_px", ext.get("position_px"))))
        if ext.get("amplitude") is not None or ext.get("phase") is not None:
            amplitude = _array(ext.get("amplitude"), "user_data amplitude")
            phase = _array(ext.get("phase"), "user_data phase")
            if amplitude.dtype != np.float32 or phase.dtype != np.float32:
                raise MalformedMessage("malformed_json", "labels must be float32 arrays")
            if amplitude.shape != shape or phase.shape != shape:
                raise MalformedMessage("label_shape", f"labels of shape {amplitude.shape} for an image of {shape}")
    elif user is not None:
        appendix = cbor2.dumps(user, default=_reencode)
    is_chunk = isinstance(first, Chunk)
    payload = getattr(data[first_name], "typed", None)
    compressed = getattr(payload, "payload", None)
    encoding = f"v2:{compressed.algorithm}" if isinstance(compressed, _Compressed) else "v2:none"
    return ImageFrame(series=series, frame=frame, image=None if is_chunk else first, encoding=encoding,
                      start_time_ns=_ns(msg, "start_time"), stop_time_ns=_ns(msg, "stop_time"),
                      real_time_ns=_ns(msg, "real_time"), position_m=pos, position_px=pos_px, amplitude=amplitude,
                      phase=phase, appendix=appendix, chunk=first if is_chunk else None,
                      channels=tuple(channels[1:]), channel=first_name)


def _reencode(encoder: cbor2.CBOREncoder, value: Any) -> None:
    """Encode the parser's wrappers back into their tags (a foreign user_data kept as CBOR)."""
    if isinstance(value, _MultiDim):
        encoder.encode(cbor2.CBORTag(TAG_MULTIDIM, [list(value.shape), value.typed]))
    elif isinstance(value, _Typed):
        encoder.encode(cbor2.CBORTag(value.tag, value.payload))
    elif isinstance(value, _Compressed):
        encoder.encode(cbor2.CBORTag(TAG_COMPRESSED, [value.algorithm, value.modifier, value.data]))
    else:
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__}")


# ----------------------------------------------------------------------------------------------- building
def multidim(array: np.ndarray, compression: str = "none") -> cbor2.CBORTag:
    """A MultiDimArray (tag 40 over an RFC 8746 typed array), optionally with DECTRIS's compression tag:
    ``bslz4`` (element size as modifier) or ``lz4`` (modifier 0), both in the HDF5 filters' framing."""
    array = np.ascontiguousarray(array)
    name = array.dtype.name
    if name not in _TAG_OF:
        raise ValueError(f"no typed-array tag for {name}")
    le = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if compression == "none":
        payload: Any = le.tobytes()
    elif compression == "bslz4":
        payload = cbor2.CBORTag(TAG_COMPRESSED, ["bslz4", array.dtype.itemsize, encode_bslz4(le)])
    elif compression == "lz4":
        payload = cbor2.CBORTag(TAG_COMPRESSED, ["lz4", 0, encode_lz4_hdf5(le)])
    else:
        raise ValueError(f"stream v2 compression must be none, bslz4 or lz4, got {compression!r}")
    return cbor2.CBORTag(TAG_MULTIDIM, [list(array.shape), cbor2.CBORTag(_TAG_OF[name], payload)])


def _message(obj: dict[str, Any]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(SELF_DESCRIBED, obj))


def start_message(series: int, config: dict[str, Any], *, channels: Sequence[str] = ("threshold_1",),
                  tables: dict[str, np.ndarray] | None = None, user_data: Any = None,
                  unique_id: str = "") -> bytes:
    """A start message from a stream v1 style configuration (the simulator's); ``tables``: ``flatfield`` and
    ``pixelmask`` (for the first channel), sent as header_detail ``all`` sends them."""
    v1_to_v2 = {v1: v2 for v2, v1 in _V1_NAMES.items()}
    msg: dict[str, Any] = {"type": "start", "series_id": series, "series_unique_id": unique_id or f"series-{series}",
                           "arm_date": _dt.datetime.now(_dt.timezone.utc), "channels": list(channels)}
    for key, value in config.items():
        if key == EXT_KEY:
            continue
        msg[v1_to_v2.get(key, key)] = value
    ext = config.get(EXT_KEY)
    if ext is not None or user_data is not None:
        msg["user_data"] = {EXT_KEY: ext} if ext is not None and user_data is None else user_data
    for name, key in (("flatfield", "flatfield"), ("pixelmask", "pixel_mask")):
        if tables and name in tables:
            dtype = np.float32 if name == "flatfield" else np.uint32
            msg[key] = {channels[0]: multidim(np.asarray(tables[name], dtype))}
            msg[f"{key}_enabled"] = True
    return _message(msg)


def image_message(series: int, image_id: int, data: dict[str, np.ndarray], *, compression: str = "bslz4",
                  times_ns: tuple[int, int, int] = (0, 0, 0), position_m: Sequence[float] | None = None,
                  position_px: Sequence[float] | None = None, amplitude: np.ndarray | None = None,
                  phase: np.ndarray | None = None, user_data: Any = None, unique_id: str = "") -> bytes:
    """One image: ``data`` maps channel name → 2-d image; positions and labels go into ``user_data``
    (``ptychosteer``); times are sent as rationals over a 1 GHz time base."""
    ext: dict[str, Any] = {}
    if position_m is not None:
        ext["position_m"] = [float(v) for v in position_m]
    if position_px is not None:
        ext["position_px"] = [float(v) for v in position_px]
    if amplitude is not None and phase is not None:
        ext["amplitude"] = multidim(np.asarray(amplitude, np.float32))
        ext["phase"] = multidim(np.asarray(phase, np.float32))
    base = 1_000_000_000
    msg: dict[str, Any] = {"type": "image", "series_id": series, "series_unique_id": unique_id or f"series-{series}",
                           "image_id": image_id, "start_time": [times_ns[0], base], "stop_time": [times_ns[1], base],
                           "real_time": [times_ns[2], base],
                           "data": {name: multidim(img, compression) for name, img in data.items()}}
    if ext:
        msg["user_data"] = {EXT_KEY: ext}
    elif user_data is not None:
        msg["user_data"] = user_data
    return _message(msg)


def end_message(series: int, unique_id: str = "") -> bytes:
    return _message({"type": "end", "series_id": series, "series_unique_id": unique_id or f"series-{series}"})


__all__ = ["parse", "loads", "start_message", "image_message", "end_message", "multidim", "check_series_config"]
