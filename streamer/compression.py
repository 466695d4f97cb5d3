"""Image blob encodings of Dectris SIMPLON stream v1: ``<`` (raw), ``lz4<``, ``bs16-lz4<``, ``bs32-lz4<``.

* ``lz4<`` is one plain LZ4 block of the little-endian pixel bytes (no size prefix; the size follows from
  the ``dimage_d`` shape and type).
* ``bsNN-lz4<`` uses the framing of the HDF5 bitshuffle filter, the one EIGER detectors send: a uint64
  big-endian uncompressed size, a uint32 big-endian block size in bytes, then per block a uint32 big-endian
  compressed size and an LZ4 block of the bit-shuffled data. Elements of the last block that do not fill a
  group of 8 are appended raw.

Decoding of bitshuffle blobs goes through DECTRIS's own ``dectris-compression`` package; this module only
implements the *encoder* (for the simulator) and validates every header before handing a blob to the
vendor decoder, so a corrupt size field can never make it allocate an absurd buffer.
"""

from __future__ import annotations

import struct
from typing import Final

import lz4.block
import numpy as np
import numpy.typing as npt
from dectris.compression import decompress as _vendor_decompress

ENCODINGS: Final = ("<", "lz4<", "bs16-lz4<", "bs32-lz4<")
DTYPES: Final = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
_BS_ELEM: Final = {"bs16-lz4<": 2, "bs32-lz4<": 4}
_LE_DTYPES: Final = {name: np.dtype(t).newbyteorder("<") for name, t in DTYPES.items()}
_BS_HEADER = struct.Struct(">QI")
_BLOCK_LEN = struct.Struct(">I")
_TARGET_BLOCK_BYTES: Final = 8192  # bshuf_default_block_size(): 8 KiB of elements, multiple of 8, >= 128

Image = npt.NDArray[np.integer]


class DecodeError(ValueError):
    """A blob that cannot be decoded to the declared shape and type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _bitshuffle(flat: np.ndarray) -> bytes:
    """Bit-transpose ``flat`` (length a multiple of 8) exactly as bitshuffle's ``bshuf_trans_bit_elem``."""
    n = flat.size
    as_bytes = flat.view(np.uint8).reshape(n, flat.dtype.itemsize)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")
    return np.packbits(np.ascontiguousarray(bits.T), axis=1, bitorder="little").tobytes()


