import lz4.block
import numpy as np
import pytest
from dectris.compression import decompress

from streamer.compression import DecodeError, decode, encode, encode_bslz4, encoding_for


@pytest.mark.parametrize("shape", [(64, 64), (128, 128), (13, 7), (100, 37), (1, 5), (257, 129)])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bitshuffle_encoder_round_trips_through_vendor_decoder(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    image = rng.poisson(20, size=shape).astype(dtype)
    image.flat[0] = np.iinfo(dtype).max  # all bits set somewhere
    blob = encode_bslz4(image)
    raw = decompress(blob, "bslz4", elem_size=image.dtype.itemsize)
    np.testing.assert_array_equal(np.frombuffer(raw, dtype=dtype).reshape(shape), image)


@pytest.mark.parametrize("encoding", ["<", "lz4<", "bs16-lz4<"])
def test_every_uint16_encoding_round_trips(encoding):
    image = np.random.default_rng(1).integers(0, 65535, size=(64, 48), dtype=np.uint16)
    out = decode(encode(image, encoding), encoding, "uint16", image.shape)
    np.testing.assert_array_equal(out, image)
    assert out.dtype == np.dtype("<u2")


@pytest.mark.parametrize("encoding", ["<", "lz4<", "bs32-lz4<"])
def test_every_uint32_encoding_round_trips(encoding):
    image = np.random.default_rng(2).integers(0, 2**32 - 1, size=(32, 40), dtype=np.uint32)
    np.testing.assert_array_equal(decode(encode(image, encoding), encoding, "uint32", image.shape), image)


def test_encoding_aliases_and_mismatch():
    assert encoding_for(np.uint16, "bslz4") == "bs16-lz4<"
    assert encoding_for(np.uint32, "bslz4") == "bs32-lz4<"
    assert encoding_for(np.uint16, "raw") == "<"
    with pytest.raises(ValueError, match="does not match"):
        encoding_for(np.uint32, "bs16-lz4<")
    with pytest.raises(ValueError, match="unknown encoding"):
        encoding_for(np.uint16, "zstd")


def _kind(blob, encoding="bs16-lz4<", dtype="uint16", shape=(64, 64)):
    with pytest.raises(DecodeError) as err:
        decode(blob, encoding, dtype, shape)
    return err.value.kind


def test_corrupt_and_truncated_blobs_are_decode_errors():
    image = np.random.default_rng(3).poisson(50, size=(64, 64)).astype(np.uint16)
    blob = bytearray(encode_bslz4(image))
    assert _kind(bytes(blob[:40])) == "corrupt_data"  # truncated inside the first block
    assert _kind(bytes(blob[:8])) == "corrupt_data"  # shorter than the header
    blob[20:60] = b"\xff" * 40
    assert _kind(bytes(blob)) == "corrupt_data"
    lz = lz4.block.compress(image.tobytes(), store_size=False)
    assert _kind(lz[: len(lz) // 2], "lz4<") == "corrupt_data"


def test_size_and_type_mismatches_are_decode_errors():
    image = np.zeros((64, 64), np.uint16)
    assert _kind(encode_bslz4(image), shape=(32, 64)) == "size_mismatch"  # header says more bytes
    assert _kind(image.tobytes()[:-2], "<") == "size_mismatch"
    assert _kind(b"", "zstd<") == "unknown_encoding"
    assert _kind(b"", "<", dtype="float64") == "unknown_dtype"
    assert _kind(encode_bslz4(image), dtype="uint32", shape=(64, 32)) == "size_mismatch"


def test_absurd_size_in_header_is_rejected_before_the_vendor_decoder():
    blob = (2**40).to_bytes(8, "big") + (8192).to_bytes(4, "big") + b"\0" * 20
    assert _kind(blob) == "size_mismatch"
