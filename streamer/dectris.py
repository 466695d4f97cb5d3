"""Dectris SIMPLON stream v1: building messages (simulator side) and parsing them (ingest side).

One ZeroMQ multipart message per item, exactly as an EIGER sends it:

* series header: ``{"htype":"dheader-1.0","series":N,"header_detail":"all|basic|none"}``; ``basic`` and ``all``
  add the detector configuration JSON; ``all`` adds three header+blob pairs (``dflatfield-1.0``,
  ``dpixelmask-1.0``, ``dcountrate_table-1.0``); an optional header appendix may follow.
* image: ``dimage-1.0`` (series, frame, hash), ``dimage_d-1.0`` (shape *width first*, type, encoding, size),
  the blob, ``dconfig-1.0`` (start_time, stop_time, real_time in ns), an optional image appendix.
* end of series: ``{"htype":"dseries_end-1.0","series":N}``.

ptychosteer extension (never sent by a real detector, optional for the ingest): the image appendix is a JSON
object ``{"htype":"ptychosteer-1.0","position_m":[y,x],"position_px":[y,x],"label":{...}}``. When ``label``
is present (simulation only) two more parts follow the appendix: the ground-truth amplitude and phase patch,
raw little-endian ``float32`` in numpy order ``label["shape"] == [h, w]``. See docs/wire-format.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final, Sequence, Union

import numpy as np

from streamer.compression import DTYPES, Chunk, DecodeError, decode

EXT_HTYPE: Final = "ptychosteer-1.0"
HEADER_DETAILS: Final = ("none", "basic", "all")
_HEADER_TABLES: Final = (("dflatfield-1.0", "float32"), ("dpixelmask-1.0", "uint32"), ("dcountrate_table-1.0", "float32"))
_TABLE_DTYPES: Final = {"float32": np.float32, "uint32": np.uint32}

Part = Union[bytes, memoryview, Any]  # zmq.Frame exposes .buffer; bytes/memoryview pass through


class MalformedMessage(ValueError):
    """A message that is not valid SIMPLON stream v1; ``kind`` is the counter key."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SeriesHeader:
    series: int
    detail: str
    config: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # flatfield, pixelmask, countrate_table
    appendix: str | None = None
    detector_series: int | None = None  # the detector's own id, where the ingest recorded the arming under another


@dataclass(frozen=True)
class ImageFrame:
    """One image. ``image`` is None while the frame is kept as its compressed ``chunk`` (the ingest persists a
    bitshuffle-LZ4 blob as it came and lets the consumers decode it); :meth:`pixels` decodes on demand.
    ``channels``: further threshold channels of a multi-threshold detector (stream v2), in its order."""

    series: int
    frame: int
    image: np.ndarray | None  # numpy order (height, width)
    encoding: str
    hash: str = ""
    start_time_ns: int = 0
    stop_time_ns: int = 0
    real_time_ns: int = 0
    position_m: tuple[float, float] | None = None
    position_px: tuple[float, float] | None = None
    amplitude: np.ndarray | None = None
    phase: np.ndarray | None = None
    appendix: bytes | None = None  # a foreign (non-ptychosteer) appendix: any user JSON or bytes, verbatim
    chunk: Chunk | None = None
    channels: tuple[tuple[str, "np.ndarray | Chunk"], ...] = ()
    channel: str = ""  # the name of this (first) channel, where the detector names them (stream v2)

    @property
    def labelled(self) -> bool:
        return self.amplitude is not None and self.phase is not None

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape if self.image is not None else self.chunk.shape  # type: ignore[union-attr,return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.image.dtype if self.image is not None else np.dtype(self.chunk.dtype).newbyteorder("<")  # type: ignore[union-attr]

    def pixels(self) -> np.ndarray:
        """The image, decoded from its chunk where it was kept compressed (raises DecodeError on a corrupt one)."""
        return self.image if self.image is not None else self.chunk.decode()  # type: ignore[union-attr]


@dataclass(frozen=True)
class SeriesEnd:
    series: int


Message = Union[SeriesHeader, ImageFrame, SeriesEnd]