def _block_elements(elem_size: int) -> int:
    return max(128, (_TARGET_BLOCK_BYTES // elem_size) // 8 * 8)


def encode_bslz4(image: np.ndarray) -> bytes:
    """Encode with the HDF5 bitshuffle filter's framing (``bs16-lz4<`` for uint16, ``bs32-lz4<`` for uint32)."""
    flat = np.ascontiguousarray(image).reshape(-1).astype(image.dtype.newbyteorder("<"), copy=False)
    elem = flat.dtype.itemsize
    block = _block_elements(elem)
    parts = [_BS_HEADER.pack(flat.nbytes, block * elem)]
    nfull = flat.size // block
    for i in range(nfull):
        packed = lz4.block.compress(_bitshuffle(flat[i * block : (i + 1) * block]), store_size=False)
        parts += [_BLOCK_LEN.pack(len(packed)), packed]
    rest = flat[nfull * block :]
    shuffled = rest.size // 8 * 8
    if shuffled:
        packed = lz4.block.compress(_bitshuffle(rest[:shuffled]), store_size=False)
        parts += [_BLOCK_LEN.pack(len(packed)), packed]
    parts.append(rest[shuffled:].tobytes())
    return b"".join(parts)


def encoding_for(dtype: np.dtype, name: str) -> str:
    """Normalise a user-facing encoding name (``raw``, ``lz4``, ``bslz4``) to the wire name for ``dtype``."""
    aliases = {"raw": "<", "none": "<", "lz4": "lz4<"}
    if name in ENCODINGS:
        wire = name
    elif name in aliases:
        wire = aliases[name]
    elif name == "bslz4":
        wire = f"bs{np.dtype(dtype).itemsize * 8}-lz4<"
    else:
        raise ValueError(f"unknown encoding {name!r}; choose one of raw, lz4, bslz4 or {', '.join(ENCODINGS)}")
    if wire in _BS_ELEM and _BS_ELEM[wire] != np.dtype(dtype).itemsize:
        raise ValueError(f"encoding {wire!r} does not match pixel type {np.dtype(dtype).name}")
    return wire


def encode(image: np.ndarray, encoding: str) -> bytes:
    """Encode ``image`` for the wire with a Dectris encoding name."""
    if encoding == "<":
        return np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<"), copy=False).tobytes()
    if encoding == "lz4<":
        return lz4.block.compress(np.ascontiguousarray(image).tobytes(), store_size=False)
    if encoding in _BS_ELEM:
        if image.dtype.itemsize != _BS_ELEM[encoding]:
            raise ValueError(f"{encoding} needs {_BS_ELEM[encoding] * 8}-bit pixels, got {image.dtype}")
        return encode_bslz4(image)
    raise ValueError(f"unknown encoding {encoding!r}")


def _check_bs_header(blob: memoryview, nbytes: int, elem: int) -> None:
    if len(blob) < _BS_HEADER.size:
        raise DecodeError("corrupt_data", f"bitshuffle blob of {len(blob)} bytes is shorter than its header")
    orig, block = _BS_HEADER.unpack_from(blob)
    if orig != nbytes:
        raise DecodeError("size_mismatch", f"bitshuffle header says {orig} bytes, dimage_d declares {nbytes}")
    if nbytes and (block == 0 or block % (8 * elem)):
        raise DecodeError("corrupt_data", f"bitshuffle block size {block} is not a multiple of {8 * elem}")


def decode(blob: bytes | memoryview, encoding: str, dtype: str, shape: tuple[int, ...]) -> Image:
    """Decode a wire blob into a read-only array of ``shape`` (numpy order) and pixel type ``dtype``.

    Raises :class:`DecodeError` with a ``kind`` (``unknown_encoding``, ``unknown_dtype``, ``size_mismatch``,
    ``corrupt_data``) that the ingest uses as its malformed-message counter key.
    """
    np_dtype = _LE_DTYPES.get(dtype)
    if np_dtype is None:
        raise DecodeError("unknown_dtype", f"unknown pixel type {dtype!r} (expected one of {sorted(DTYPES)})")
    nbytes = np_dtype.itemsize
    for n in shape:
        nbytes *= n
    view = blob if isinstance(blob, memoryview) and blob.format == "B" else memoryview(blob).cast("B")
    if encoding == "<":
        if len(view) != nbytes:
            raise DecodeError("size_mismatch", f"raw blob has {len(view)} bytes, shape needs {nbytes}")
        return np.frombuffer(view, dtype=np_dtype).reshape(shape)
    if encoding == "lz4<":
        try:
            raw = lz4.block.decompress(view, uncompressed_size=nbytes)
        except lz4.block.LZ4BlockError as exc:
            raise DecodeError("corrupt_data", f"LZ4 block does not decode to {nbytes} bytes: {exc}") from exc
        if len(raw) != nbytes:
            raise DecodeError("size_mismatch", f"LZ4 block decoded to {len(raw)} bytes, shape needs {nbytes}")
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    if encoding in _BS_ELEM:
        elem = _BS_ELEM[encoding]
        if elem != np_dtype.itemsize:
            raise DecodeError("size_mismatch", f"{encoding} carries {elem * 8}-bit elements, type is {dtype}")
        _check_bs_header(view, nbytes, elem)
        try:
            raw = _vendor_decompress(view, "bslz4", elem_size=elem)
        except RuntimeError as exc:
            raise DecodeError("corrupt_data", f"bitshuffle/LZ4 blob is corrupt or truncated: {exc}") from exc
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    raise DecodeError("unknown_encoding", f"unknown encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")
