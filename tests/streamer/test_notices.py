"""The series-notice publisher (streamer.notices): every subscriber, newcomers included, gets the open headers."""

import zmq

from streamer.frames import SeriesStartNotice, decode_message, encode_series_end, encode_series_start
from streamer.notices import NoticePublisher


def _subscribe(ctx, pub, want):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.endpoint)
    while pub.subscribers < want:  # until the subscription has reached the publisher
        assert pub._sock.poll(10_000), "no subscription arrived"
        pub.serve()
    return sub


def test_newcomers_get_the_open_header_and_close_arrivals_share_one_resend(ctx):
    now = [0.0]
    pub = NoticePublisher(ctx, "tcp://127.0.0.1:*", resend_interval_s=1.0, clock=lambda: now[0])
    try:
        pub.start(4, encode_series_start(4, {"x_pixels_in_detector": 8}))
        first = _subscribe(ctx, pub, 1)
        assert pub.resent == 1  # the first newcomer: at once
        second, third = _subscribe(ctx, pub, 2), _subscribe(ctx, pub, 3)
        assert pub.resent == 1  # within the interval: due, not sent yet
        now[0] = 1.0
        pub.serve()
        assert pub.resent == 2  # one resend for both
        pub.serve()
        assert pub.resent == 2
        for sub in (second, third):
            assert sub.poll(10_000)
            notice = decode_message(sub.recv_multipart())
            assert isinstance(notice, SeriesStartNotice) and notice.scan == 4
        pub.end(4, encode_series_end(4, 10))  # no longer open: a later newcomer gets nothing again
        now[0] = 5.0
        _subscribe(ctx, pub, 4).close(linger=0)
        assert pub.resent == 2
        for sub in (first, second, third):
            sub.close(linger=0)
    finally:
        pub.close(0)
