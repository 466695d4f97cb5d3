"""Frames cut to the model: an EIGER2 1M frame (1028x1062 uint32, module gaps at 0xFFFFFFFF) to 32x32."""

import numpy as np
import pytest
import torch.nn.functional as F
import torch

from streamer.frames import Frame, SeriesStartNotice, decode_message, encode_series_end, encode_series_start
from trainer.prepare import Preparation, SeriesContext
from trainer.stream import FrameReceiver

GAP = np.uint32(0xFFFFFFFF)


def _eiger_1m(seed=0):
    """1028 rows x 1062 columns: 2 x 1 modules of 514 x 1030 plus gaps, a dead pixel, a Poisson speckle pattern
    centred on the beam at (y, x) = (500.0, 530.0)."""
    rng = np.random.default_rng(seed)
    y, x = np.indices((1028, 1062))
    intensity = 5e4 / (1 + ((y - 500.0) ** 2 + (x - 530.0) ** 2) / 20.0) ** 1.5
    frame = rng.poisson(intensity).astype(np.uint32)
    frame[512:550, :] = GAP  # the horizontal gap between modules (rows 512..549: crosses the region of interest)
    frame[:, 1030:] = GAP  # a vertical gap at the right edge
    frame[490, 520] = GAP  # a dead pixel
    return frame