# ----------------------------------------------------------------------------------------------- building
def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def header_message(series: int, config: dict[str, Any], detail: str = "basic", appendix: str | None = None,
                   tables: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """Series header. With ``detail="all"`` the flatfield, pixel mask and count-rate table are sent."""
    if detail not in HEADER_DETAILS:
        raise ValueError(f"header_detail must be one of {HEADER_DETAILS}, got {detail!r}")
    parts = [_dumps({"htype": "dheader-1.0", "series": series, "header_detail": detail})]
    if detail in ("basic", "all"):
        parts.append(_dumps(config))
    if detail == "all":
        tables = tables or {}
        height, width = config["y_pixels_in_detector"], config["x_pixels_in_detector"]
        for htype, dtype in _HEADER_TABLES:
            name = htype.split("-")[0][1:]
            table = np.asarray(tables.get(name, np.ones((height, width))), dtype=_TABLE_DTYPES[dtype])
            parts.append(_dumps({"htype": htype, "shape": [table.shape[1], table.shape[0]], "type": dtype}))
            parts.append(table.astype(table.dtype.newbyteorder("<")).tobytes())
    if appendix is not None:
        parts.append(appendix.encode())
    return parts


def image_message(series: int, frame: int, blob: bytes, shape_hw: tuple[int, int], dtype: str, encoding: str,
                  *, times_ns: tuple[int, int, int] = (0, 0, 0), position_m: Sequence[float] | None = None,
                  position_px: Sequence[float] | None = None, amplitude: np.ndarray | None = None,
                  phase: np.ndarray | None = None, with_hash: bool = True) -> list[bytes]:
    """One image. ``position``/``amplitude``/``phase`` go into the ptychosteer extension parts."""
    digest = hashlib.md5(blob).hexdigest() if with_hash else ""
    height, width = shape_hw
    parts = [
        _dumps({"htype": "dimage-1.0", "series": series, "frame": frame, "hash": digest}),
        _dumps({"htype": "dimage_d-1.0", "shape": [width, height], "type": dtype, "encoding": encoding,
                "size": len(blob)}),
        blob,
        _dumps({"htype": "dconfig-1.0", "start_time": times_ns[0], "stop_time": times_ns[1], "real_time": times_ns[2]}),
    ]
    if position_m is None and amplitude is None:
        return parts
    ext: dict[str, Any] = {"htype": EXT_HTYPE}
    if position_m is not None:
        ext["position_m"] = [float(v) for v in position_m]
    if position_px is not None:
        ext["position_px"] = [float(v) for v in position_px]
    if amplitude is not None and phase is not None:
        ext["label"] = {"shape": list(amplitude.shape), "type": "float32", "parts": ["amplitude", "phase"]}
        parts.append(_dumps(ext))
        parts.append(np.ascontiguousarray(amplitude, dtype="<f4").tobytes())
        parts.append(np.ascontiguousarray(phase, dtype="<f4").tobytes())
        return parts
    parts.append(_dumps(ext))
    return parts


_CONFIG_INTS: Final = {"nimages": (0, 1 << 40), "ntrigger": (0, 1 << 40), "x_pixels_in_detector": (1, 1 << 16),
                       "y_pixels_in_detector": (1, 1 << 16), "bit_depth_image": (1, 64),
                       "countrate_correction_count_cutoff": (0, (1 << 64) - 1)}
_CONFIG_NUMBERS: Final = ("x_pixel_size", "y_pixel_size", "detector_distance", "photon_energy", "wavelength",
                          "count_time", "frame_time", "beam_center_x", "beam_center_y")


def check_series_config(config: Any) -> str | None:
    """Why a detector configuration (dheader-1.0, part 2) cannot be used downstream, or None when it can: the
    keys the pipeline reads must have their types and ranges (integers, finite numbers, the ptychosteer extension
    a mapping with a bounded ``object_shape``). Unknown keys are the detector's business and pass."""
    if not isinstance(config, dict):
        return f"the configuration is a {type(config).__name__}, not a mapping"
    for key, (low, high) in _CONFIG_INTS.items():
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            return f"{key} must be an integer in {low}..{high}, got {str(value)[:60]}"
    for key in _CONFIG_NUMBERS:
        value = config.get(key)
        if value is not None and not _finite(value):
            return f"{key} must be a finite number, got {str(value)[:60]}"
    ext = config.get(EXT_HTYPE.split("-")[0], {})  # "ptychosteer"
    if not isinstance(ext, dict):
        return f"'ptychosteer' must be a mapping, got {type(ext).__name__}"
    shape = ext.get("object_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in shape)
            and shape[0] * shape[1] <= MAX_PIXELS):
        return f"ptychosteer.object_shape must be [height, width] within {MAX_SIDE}, got {str(shape)[:60]}"
    for key in ("probe_diameter_px", "probe_curvature_rad", "object_pixel_size_m", "overlap"):
        if ext.get(key) is not None and not _finite(ext[key]):
            return f"ptychosteer.{key} must be a finite number, got {str(ext[key])[:60]}"
    photons = ext.get("photons_per_frame")
    if photons is not None and not (_finite(photons) and photons > 0):
        return f"ptychosteer.photons_per_frame must be a finite number > 0, got {str(photons)[:60]}"
    return None


def end_message(series: int) -> list[bytes]:
    return [_dumps({"htype": "dseries_end-1.0", "series": series})]


# ----------------------------------------------------------------------------------------------- parsing
# The hot path of the ingest: parts stay as received (zmq.Frame, bytes or memoryview); JSON parts are read as
# text, blobs as buffers, and an image's dimage_d part, identical for every frame of a series, is validated once
# and then recognised by its bytes.
_DECODER = json.JSONDecoder()
MAX_SIDE: Final = 1 << 16  # pixels along one axis (an EIGER2 16M is 4148 x 4362)
MAX_PIXELS: Final = 1 << 27  # per frame (512 MiB of uint32): a larger declared shape is refused before decoding
_ID_MAX: Final = (1 << 63) - 1  # series and frame ids are stored as int64
_DESC_CACHE: dict[bytes, tuple[tuple[int, int], str, str, int | None]] = {}
_DESC_CACHE_MAX: Final = 256


def _buffer(part: Part) -> memoryview:
    buf = getattr(part, "buffer", None)  # zmq.Frame
    return buf if buf is not None else memoryview(part)


def part_bytes(part: Part) -> bytes:
    """The bytes of a part (zmq.Frame: pyzmq's cached copy; bytes: itself)."""
    if isinstance(part, bytes):
        return part
    data = getattr(part, "bytes", None)  # zmq.Frame (cached by pyzmq)
    return data if isinstance(data, bytes) else bytes(part)


def loads(data: bytes) -> Any:
    """``json.loads`` for small hot-path parts (about 2x faster); raises what ``json.loads`` raises."""
    text = str(data, "utf-8")
    try:  # raw_decode skips decode()'s two whitespace scans; fall back when there is surrounding whitespace
        obj, end = _DECODER.raw_decode(text)
        if end == len(text):
            return obj
    except json.JSONDecodeError:
        pass
    return _DECODER.decode(text)


def _json(part: Part, what: str) -> dict[str, Any]:
    try:
        obj = loads(part_bytes(part))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MalformedMessage("malformed_json", f"{what} is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage("malformed_json", f"{what} is JSON but not an object: {type(obj).__name__}")
    return obj


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedMessage("malformed_json", f"{what} lacks a valid {key!r} (got {str(value)[:100]})")
    return value


def _id(obj: dict[str, Any], key: str, what: str) -> int:
    """A series or frame id: an integer in [0, 2**63) (stored as int64)."""
    value = _field(obj, key, int, what)
    if not 0 <= value <= _ID_MAX:
        raise MalformedMessage("malformed_json", f"{what} {key} {str(value)[:40]} is outside [0, 2**63)")
    return value


def _shape(value: Any, what: str) -> tuple[int, int]:
    """A declared [width, height]: two positive integers within :data:`MAX_SIDE` and :data:`MAX_PIXELS`."""
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in value)
            and value[0] * value[1] <= MAX_PIXELS):
        raise MalformedMessage("malformed_json", f"{what} shape must be [width, height], each in 1..{MAX_SIDE} "
                                                 f"and at most {MAX_PIXELS} pixels, got {str(value)[:100]}")
    return value[0], value[1]


