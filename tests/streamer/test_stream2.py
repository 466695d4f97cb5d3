"""SIMPLON stream v2: messages built from DECTRIS's public specification (not by our builder), compressed by the
reference bitshuffle and LZ4 HDF5 filters (hdf5plugin), parsed into what stream v1 gives; and parser fuzzing."""

import datetime as dt

import cbor2
import h5py
import hdf5plugin
import numpy as np
import pytest
from dectris.compression import decompress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer import dectris, stream2
from streamer.compression import Chunk, DecodeError, check_chunk, encode_bslz4
from streamer.frames import FrameFormatError, decode_message, encode_frame


def _filter_chunk(tmp_path, image, filt):
    """The chunk the reference HDF5 filter (hdf5plugin) writes for ``image``: an independent encoder."""
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        ds = f.create_dataset("x", data=image[None], chunks=(1, *image.shape), **filt)
        mask, blob = ds.id.read_direct_chunk((0, 0, 0))
    assert mask == 0
    return blob


def _md(array, payload):
    """RFC 8746 tag 40 over a typed array, as the specification writes it (row-major [rows, columns])."""
    tag = {np.dtype("uint8"): 64, np.dtype("<u2"): 69, np.dtype("<u4"): 70, np.dtype("<f4"): 85}[array.dtype]
    return cbor2.CBORTag(40, [list(array.shape), cbor2.CBORTag(tag, payload)])


def _spec_start(shape):
    mask = np.zeros(shape, "<u4")
    mask[:, 3] = 1  # a gap column
    return {"type": "start", "series_id": 7, "series_unique_id": "abc-7",
            "arm_date": cbor2.CBORTag(0, "2026-12-01T08:00:00Z"), "beam_center_x": 20.5, "beam_center_y": 11.0,
            "channels": ["threshold_1", "threshold_2"], "count_time": 0.001, "frame_time": 0.0011,
            "countrate_correction_enabled": True,
            "countrate_correction_lookup_table": cbor2.CBORTag(70, np.arange(16, dtype="<u4").tobytes()),
            "detector_description": "Dectris EIGER2 Si 1M", "detector_serial_number": "E-32-0123",
            "detector_translation": [0.0, 0.0, 2.0],
            "flatfield": {"threshold_1": _md(np.full(shape, 1.5, "<f4"), np.full(shape, 1.5, "<f4").tobytes()),
                          "threshold_2": _md(np.ones(shape, "<f4"), np.ones(shape, "<f4").tobytes())},
            "flatfield_enabled": True, "goniometer": {"omega": {"increment": 0.1, "start": 0.0}},
            "image_size_x": shape[1], "image_size_y": shape[0], "incident_energy": 8800.0,
            "incident_wavelength": 1.4089, "number_of_images": 3,
            "pixel_mask": {"threshold_1": _md(mask, mask.tobytes()), "threshold_2": _md(mask, mask.tobytes())},
            "pixel_mask_enabled": True, "pixel_size_x": 75e-6, "pixel_size_y": 75e-6, "saturation_value": 123456,
            "sensor_material": "Si", "sensor_thickness": 450e-6,
            "threshold_energy": {"threshold_1": 4400.0, "threshold_2": 6600.0},
            "user_data": {"operator": "beamline", "proposal": 1234}, "virtual_pixel_interpolation_enabled": False}