def test_a_1m_frame_with_module_gaps_is_cut_around_the_beam_masked_and_binned():
    frame = _eiger_1m()
    mask = np.zeros(frame.shape, np.uint32)
    mask[495, 525] = 4  # a pixel the header's pixel mask flags (any bit)
    flat = np.full(frame.shape, 1.25, np.float32)
    prep = Preparation(size=32, binning=2)
    ctx = prep.context({"beam_center_x": 530.0, "beam_center_y": 500.0, "count_time": 0.002},
                       {"pixelmask": mask, "flatfield": flat})
    image, valid = prep.image(frame, ctx)
    assert image.shape == valid.shape == (32, 32) and image.dtype == np.float32
    # the region of interest is rows 468..531, columns 498..561: the beam at its centre, bin (16, 16)
    roi = frame[468:532, 498:562].astype(np.float64)
    bad = (roi == GAP)
    bad[495 - 468, 525 - 498] = True
    good = np.where(bad, 0, roi * 1.25).reshape(32, 2, 32, 2)
    n_good = (~bad).reshape(32, 2, 32, 2).sum(axis=(1, 3))
    expected = np.where(n_good > 0, good.sum(axis=(1, 3)) * 4 / np.maximum(n_good, 1), 0)
    np.testing.assert_allclose(image, expected, rtol=1e-5)
    assert np.unravel_index(np.argmax(image), image.shape) == (16, 16)  # the beam at the centre of the input
    # the gap rows 512..531 are bins 22..31 (no valid pixel: zero), the dead and masked pixels spoil one bin each
    assert not valid[22:].any() and (image[22:] == 0).all() and valid[:22].sum() == 22 * 32 - 2
    assert not valid[(490 - 468) // 2, (520 - 498) // 2] and not valid[(495 - 468) // 2, (525 - 498) // 2]
    assert image.max() < 2**31  # nothing of the 0xFFFFFFFF fill reached the input


def test_without_a_header_the_frame_centre_is_used_and_gaps_are_still_masked():
    frame = _eiger_1m()
    prep = Preparation(size=32, binning=1)
    image, valid = prep.image(frame, SeriesContext())
    np.testing.assert_array_equal(image, np.where(frame[498:530, 515:547] == GAP, 0, frame[498:530, 515:547]))
    assert not valid[512 - 498:].any()


def test_a_region_beyond_the_frame_is_zero_and_invalid_and_count_time_scales():
    frame = np.full((40, 40), 10, np.uint16)
    prep = Preparation(size=16, binning=1, center=(2.0, 38.0), count_time_s=0.004)
    image, valid = prep.image(frame, prep.context({"count_time": 0.001}))
    assert (image[valid] == 40).all() and (image[~valid] == 0).all()
    assert valid[6:, :10].all() and not valid[:6].any() and not valid[:, 10:].any()


def test_a_frame_of_the_models_size_with_nothing_to_mask_is_passed_through_untouched():
    frame = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    prep = Preparation(size=32)
    image, valid = prep.image(frame, prep.context({"beam_center_x": 16.0, "beam_center_y": 16.0}))
    assert image is frame and valid is None
    frame[3, 4] = 65535  # a pixel at the type's maximum: masked even then
    image, valid = prep.image(frame, SeriesContext())
    assert image[3, 4] == 0 and not valid[3, 4] and valid.sum() == 32 * 32 - 1


def test_labels_and_positions_follow_the_geometry_of_the_cut():
    """A region of interest of R from M detector pixels makes object pixels M/R larger, binning narrows the field:
    the prepared label is exactly the area-averaged object at the prepared position."""
    rng = np.random.default_rng(3)
    obj = (0.5 + 0.5 * rng.random((256, 256))) * np.exp(1j * rng.normal(0, 0.5, (256, 256)))
    coarse = F.avg_pool2d(torch.as_tensor(np.stack([obj.real, obj.imag]))[None], 2)[0].numpy()
    coarse = coarse[0] + 1j * coarse[1]  # the object in the pixels of a region of interest of 32 from 64
    prep = Preparation(size=16, binning=2)  # region 32 of a 64-pixel frame, binned to 16
    for top_left in [(0, 0), (64, 96), (190, 10)]:
        patch = obj[top_left[0]:top_left[0] + 64, top_left[1]:top_left[1] + 64]
        frame = Frame(scan=1, frame=0, image=np.ones((64, 64), np.uint32) * 7, position_px=top_left,
                      amplitude=np.abs(patch).astype(np.float32), phase=np.angle(patch).astype(np.float32))
        out = prep.frame(frame, SeriesContext())
        assert out.image.shape == out.amplitude.shape == (16, 16)
        py, px = out.position_px
        assert float(py).is_integer() and float(px).is_integer()
        expected = coarse[int(py):int(py) + 16, int(px):int(px) + 16]
        np.testing.assert_allclose(out.amplitude * np.exp(1j * out.phase), expected, atol=1e-5)
        assert prep.object_position((py, px), (64, 64)) == pytest.approx(top_left)  # back where the beam was


def test_the_preparation_round_trips_and_refuses_what_it_does_not_know():
    prep = Preparation(size=64, binning=4, center=(514.0, 531.0), count_time_s=0.001)
    assert Preparation.from_dict(prep.to_dict(), 64) == prep
    assert Preparation.from_dict(None, 32) == Preparation(size=32)
    with pytest.raises(ValueError, match="unknown"):
        Preparation.from_dict({"bining": 2}, 64)
    with pytest.raises(ValueError, match="model's input size"):
        Preparation.from_dict({"size": 32}, 64)
    with pytest.raises(ValueError):
        Preparation(size=64, binning=0)


def test_the_series_start_carries_the_header_tables_to_every_rank():
    mask = np.zeros((8, 9), np.uint32)
    mask[1, 2] = 1
    parts = encode_series_start(3, {"beam_center_x": 4.0}, None, {"pixelmask": mask,
                                                                "flatfield": np.ones((8, 9), np.float32)})
    notice = decode_message(parts)
    assert isinstance(notice, SeriesStartNotice) and notice.tables["pixelmask"][1, 2] == 1
    assert notice.tables["flatfield"].shape == (8, 9)


def test_the_receiver_cuts_frames_with_their_series_header_and_counts_those_without():
    from streamer.dectris import ImageFrame
    from streamer.frames import encode_frame

    receiver = FrameReceiver("tcp://127.0.0.1:1", prepare=Preparation(size=32, binning=2))
    frame = _eiger_1m()
    label = np.ones((1028, 1062), np.float32)
    image = ImageFrame(series=1, frame=0, image=frame, encoding="<", position_px=(0.0, 0.0), amplitude=label,
                       phase=np.zeros_like(label))
    receiver._handle(encode_frame(image))  # before its header
    receiver._handle(encode_series_start(2, {"beam_center_x": 530.0, "beam_center_y": 500.0}))
    receiver._handle(encode_frame(ImageFrame(**{**vars(image), "series": 2})))
    first, second = receiver.take(1, 1)[0], receiver.take(2, 1)[0]
    assert receiver.without_header == 1
    assert first.image.shape == second.image.shape == first.amplitude.shape == (32, 32)
    assert np.unravel_index(np.argmax(second.image), (32, 32)) == (16, 16)  # around the header's beam centre
    assert np.unravel_index(np.argmax(first.image), (32, 32)) != (16, 16)  # around the frame's centre


def _labelled(series, frame_id, image):
    from streamer.dectris import ImageFrame
    from streamer.frames import encode_frame

    ones = np.ones(image.shape, np.float32)
    return encode_frame(ImageFrame(series=series, frame=frame_id, image=image, encoding="<", position_px=(0.0, 0.0),
                                   amplitude=ones, phase=np.zeros_like(ones)))


def _masked_header(series):
    mask = np.zeros((32, 32), np.uint32)
    mask[3, 4] = 1
    return encode_series_start(series, {}, None, {"pixelmask": mask})


def test_with_a_notice_endpoint_a_frame_waits_for_its_header_and_is_cut_with_it():
    """Frames and headers come on two sockets: a frame that overtook its header waits for it instead of being
    prepared without the header's mask; one whose header never comes goes on after ``header_wait_s``."""
    receiver = FrameReceiver("tcp://127.0.0.1:1", prepare=Preparation(size=32), notice_endpoint="tcp://127.0.0.1:2",
                             header_wait_s=3600)
    image = np.full((32, 32), 7, np.uint16)
    receiver._handle(_labelled(4, 0, image))
    receiver._handle(_labelled(4, 1, image))
    assert receiver.count(4) == 0 and receiver.held_for_header == 2  # waiting, not prepared without the mask
    receiver._handle(_masked_header(4))
    got = receiver.take(4, 10)
    assert [f.frame for f in got] == [0, 1] and receiver.without_header == 0
    assert all(not f.valid[3, 4] and f.image[3, 4] == 0 and f.image[0, 0] == 7 for f in got)
    receiver._handle(_labelled(4, 2, image))  # its header is here: straight on
    assert receiver.count(4) == 1

    receiver._handle(_labelled(5, 0, image))  # a header that never comes
    receiver._handle(_labelled(5, 1, image))
    receiver._release_overdue()
    assert receiver.count(5) == 0  # not overdue yet
    receiver.header_wait_s = 0.0
    receiver._release_overdue()
    assert receiver.count(5) == 2 and receiver.without_header == 2
    receiver._handle(_labelled(5, 2, image))  # given up on: later frames do not wait again
    assert receiver.count(5) == 3 and receiver.without_header == 3

    receiver.header_wait_s = 3600
    receiver._handle(_labelled(6, 0, image))
    receiver._handle(encode_series_end(6, 1))  # its end: the header will not come any more
    assert receiver.count(6) == 1 and receiver.without_header == 4


def test_without_a_notice_endpoint_nothing_waits():
    receiver = FrameReceiver("tcp://127.0.0.1:1", prepare=Preparation(size=32))
    receiver._handle(_labelled(4, 0, np.full((32, 32), 7, np.uint16)))
    assert receiver.count(4) == 1 and receiver.without_header == 1 and receiver.held_for_header == 0


def test_a_series_end_on_the_notice_socket_is_not_a_task_boundary():
    """The notices can overtake frames still queued on the frames' socket: only an end on the frames' socket (after
    this rank's frames, in order) ends the task here."""
    receiver = FrameReceiver("tcp://127.0.0.1:1", prepare=Preparation(size=32), notice_endpoint="tcp://127.0.0.1:2")
    receiver._handle(_masked_header(4), notice=True)
    receiver._handle(encode_series_end(4, 100), notice=True)
    assert receiver.ended_series == -1
    receiver._handle(_labelled(4, 99, np.full((32, 32), 7, np.uint16)))  # a frame that was still in flight
    assert receiver.count(4) == 1 and receiver.without_header == 0
    receiver._handle(encode_series_end(4, 100))
    assert receiver.ended_series == 4