def _time_ns(obj: dict[str, Any], key: str) -> int:
    """A dconfig time [ns]: absent/null is 0; otherwise a finite number in [0, 2**63)."""
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _ID_MAX:
        raise MalformedMessage("malformed_json", f"dconfig-1.0 {key} must be a number of ns in [0, 2**63), "
                                                 f"got {str(value)[:60]}")
    return int(value)  # NaN fails the range test above


def _expect_htype(obj: dict[str, Any], htype: str, position: int) -> None:
    if obj.get("htype") != htype:
        raise MalformedMessage("wrong_order", f"part {position} should be {htype!r}, got htype {obj.get('htype')!r}")


def parse(parts: Sequence[Part], *, verify_hash: bool = False, keep_chunks: bool = False) -> Message:
    """Parse and validate one multipart message; raises :class:`MalformedMessage` with a counter kind.

    ``verify_hash``: check a non-empty ``dimage-1.0`` hash (MD5 hex of the blob as sent) against the blob
    (``hash_mismatch``). It costs an MD5 of every blob, about 50 µs for 32 KiB, so it is off by default.
    ``keep_chunks``: a ``bs*-lz4<`` blob is not decoded, only its framing checked; the frame holds it as its
    ``chunk`` (for a direct chunk write and decoding by the consumers).
    """
    if not parts:
        raise MalformedMessage("missing_parts", "empty message")
    if len(parts) == 1 and looks_like_cbor(parts[0]):
        raise MalformedMessage("wrong_protocol", "a single CBOR message: this is SIMPLON stream v2 (format 'cbor'), "
                                                 "not v1; run the ingest with --protocol v2")
    first = _json(parts[0], "part 0")
    htype = first.get("htype")
    if htype == "dimage-1.0":
        image = _parse_image(first, parts, keep_chunks)
        if verify_hash and image.hash and hashlib.md5(_buffer(parts[2])).hexdigest() != image.hash.lower():
            raise MalformedMessage("hash_mismatch", f"image {image.frame} of series {image.series}: the blob's MD5 "
                                                    f"is not the declared hash {image.hash!r}")
        return image
    if htype == "dheader-1.0":
        return _parse_header(first, parts)
    if htype == "dseries_end-1.0":
        if len(parts) != 1:
            raise MalformedMessage("extra_parts", f"dseries_end-1.0 has {len(parts)} parts, expected 1")
        return SeriesEnd(series=_id(first, "series", "dseries_end-1.0"))
    if htype in ("dimage_d-1.0", "dconfig-1.0", "dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0"):
        raise MalformedMessage("wrong_order", f"message starts with {htype!r}, which only follows a dheader/dimage part")
    raise MalformedMessage("unknown_htype", f"unknown htype {htype!r} in part 0")