def test_a_start_message_from_the_specification_gives_the_series_header_and_its_tables():
    shape = (12, 40)
    msg = cbor2.dumps(cbor2.CBORTag(55799, _spec_start(shape)))
    header = stream2.parse([msg])
    assert isinstance(header, dectris.SeriesHeader) and header.series == 7 and header.detail == "all"
    c = header.config
    assert (c["x_pixels_in_detector"], c["y_pixels_in_detector"], c["nimages"]) == (40, 12, 3)
    assert c["beam_center_x"] == 20.5 and c["photon_energy"] == 8800.0 and c["x_pixel_size"] == 75e-6
    assert c["arm_date"].startswith("2026-12-01") and c["threshold_energy"]["threshold_2"] == 6600.0
    assert dectris.check_series_config(c) is None
    np.testing.assert_array_equal(header.tables["flatfield"], np.full(shape, 1.5, np.float32))
    assert header.tables["pixelmask"][:, 3].all() and header.tables["pixelmask"].sum() == shape[0]
    assert "flatfield_threshold_2" in header.tables and header.tables["countrate_table"].tolist() == list(range(16))
    assert '"proposal":1234' in header.appendix  # the header appendix (user_data), kept


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_an_image_message_from_the_specification_decodes_every_channel_bit_exactly(tmp_path, dtype):
    rng = np.random.default_rng(1)
    shape = (33, 70)  # not a multiple of the bitshuffle block: the raw tail is exercised too
    t1 = rng.poisson(40, shape).astype(dtype).astype(np.dtype(dtype).newbyteorder("<"))
    t2 = rng.poisson(3, shape).astype(t1.dtype)
    bs = _filter_chunk(tmp_path, t1, hdf5plugin.Bitshuffle(cname="lz4"))
    lz = _filter_chunk(tmp_path, t2, hdf5plugin.LZ4())
    body = {"type": "image", "series_id": 7, "series_unique_id": "abc-7", "image_id": 2,
            "series_date": cbor2.CBORTag(0, "2026-12-01T08:00:00Z"),
            "start_time": [2_000, 1_000_000], "stop_time": [2_900, 1_000_000], "real_time": [900, 1_000_000],
            "data": {"threshold_1": _md(t1, cbor2.CBORTag(56500, ["bslz4", t1.dtype.itemsize, bs])),
                     "threshold_2": _md(t2, cbor2.CBORTag(56500, ["lz4", 0, lz]))},
            "user_data": {"shutter": "open"}}
    msg = cbor2.dumps(cbor2.CBORTag(55799, body))
    for keep in (False, True):
        image = stream2.parse([msg], keep_chunks=keep)
        assert isinstance(image, dectris.ImageFrame) and (image.series, image.frame) == (7, 2)
        np.testing.assert_array_equal(image.pixels(), t1)
        assert image.channel == "threshold_1" and [n for n, _ in image.channels] == ["threshold_2"]
        np.testing.assert_array_equal(np.asarray(image.channels[0][1]), t2)
        assert (image.start_time_ns, image.stop_time_ns, image.real_time_ns) == (2_000_000, 2_900_000, 900_000)
        assert cbor2.loads(image.appendix) == {"shutter": "open"}
        assert (image.chunk is not None) == keep  # a bslz4 image is kept as its chunk when asked
    kept = stream2.parse([msg], keep_chunks=True)
    assert bytes(kept.chunk.data) == bs  # the blob as sent: a valid HDF5 chunk, byte for byte


def test_an_uncompressed_image_and_its_labels_come_through():
    img = np.arange(24, dtype="<u2").reshape(4, 6)
    amp, phase = np.full((4, 6), 0.5, "<f4"), np.full((4, 6), -1.0, "<f4")
    body = {"type": "image", "series_id": 1, "image_id": 0, "data": {"one": _md(img, img.tobytes())},
            "user_data": {"ptychosteer": {"position_px": [3.0, 4.0], "amplitude": _md(amp, amp.tobytes()),
                                          "phase": _md(phase, phase.tobytes())}}}
    image = stream2.parse([cbor2.dumps(body)])  # without the self-described tag: accepted too
    np.testing.assert_array_equal(image.image, img)
    assert image.labelled and image.position_px == (3.0, 4.0) and image.appendix is None
    np.testing.assert_array_equal(image.phase, phase)


def test_the_end_message_and_the_wrong_protocol_either_way():
    assert stream2.parse([cbor2.dumps({"type": "end", "series_id": 7, "series_unique_id": "x"})]) == \
        dectris.SeriesEnd(series=7)
    v1 = dectris.header_message(1, {"nimages": 1})
    with pytest.raises(dectris.MalformedMessage) as err:
        stream2.parse(v1)
    assert err.value.kind == "wrong_protocol" and "--protocol v1" in str(err.value)
    with pytest.raises(dectris.MalformedMessage) as err:
        dectris.parse([stream2.end_message(1)])
    assert err.value.kind == "wrong_protocol" and "--protocol v2" in str(err.value)


@pytest.mark.parametrize("body, kind", [
    ({"type": "image", "series_id": 1, "image_id": 0}, "missing_parts"),
    ({"type": "image", "series_id": -1, "image_id": 0, "data": {}}, "malformed_json"),
    ({"type": "image", "series_id": 1, "image_id": 0,
      "data": {"a": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, b"\0" * 31)])}}, "size_mismatch"),
    ({"type": "image", "series_id": 1, "image_id": 0,
      "data": {"a": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["zstd", 0, b"x"]))])}},
     "unknown_encoding"),
    ({"type": "image", "series_id": 1, "image_id": 0,
      "data": {"a": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 4, b"x"]))])}},
     "size_mismatch"),
    ({"type": "image", "series_id": 1, "image_id": 0,
      "data": {"a": cbor2.CBORTag(40, [[1 << 20, 1 << 20], cbor2.CBORTag(69, b"")])}}, "malformed_json"),
    ({"type": "image", "series_id": 1, "image_id": 0, "start_time": [1, 0],
      "data": {"a": cbor2.CBORTag(40, [[1, 1], cbor2.CBORTag(69, b"\0\0")])}}, "malformed_json"),
    ({"type": "gossip"}, "unknown_htype"),
    ([1, 2, 3], "malformed_cbor"),
])
def test_malformed_v2_messages_are_clear_errors(body, kind):
    with pytest.raises(dectris.MalformedMessage) as err:
        stream2.parse([cbor2.dumps(body)])
    assert err.value.kind == kind


