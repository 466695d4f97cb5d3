"""The trainer's view of the stream (trainer.stream.FrameReceiver), without sockets."""

import time

from trainer.stream import FrameReceiver


def test_a_stream_that_has_not_begun_gets_ten_times_the_idle_timeout():
    """A labeler's first frames come after a whole scan and its reconstruction: the idle clock runs slower
    until the first message, then at full speed."""
    r = FrameReceiver("tcp://127.0.0.1:1")  # never started: nothing arrives
    r.last_arrival = time.monotonic() - 100.0
    assert 9.9 < r.idle_s() < 10.5
    r._handle([b'{"schema":1,"kind":"series_end","scan":1,"frames":0}'])  # the first message
    assert r.heard
    r.last_arrival = time.monotonic() - 100.0
    assert 99.9 < r.idle_s() < 100.5