def _parse_header(first: dict[str, Any], parts: Sequence[Part]) -> SeriesHeader:
    parts = [_buffer(p) for p in parts]
    series = _id(first, "series", "dheader-1.0")
    detail = first.get("header_detail")
    if detail not in HEADER_DETAILS:
        raise MalformedMessage("malformed_json", f"dheader-1.0 header_detail {detail!r} not in {HEADER_DETAILS}")
    expected = {"none": 1, "basic": 2, "all": 8}[detail]
    if len(parts) < expected:
        raise MalformedMessage("missing_parts", f"dheader-1.0 ({detail}) has {len(parts)} parts, needs {expected}")
    if len(parts) > expected + 1:
        raise MalformedMessage("extra_parts", f"dheader-1.0 ({detail}) has {len(parts)} parts, at most {expected + 1}")
    config = _json(parts[1], "detector configuration") if expected >= 2 else {}
    tables: dict[str, np.ndarray] = {}
    for i, (htype, dtype) in enumerate(_HEADER_TABLES if detail == "all" else ()):
        meta = _json(parts[2 + 2 * i], f"part {2 + 2 * i}")
        _expect_htype(meta, htype, 2 + 2 * i)
        shape = _shape(meta.get("shape"), htype)
        if meta.get("type") != dtype:
            raise MalformedMessage("malformed_json", f"{htype} must be a 2-d {dtype} table, got {str(meta)[:200]}")
        raw = parts[3 + 2 * i]
        if len(raw) != shape[0] * shape[1] * 4:
            raise MalformedMessage("size_mismatch", f"{htype} blob has {len(raw)} bytes for shape {shape}")
        tables[htype.split("-")[0][1:]] = np.frombuffer(raw, dtype=f"<{dtype[0]}4").reshape(shape[1], shape[0]).copy()
    appendix = bytes(parts[expected]).decode(errors="replace") if len(parts) > expected else None
    return SeriesHeader(series=series, detail=detail, config=config, tables=tables, appendix=appendix)


def _image_meta(parts: Sequence[Part]) -> tuple[tuple[int, int], str, str]:
    key = part_bytes(parts[1])
    meta = _DESC_CACHE.get(key)
    if meta is None:
        meta = _parse_desc(parts[1])
        if len(_DESC_CACHE) >= _DESC_CACHE_MAX:
            _DESC_CACHE.clear()
        _DESC_CACHE[key] = meta
    shape, dtype, encoding, size = meta
    if size is not None and size != len(parts[2]):
        raise MalformedMessage("size_mismatch", f"dimage_d-1.0 size {size} but blob has {len(parts[2])} bytes")
    return shape, dtype, encoding


def _parse_desc(part: Part) -> tuple[tuple[int, int], str, str, int | None]:
    desc = _json(part, "part 1")
    _expect_htype(desc, "dimage_d-1.0", 1)
    shape = _shape(desc.get("shape"), "dimage_d-1.0")
    dtype, encoding = desc.get("type"), desc.get("encoding")
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list here was a TypeError (found by fuzzing)
        raise MalformedMessage("unknown_dtype", f"dimage_d-1.0 type {str(dtype)[:60]} not one of {sorted(DTYPES)}")
    size = desc.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise MalformedMessage("malformed_json", f"dimage_d-1.0 size must be an integer, got {size!r}")
    return (shape[1], shape[0]), dtype, str(encoding), size


