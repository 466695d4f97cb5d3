"""Image blob encodings of Dectris SIMPLON stream v1: ``<`` (raw), ``lz4<``, ``bs16-lz4<``, ``bs32-lz4<``.

* ``lz4<`` is one plain LZ4 block of the little-endian pixel bytes (no size prefix; the size follows from
  the ``dimage_d`` shape and type).
* ``bsNN-lz4<`` uses the framing of the HDF5 bitshuffle filter, the one EIGER detectors send: a uint64
  big-endian uncompressed size, a uint32 big-endian block size in bytes, then per block a uint32 big-endian
  compressed size and an LZ4 block of the bit-shuffled data. Elements of the last block that do not fill a
  group of 8 are appended raw.

Stream v2 (and DECTRIS's compression tag 56500) adds ``lz4`` with the HDF5 LZ4 filter's framing: a uint64
big-endian uncompressed size, a uint32 big-endian block size, then per block a uint32 big-endian compressed size
and the LZ4 block (stored raw when compression would not shrink it).

Decoding of bitshuffle and framed-LZ4 blobs goes through DECTRIS's own ``dectris-compression`` package; this
module only implements the *encoders* (for the simulator) and validates every header before handing a blob to
the vendor decoder, so a corrupt size field can never make it allocate an absurd buffer.

A :class:`Chunk` is a frame kept compressed: a bitshuffle-LZ4 blob is byte for byte an HDF5 bitshuffle-LZ4
chunk, so the ingest writes it to the recording as it came (h5py's direct chunk write) and the consumers decode
it in their own processes. :func:`check_chunk` walks its block framing without decompressing anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import lz4.block
import numpy as np
import numpy.typing as npt
from dectris.compression import decompress as _vendor_decompress

ENCODINGS: Final = ("<", "lz4<", "bs16-lz4<", "bs32-lz4<")
# stream v2 also sends 8-bit bitshuffle (``bslz4`` with element size 1) and framed ``lz4``; internal names
_V2_ENCODINGS: Final = ("bs8-lz4<", "lz4-hdf5<")
DTYPES: Final = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
_BS_ELEM: Final = {"bs8-lz4<": 1, "bs16-lz4<": 2, "bs32-lz4<": 4}
_LE_DTYPES: Final = {name: np.dtype(t).newbyteorder("<") for name, t in DTYPES.items()}
# decode(any_type=True) also reads the other element types of stream v2's typed arrays (tables, labels)
_ANY_LE: Final = {name: np.dtype(name).newbyteorder("<") for name in (*DTYPES, "uint64", "float32", "float64")}
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


def decode(blob: bytes | memoryview, encoding: str, dtype: str, shape: tuple[int, ...], *,
           any_type: bool = False) -> Image:
    """Decode a wire blob into a read-only array of ``shape`` (numpy order) and pixel type ``dtype``.

    Raises :class:`DecodeError` with a ``kind`` (``unknown_encoding``, ``unknown_dtype``, ``size_mismatch``,
    ``corrupt_data``) that the ingest uses as its malformed-message counter key.
    """
    np_dtype = (_ANY_LE if any_type else _LE_DTYPES).get(dtype)
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
    if encoding == "lz4-hdf5<":
        if len(view) < _BS_HEADER.size or _BS_HEADER.unpack_from(view)[0] != nbytes:
            raise DecodeError("size_mismatch", f"framed LZ4 blob does not declare the {nbytes} bytes of its shape")
        try:
            raw = _vendor_decompress(view, "lz4")
        except RuntimeError as exc:
            raise DecodeError("corrupt_data", f"LZ4 blob is corrupt or truncated: {exc}") from exc
        if len(raw) != nbytes:
            raise DecodeError("size_mismatch", f"LZ4 blob decoded to {len(raw)} bytes, shape needs {nbytes}")
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


# ------------------------------------------------------------------------------------------- kept compressed
_LZ4_HDF5_BLOCK: Final = 1 << 30  # the HDF5 LZ4 filter's default block size (1 GiB): one block per frame


def encode_lz4_hdf5(image: np.ndarray) -> bytes:
    """Little-endian pixels as LZ4 with the HDF5 LZ4 filter's framing (stream v2's ``lz4``)."""
    raw = np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<"), copy=False).tobytes()
    block = min(_LZ4_HDF5_BLOCK, max(1, len(raw)))
    parts = [_BS_HEADER.pack(len(raw), block)]
    for start in range(0, len(raw), block):
        piece = raw[start:start + block]
        packed = lz4.block.compress(piece, store_size=False)
        if len(packed) >= len(piece):  # the filter stores an incompressible block as it is
            packed = piece
        parts += [_BLOCK_LEN.pack(len(packed)), packed]
    return b"".join(parts)


def check_chunk(blob: bytes | memoryview, nbytes: int, elem: int) -> None:
    """Validate a bitshuffle-LZ4 blob's framing for ``nbytes`` of ``elem``-byte pixels without decompressing: the
    header, and that the block lengths chain exactly to the end (the raw tail of a last partial group included).
    Raises :class:`DecodeError`; LZ4 content corruption is only found when a consumer decodes the frame."""
    view = blob if isinstance(blob, memoryview) and blob.format == "B" else memoryview(blob).cast("B")
    _check_bs_header(view, nbytes, elem)
    block = _BS_HEADER.unpack_from(view)[1]
    n_elem = nbytes // elem
    block_elems = block // elem
    full, rest = divmod(n_elem, block_elems) if block_elems else (0, n_elem)
    blocks = full + (1 if rest // 8 else 0)
    pos, end = _BS_HEADER.size, len(view)
    for _ in range(blocks):
        if pos + 4 > end:
            raise DecodeError("corrupt_data", f"bitshuffle blob truncated at byte {pos} of {end}")
        size = _BLOCK_LEN.unpack_from(view, pos)[0]
        pos += 4 + size
    tail = (rest % 8) * elem
    if pos + tail != end:
        raise DecodeError("corrupt_data", f"bitshuffle blocks end at byte {pos + tail}, the blob has {end}")


@dataclass(frozen=True)
class Chunk:
    """One frame kept as its bitshuffle-LZ4 blob (HDF5 framing), with the shape and pixel type it decodes to."""

    data: bytes | memoryview
    shape: tuple[int, int]
    dtype: str  # uint8 | uint16 | uint32

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * _LE_DTYPES[self.dtype].itemsize

    def check(self) -> None:
        check_chunk(self.data, self.nbytes, _LE_DTYPES[self.dtype].itemsize)

    def decode(self) -> Image:
        elem = _LE_DTYPES[self.dtype].itemsize
        return decode(self.data, f"bs{elem * 8}-lz4<" if elem > 1 else "bs8-lz4<", self.dtype, self.shape)
