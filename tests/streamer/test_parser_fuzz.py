"""The SIMPLON v1 parser against hostile input: each message that once killed the ingest, and property-based
fuzzing (hypothesis) of random parts, mutated valid messages, extreme numbers and wrong types. The property:
``parse`` returns a message or raises its own :class:`MalformedMessage`, never anything else, and never
allocates from a declared size it has not checked."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer import dectris
from streamer.compression import encode


def _image(series=1, frame=0, shape=(8, 8), dtype="uint16", encoding="bs16-lz4<", **kw):
    img = np.arange(shape[0] * shape[1], dtype=dtype).reshape(shape)
    return dectris.image_message(series, frame, encode(img, encoding), shape, dtype, encoding, **kw)


def _with(parts, index, **changes):
    obj = json.loads(parts[index])
    obj.update(changes)
    return [*parts[:index], json.dumps(obj).encode(), *parts[index + 1:]]


def _deep(n):
    return ("[" * n + "]" * n).encode()


HOSTILE = {  # each of these single messages once stopped the ingest (issue: "a stage dies on one bad message")
    "huge shape, lz4": (_with(_image(encoding="lz4<"), 1, shape=[1 << 31, 1 << 31]), "malformed_json"),
    "huge shape, bs32-lz4": (_with(_image(dtype="uint32", encoding="bs32-lz4<"), 1, shape=[60000, 60000], size=None),
                             "malformed_json"),
    "nested JSON": ([_deep(100_000)], "malformed_json"),
    "nested dconfig": ([*_image()[:3], _deep(100_000)], "malformed_json"),
    "start_time string": (_with(_image(), 3, start_time="soon"), "malformed_json"),
    "start_time NaN": ([*_image()[:3], b'{"htype":"dconfig-1.0","start_time":NaN}'], "malformed_json"),
    "start_time list": (_with(_image(), 3, start_time=[1, 2]), "malformed_json"),
    "start_time 1e30": (_with(_image(), 3, start_time=1e30), "malformed_json"),
    "frame 2**70": (_with(_image(), 0, frame=2**70), "malformed_json"),
    "series -1": (_with(_image(), 0, series=-1), "malformed_json"),
    "labels of another shape": (_image(amplitude=np.ones((4, 4), np.float32), phase=np.ones((4, 4), np.float32),
                                       position_m=(0.0, 0.0)), "label_shape"),
    "position 1e400": ([*_image()[:4], b'{"htype":"ptychosteer-1.0","position_m":[1e400, 0]}'], "malformed_json"),
    "position huge int": ([*_image()[:4], b'{"htype":"ptychosteer-1.0","position_m":[' + b"9" * 400 + b', 0]}'],
                          "malformed_json"),
}


def _header_all(shape):
    parts = dectris.header_message(1, {"x_pixels_in_detector": 2, "y_pixels_in_detector": 2}, "all")
    return _with(parts, 2, shape=shape)


HOSTILE |= {f"header table shape {shape}": (_header_all(shape), "malformed_json")
            for shape in ([-2, 2], [2.0, 2], [2], ["2", 2], [1 << 20, 1 << 20])}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_each_message_that_once_killed_the_ingest_is_a_malformed_message(case):
    parts, kind = HOSTILE[case]
    with pytest.raises(dectris.MalformedMessage) as info:
        dectris.parse(parts)
    assert info.value.kind == kind, str(info.value)


def _check(parts):
    try:
        dectris.parse(parts, verify_hash=True)
    except dectris.MalformedMessage:
        pass


SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=3), max_leaves=8)


@SETTINGS
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=9))
def test_random_parts_never_escape_the_parser(parts):
    _check(parts)


@SETTINGS
@given(index=st.integers(0, 4), key=st.sampled_from(["htype", "series", "frame", "shape", "type", "encoding", "size",
                                                       "start_time", "stop_time", "real_time", "hash", "label",
                                                       "position_m", "position_px", "header_detail"]),
       value=json_values, labelled=st.booleans())
def test_mutated_valid_images_never_escape_the_parser(index, key, value, labelled):
    extra = dict(amplitude=np.ones((8, 8), np.float32), phase=np.ones((8, 8), np.float32),
                 position_m=(0.0, 0.0)) if labelled else {}
    parts = _image(**extra)
    index = min(index, len(parts) - 1)
    try:
        mutated = _with(parts, index, **{key: value})
    except (json.JSONDecodeError, UnicodeDecodeError):  # the blob part: mutate its bytes instead
        mutated = [*parts[:index], json.dumps(value).encode(), *parts[index + 1:]]
    _check(mutated)


@SETTINGS
@given(detail=st.sampled_from(["none", "basic", "all"]), index=st.integers(0, 8), value=json_values)
def test_mutated_series_headers_never_escape_the_parser(detail, index, value):
    parts = dectris.header_message(1, {"x_pixels_in_detector": 2, "y_pixels_in_detector": 2}, detail)
    index = min(index, len(parts) - 1)
    _check([*parts[:index], json.dumps(value).encode(), *parts[index + 1:]])


@SETTINGS
@given(blob=st.binary(max_size=256), encoding=st.sampled_from(["<", "lz4<", "bs16-lz4<", "bs32-lz4<"]),
       dtype=st.sampled_from(["uint8", "uint16", "uint32", "float32"]),
       width=st.integers(1, 1 << 16), height=st.integers(1, 64))
def test_random_blobs_with_any_declared_shape_never_escape_the_decoder(blob, encoding, dtype, width, height):
    parts = _image()
    parts = _with(parts, 1, shape=[width, height], type=dtype, encoding=encoding, size=len(blob))
    _check([parts[0], parts[1], blob, parts[3]])


def test_the_series_configuration_check_names_what_is_wrong():
    from streamer.config import SimulatorConfig
    from streamer.simulator import SimulatedSource

    assert dectris.check_series_config(SimulatedSource(SimulatorConfig()).series_config(0)) is None
    for bad, key in (({"nimages": "many"}, "nimages"), ({"x_pixels_in_detector": -1}, "x_pixels"),
                     ({"count_time": float("nan")}, "count_time"), ({"ptychosteer": [1, 2]}, "mapping"),
                     ({"ptychosteer": {"object_shape": [1 << 20, 1 << 20]}}, "object_shape"),
                     ({"photon_energy": 10**400}, "photon_energy"), ([1, 2], "not a mapping")):
        assert key in dectris.check_series_config(bad)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["nimages", "ntrigger", "x_pixels_in_detector", "count_time",
                                        "photon_energy", "beam_center_x", "ptychosteer", "other"]),
                       json_values, max_size=6) | json_values)
def test_the_series_configuration_check_never_raises(config):
    assert dectris.check_series_config(config) is None or isinstance(dectris.check_series_config(config), str)