def looks_like_cbor(part: Part) -> bool:
    """A part that starts like a stream v2 message: the self-described CBOR tag (d9 d9 f7) or a CBOR map."""
    head = bytes(_buffer(part)[:3])
    return head == b"\xd9\xd9\xf7" or (len(head) > 0 and 0xa0 <= head[0] <= 0xbf)


def _parse_image(first: dict[str, Any], parts: Sequence[Part], keep_chunks: bool = False) -> ImageFrame:
    if len(parts) < 4:
        raise MalformedMessage("missing_parts", f"dimage-1.0 message has {len(parts)} parts, needs at least 4")
    series = _id(first, "series", "dimage-1.0")
    frame = _id(first, "frame", "dimage-1.0")
    shape, dtype, encoding = _image_meta(parts)
    chunk = None
    try:
        if keep_chunks and encoding in ("bs16-lz4<", "bs32-lz4<") and DTYPES[dtype]().itemsize == int(encoding[2:4]) // 8:
            chunk = Chunk(_buffer(parts[2]), shape, dtype)
            chunk.check()
            image = None
        else:
            image = decode(_buffer(parts[2]), encoding, dtype, shape)
    except DecodeError as exc:
        raise MalformedMessage(exc.kind, str(exc)) from exc
    except (ValueError, OverflowError, MemoryError, TypeError) as exc:  # what a decoder library may raise on junk
        raise MalformedMessage("corrupt_data", f"the blob does not decode as {encoding} {dtype} {shape}: "
                                               f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    times = _json(parts[3], "part 3")
    _expect_htype(times, "dconfig-1.0", 3)
    ext, appendix = _parse_appendix(parts)
    amplitude = phase = None
    label = ext.get("label")
    if label is not None:
        amplitude, phase = _labels(label, parts)
        if amplitude.shape != shape:
            raise MalformedMessage("label_shape", f"labels of shape {amplitude.shape} for an image of shape "
                                                  f"{shape}")
    elif len(parts) > 5:
        raise MalformedMessage("extra_parts", f"dimage-1.0 message has {len(parts)} parts; only 4 or 5 without labels")
    pos, pos_px = ext.get("position_m"), ext.get("position_px")
    return ImageFrame(series=series, frame=frame, image=image, encoding=encoding, hash=str(first.get("hash", "")),
                      start_time_ns=_time_ns(times, "start_time"), stop_time_ns=_time_ns(times, "stop_time"),
                      real_time_ns=_time_ns(times, "real_time"), position_m=_pair(pos, "position_m"),
                      position_px=_pair(pos_px, "position_px"), amplitude=amplitude, phase=phase, appendix=appendix,
                      chunk=chunk)


def _parse_appendix(parts: Sequence[Part]) -> tuple[dict[str, Any], bytes | None]:
    if len(parts) < 5:
        return {}, None
    raw = part_bytes(parts[4])
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        obj = None
    if isinstance(obj, dict) and obj.get("htype") == EXT_HTYPE:
        return obj, None
    return {}, raw


def _pair(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2
            and all(_finite(v) for v in value)):
        raise MalformedMessage("malformed_json", f"extension {name} must be [y, x] finite numbers, got "
                                                 f"{str(value)[:100]}")
    return float(value[0]), float(value[1])


def _finite(v: Any) -> bool:
    """A JSON number that converts to a finite float (a 400-digit integer does not)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) < 1e300
    return isinstance(v, float) and math.isfinite(v)


def _labels(label: Any, parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(label, dict) or label.get("type") != "float32":
        raise MalformedMessage("malformed_json", f"extension label must declare type float32, got {label!r}")
    shape = label.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in shape)):
        raise MalformedMessage("malformed_json", f"extension label shape must be [h, w] > 0, got {str(shape)[:100]}")
    if len(parts) < 7:
        raise MalformedMessage("missing_parts", f"labelled image has {len(parts)} parts, needs 7")
    if len(parts) > 7:
        raise MalformedMessage("extra_parts", f"labelled image has {len(parts)} parts, expected 7")
    out = []
    for i in (5, 6):
        buf = _buffer(parts[i])
        if len(buf) != shape[0] * shape[1] * 4:
            raise MalformedMessage("size_mismatch", f"label part {i} has {len(buf)} bytes for shape {shape}")
        out.append(np.frombuffer(buf, dtype="<f4").reshape(shape))
    return out[0], out[1]
