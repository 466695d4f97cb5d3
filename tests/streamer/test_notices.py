"""The series-notice publisher (streamer.notices): every subscriber, newcomers included, gets the open headers."""

import pytest
import zmq

from streamer.frames import SeriesStartNotice, decode_message, encode_series_end, encode_series_start
from streamer.notices import NoticePublisher, subscribe, unwrap


def _subscribe(ctx, pub, until):
    sub = ctx.socket(zmq.SUB)
    subscribe(sub)
    sub.connect(pub.endpoint)
    while not until():  # until both subscriptions have reached the publisher
        assert pub._sock.poll(10_000), "no subscription arrived"
        pub.serve()
    return sub


def test_newcomers_get_the_open_header_on_their_own_topic_and_close_arrivals_share_one_round(ctx):
    now = [0.0]
    pub = NoticePublisher(ctx, "tcp://127.0.0.1:*", resend_interval_s=1.0, clock=lambda: now[0])
    try:
        pub.start(4, encode_series_start(4, {"x_pixels_in_detector": 8}))
        first = _subscribe(ctx, pub, lambda: pub.subscribers == 1 and pub.resent == 1)  # the first: at once
        second = _subscribe(ctx, pub, lambda: pub.subscribers == 2 and len(pub._newcomers) == 1)
        third = _subscribe(ctx, pub, lambda: pub.subscribers == 3 and len(pub._newcomers) == 2)
        assert pub.resent == 1  # within the interval: due, not sent yet
        now[0] = 1.0
        pub.serve()
        assert pub.resent == 3 and not pub._newcomers  # one round: the header to each of the two, once
        pub.serve()
        assert pub.resent == 3
        pub.end(4, encode_series_end(4, 10))  # broadcast: every subscriber gets it
        for sub in (first, second, third):  # each got the header exactly once (not again for the others' arrival)
            kinds = []
            while not kinds or kinds[-1] != "SeriesEndNotice":
                assert sub.poll(10_000)
                kinds.append(type(decode_message(unwrap(sub.recv_multipart()))).__name__)
            assert kinds == ["SeriesStartNotice", "SeriesEndNotice"], kinds
        now[0] = 5.0  # no longer open: a later newcomer gets nothing
        fourth = _subscribe(ctx, pub, lambda: pub.subscribers == 4)
        pub.serve()
        assert pub.resent == 3
        for sub in (first, second, third, fourth):
            sub.close(linger=0)
    finally:
        pub.close(0)


def test_a_notice_without_its_topic_is_refused():
    with pytest.raises(ValueError, match="topic"):
        unwrap([b"{}"])
    assert unwrap([b"notice", b"{}"]) == [b"{}"]