def test_a_corrupt_chunk_is_refused_by_its_framing_and_a_consumer_counts_what_it_cannot_decode():
    img = np.random.default_rng(0).poisson(9, (40, 40)).astype("<u4")
    blob = encode_bslz4(img)
    check_chunk(blob, img.nbytes, 4)
    with pytest.raises(DecodeError):
        check_chunk(blob[:-5], img.nbytes, 4)  # truncated
    with pytest.raises(DecodeError):
        check_chunk(blob + b"\0", img.nbytes, 4)  # trailing junk
    # framing intact, LZ4 content flipped: only decoding finds it, in the consumer, as a format error
    bad = bytearray(blob)
    bad[20] ^= 0xFF
    frame = dectris.ImageFrame(series=1, frame=0, image=None, encoding="bs32-lz4<",
                               chunk=Chunk(bytes(bad), img.shape, "uint32"))
    parts = encode_frame(frame, 0)
    try:
        decoded = decode_message(parts)
    except FrameFormatError:
        return
    assert not np.array_equal(decoded.image, img)  # where LZ4 cannot tell, the values differ (never silently equal)


def test_a_chunk_frame_is_forwarded_compressed_and_decoded_by_the_consumer():
    img = np.random.default_rng(2).poisson(9, (16, 24)).astype("<u2")
    frame = dectris.ImageFrame(series=3, frame=5, image=None, encoding="bs16-lz4<",
                               chunk=Chunk(encode_bslz4(img), img.shape, "uint16"), position_px=(1.0, 2.0))
    parts = encode_frame(frame, 123)
    assert b'"encoding":"bslz4"' in parts[0] and len(parts[1]) < img.nbytes
    got = decode_message(parts)
    np.testing.assert_array_equal(got.image, img)
    assert (got.scan, got.frame, got.position_px, got.t_recv_ns) == (3, 5, (1.0, 2.0), 123)


def test_the_vendor_decoder_reads_what_the_reference_filter_wrote(tmp_path):
    img = np.random.default_rng(3).poisson(5, (20, 30)).astype("<u4")
    blob = _filter_chunk(tmp_path, img, hdf5plugin.Bitshuffle(cname="lz4"))
    assert np.frombuffer(decompress(blob, "bslz4", elem_size=4), "<u4").reshape(img.shape).tolist() == img.tolist()
    check_chunk(blob, img.nbytes, 4)  # the reference filter's framing passes our check


_spec_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8) | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    | st.builds(lambda t, v: cbor2.CBORTag(t, v), st.sampled_from([0, 40, 64, 69, 70, 85, 56500, 55799, 99]), inner),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["start", "image", "end", None]), extra=st.dictionaries(
    st.sampled_from(["series_id", "image_id", "data", "user_data", "start_time", "channels", "flatfield",
                     "pixel_mask", "image_size_x", "countrate_correction_lookup_table"]), _spec_values, max_size=6))
def test_the_v2_parser_raises_only_malformed_message_on_structured_junk(kind, extra):
    body = dict(extra)
    if kind:
        body["type"] = kind
    try:
        data = cbor2.dumps(body)
    except (cbor2.CBOREncodeError, ValueError, TypeError, OverflowError):
        return
    try:
        stream2.parse([data])
    except dectris.MalformedMessage:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_the_v2_parser_raises_only_malformed_message_on_random_bytes(data):
    try:
        stream2.parse([data])
    except dectris.MalformedMessage:
        pass


def test_a_self_described_start_with_its_datetime_parses_with_the_time_kept():
    body = _spec_start((4, 4))
    body["arm_date"] = dt.datetime(2026, 12, 1, 8, tzinfo=dt.timezone.utc)
    header = stream2.parse([cbor2.dumps(cbor2.CBORTag(55799, body))])
    assert header.config["arm_date"] == "2026-12-01T08:00:00+00:00"
