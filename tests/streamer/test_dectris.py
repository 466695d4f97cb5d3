import json

import numpy as np
import pytest

from streamer import dectris
from streamer.compression import encode

CONFIG = {"x_pixels_in_detector": 6, "y_pixels_in_detector": 4, "nimages": 3}


def _image(frame=0, series=7, labels=True, encoding="bs16-lz4<", shape=(4, 6)):
    img = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    amp = np.full(shape, 0.5, np.float32) if labels else None
    phase = np.full(shape, -1.0, np.float32) if labels else None
    msg = dectris.image_message(series, frame, encode(img, encoding), shape, "uint16", encoding,
                                times_ns=(10, 20, 10), position_m=(1e-6, 2e-6), position_px=(3, 4),
                                amplitude=amp, phase=phase)
    return img, msg


@pytest.mark.parametrize("detail", ["none", "basic", "all"])
def test_header_round_trip(detail):
    msg = dectris.header_message(3, CONFIG, detail, appendix="run 12")
    header = dectris.parse(msg)
    assert isinstance(header, dectris.SeriesHeader)
    assert (header.series, header.detail, header.appendix) == (3, detail, "run 12")
    assert header.config == (CONFIG if detail != "none" else {})
    if detail == "all":
        assert header.tables["flatfield"].shape == (4, 6)
        assert set(header.tables) == {"flatfield", "pixelmask", "countrate_table"}


def test_image_round_trip_with_extension_parts():
    img, msg = _image()
    assert len(msg) == 7
    frame = dectris.parse(msg)
    np.testing.assert_array_equal(frame.image, img)
    assert (frame.series, frame.frame, frame.position_m, frame.position_px) == (7, 0, (1e-6, 2e-6), (3.0, 4.0))
    assert (frame.start_time_ns, frame.stop_time_ns, frame.real_time_ns) == (10, 20, 10)
    assert frame.labelled and float(frame.phase[0, 0]) == -1.0
    assert json.loads(msg[1])["shape"] == [6, 4]  # SIMPLON: width first


def test_plain_dectris_image_without_extension_is_unlabelled():
    img, msg = _image(labels=False)
    plain = msg[:4]
    frame = dectris.parse(plain)
    assert not frame.labelled and frame.position_m is None
    foreign = plain + [b"user appendix text"]
    assert dectris.parse(foreign).appendix == b"user appendix text"


def test_series_end_round_trip():
    assert dectris.parse(dectris.end_message(9)) == dectris.SeriesEnd(9)


def _kind(parts):
    with pytest.raises(dectris.MalformedMessage) as err:
        dectris.parse(parts)
    return err.value.kind


def test_every_malformed_kind():
    _, msg = _image()
    assert _kind([b"{not json"]) == "malformed_json"
    assert _kind([b"[1, 2]"]) == "malformed_json"
    assert _kind([]) == "missing_parts"
    assert _kind(msg[:3]) == "missing_parts"
    assert _kind(msg[:6]) == "missing_parts"  # label declared, phase missing
    assert _kind(msg + [b"x"]) == "extra_parts"
    assert _kind(msg[:4] + [b"a", b"b"]) == "extra_parts"
    assert _kind(dectris.end_message(1) + [b"x"]) == "extra_parts"
    assert _kind([msg[1]] + msg[:1] + msg[2:]) == "wrong_order"
    assert _kind([msg[0], msg[3], msg[2], msg[1]]) == "wrong_order"
    assert _kind([b'{"htype": "dbogus-1.0"}']) == "unknown_htype"
    bad_type = json.loads(msg[1]) | {"type": "float64"}
    assert _kind([msg[0], json.dumps(bad_type).encode(), *msg[2:]]) == "unknown_dtype"
    bad_enc = json.loads(msg[1]) | {"encoding": "zstd<", "size": None}
    assert _kind([msg[0], json.dumps(bad_enc).encode(), *msg[2:]]) == "unknown_encoding"
    assert _kind([msg[0], msg[1], msg[2][:-3], *msg[3:]]) == "size_mismatch"  # declared size differs
    no_size = json.loads(msg[1]) | {"size": None}
    assert _kind([msg[0], json.dumps(no_size).encode(), msg[2][:30], *msg[3:]]) == "corrupt_data"
    bad_shape = json.loads(msg[1]) | {"shape": [6, 5]}
    assert _kind([msg[0], json.dumps(bad_shape).encode(), *msg[2:]]) == "size_mismatch"
    assert _kind([*msg[:5], msg[5][:-4], msg[6]]) == "size_mismatch"  # label buffer short


def test_header_part_count_is_checked():
    msg = dectris.header_message(1, CONFIG, "all")
    assert _kind(msg[:5]) == "missing_parts"
    assert _kind(msg + [b"appendix", b"extra"]) == "extra_parts"
    bad = list(msg)
    bad[4] = b'{"htype": "dflatfield-1.0", "shape": [6, 4], "type": "float32"}'  # pixelmask expected
    assert _kind(bad) == "wrong_order"


def test_zmq_frames_and_the_descriptor_cache_keep_every_per_frame_check():
    """Parts as the ingest receives them (zmq.Frame); the dimage_d part is cached by its bytes, the blob size
    and the content of every other part are still checked for every frame."""
    zmq = pytest.importorskip("zmq")
    img, msg = _image(frame=0)
    for frame in range(3):  # the same dimage_d bytes each time
        _, msg = _image(frame=frame)
        parsed = dectris.parse([zmq.Frame(p) for p in msg])
        np.testing.assert_array_equal(parsed.image, img)
        assert parsed.frame == frame
    assert _kind([zmq.Frame(p) for p in (msg[0], msg[1], msg[2][:-3], *msg[3:])]) == "size_mismatch"
    assert _kind([zmq.Frame(p) for p in (msg[0], msg[1], msg[2], b'{"htype":"dimage-1.0"}', *msg[4:])]) == "wrong_order"
    bad_size = json.loads(msg[1]) | {"size": "12"}
    assert _kind([msg[0], json.dumps(bad_size).encode(), *msg[2:]]) == "malformed_json"


def test_json_parts_with_surrounding_whitespace_are_valid_and_trailing_garbage_is_not():
    _, msg = _image(labels=False)
    spaced = [b"  " + msg[0] + b"\n", msg[1], msg[2], b"\t" + msg[3] + b" "]
    assert dectris.parse(spaced).frame == 0
    assert _kind([msg[0] + b"}", *msg[1:]]) == "malformed_json"
    assert _kind([msg[0], msg[1], msg[2], msg[3] + b"x"]) == "malformed_json"


def test_the_md5_hash_is_checked_on_request():
    _, msg = _image(labels=False)
    assert dectris.parse(msg, verify_hash=True).hash == json.loads(msg[0])["hash"]
    raw_img, raw = _image(labels=False, encoding="<")
    bad = bytearray(raw[2])
    bad[0] ^= 1  # one bit of a raw pixel: still a valid frame, only the hash can tell
    assert dectris.parse([raw[0], raw[1], bytes(bad), raw[3]]).image[0, 0] != raw_img[0, 0]  # unchecked: accepted
    with pytest.raises(dectris.MalformedMessage) as err:
        dectris.parse([raw[0], raw[1], bytes(bad), raw[3]], verify_hash=True)
    assert err.value.kind == "hash_mismatch"
    no_hash = dectris.image_message(1, 0, bytes(bad), (4, 6), "uint16", "<", with_hash=False)
    assert dectris.parse(no_hash, verify_hash=True).hash == ""  # an empty hash is not checked
