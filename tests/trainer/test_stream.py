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


def _trainer_without_sockets(receiver):
    """A StreamTrainer's evaluation state only (no model, sockets or ranks): what ``_held_for`` reads."""
    from trainer.config import EvalConfig, ModelConfig, TrainerConfig
    from trainer.loop import StreamTrainer

    t = object.__new__(StreamTrainer)
    t.config = TrainerConfig(model=ModelConfig(nconv=4, depth=2, frame_size=32),
                             eval=EvalConfig(enabled=True, count=4, seed=3, object_size_px=64))
    t.receiver, t._held_cache, t.task_series = receiver, {}, [5, 7, 3]
    return t


def test_evaluation_takes_the_scan_its_series_header_names_not_the_series_id(caplog):
    """A re-armed detector is recorded under fresh series ids: series 7 can be the simulator's scan 1. The
    held-out truth must be that scan's object (the header says which), keyed by the task's place in the run."""
    import logging

    import torch

    from streamer.frames import encode_series_start
    from trainer.evaluation import heldout_for

    r = FrameReceiver("tcp://127.0.0.1:1")  # never started: messages are handed in
    r._handle(encode_series_start(7, {"ptychosteer": {"scan_index": 1, "family": "cells"}}))
    r._handle(encode_series_start(5, {"ptychosteer": {"scan_index": True}}))  # not an index: ignored
    assert r.scan_identity == {7: (1, "cells")}
    t = _trainer_without_sockets(r)
    held = t._held_for(1, 7)
    truth = heldout_for(t._sim_config(), 1, 4)
    assert (held.task, held.name) == (1, "cells")
    assert torch.equal(held.batch["amp"], truth.batch["amp"])
    assert held.name != heldout_for(t._sim_config(), 7 - 1, 4).name  # what the series id alone would pick
    fallback = t._held_for(2, 3)  # no header reached this rank: series - first_series
    assert (fallback.task, fallback.name) == (2, "lithography")
    r._handle(encode_series_start(9, {"ptychosteer": {"scan_index": 0, "family": "textures"}}))
    with caplog.at_level(logging.WARNING, logger="trainer.loop"):
        assert t._held_for(3, 9).name == "particles"  # the [eval] settings simulate particles there
    assert "compare with another object" in caplog.text


def test_ranks_skip_status_exchanges_only_where_every_skipped_one_would_have_decided_to_step():
    """Several steps per all-gather with a backlog of k batches on every rank (the trainer fed faster than it
    trains), or in a slower stream's steady state (continuous, window full, no end seen); one step otherwise:
    near a task end, with a short backlog on some rank, or not continuous without a backlog."""
    from trainer.loop import steps_before_next_status as steps

    b, k = 8, 4
    assert steps(ready_min=32, window_min=0, over=True, b=b, k=k, continuous=False) == 4  # backlog, end seen
    assert steps(ready_min=31, window_min=0, over=True, b=b, k=k, continuous=False) == 1  # 3 batches only
    assert steps(ready_min=31, window_min=0, over=False, b=b, k=k, continuous=False) == 1
    assert steps(ready_min=0, window_min=8, over=False, b=b, k=k, continuous=True) == 4  # steady state
    assert steps(ready_min=0, window_min=8, over=True, b=b, k=k, continuous=True) == 1  # an end is in sight
    assert steps(ready_min=8, window_min=7, over=False, b=b, k=k, continuous=True) == 1  # a window not full
    assert steps(ready_min=32, window_min=8, over=True, b=b, k=1, continuous=True) == 1  # status every step


def test_frames_of_a_closed_task_are_counted_and_never_hide_the_next_series(caplog):
    """Frames that waited for a header that never came are released after ``header_wait_s``, possibly after the
    trainer closed their task. They must not sit in the queue as its lowest series: the loop would never see
    the next series and would wait forever."""
    import logging

    import numpy as np

    from streamer.dectris import ImageFrame
    from streamer.frames import encode_frame, encode_series_start

    def frame(series, i):
        one = np.ones((8, 8), np.float32)
        return encode_frame(ImageFrame(series=series, frame=i, image=np.ones((8, 8), np.uint32), encoding="<",
                                       amplitude=one, phase=one))

    r = FrameReceiver("tcp://127.0.0.1:1", notice_endpoint="tcp://127.0.0.1:2", header_wait_s=0.0)  # not started
    r._handle(frame(1, 0))  # its header is lost: it waits
    assert r.held_for_header == 1 and r.lowest_pending() == -1
    assert r.discard(1) == 0  # the trainer closes series 1 (its end was seen elsewhere)
    r._handle(encode_series_start(2, {}))
    r._handle(frame(2, 0))
    with caplog.at_level(logging.WARNING, logger="trainer.stream"):
        r._release_overdue()  # series 1's frame is given up waiting: its task is closed
        r._handle(frame(1, 1))  # a straggler of the closed series
    assert r.lowest_pending() == 2 and r.count(1) == 0 and r.count(2) == 1
    assert r.late_for_closed_task == 2 and r.received == 3
    assert "closed" in caplog.text


def test_a_header_of_another_arming_under_a_closed_series_id_starts_a_new_run(caplog):
    """A restarted detector numbers its series from 1 again (a trainer resumed into a new beamtime): frames under
    an id whose task is closed are trained as a new run's only once their header shows another arming; the same
    arming's late frames stay late."""
    import logging

    import numpy as np

    from streamer.dectris import ImageFrame
    from streamer.frames import encode_frame, encode_series_start

    def frame(series, i):
        one = np.ones((8, 8), np.float32)
        return encode_frame(ImageFrame(series=series, frame=i, image=np.ones((8, 8), np.uint32), encoding="<",
                                       amplitude=one, phase=one))

    first, second = {"data_collection_date": "2026-12-07T10:00:00Z"}, {"data_collection_date": "2026-12-07T11:00:00Z"}
    r = FrameReceiver("tcp://127.0.0.1:1")  # not started: messages handed in directly
    r._handle(encode_series_start(1, first))
    r._handle(frame(1, 0))
    assert r.discard(1) == 1 and r.trained_headers == {1: r.fingerprints[1]}
    r._handle(encode_series_start(1, first))  # the same arming's header again (a resend): still closed
    r._handle(frame(1, 1))
    assert r.late_for_closed_task == 1 and not r.new_run and r.count(1) == 0
    r._handle(encode_series_start(1, {}))  # a header without configuration tells nothing
    assert not r.new_run and 1 in r.closed
    with caplog.at_level(logging.WARNING, logger="trainer.stream"):
        r._handle(encode_series_start(1, second))  # another arming under id 1: a new run
    assert r.new_run and not r.closed and "new run" in caplog.text
    r._handle(frame(1, 0))
    assert r.count(1) == 1 and r.late_for_closed_task == 1  # trained, not dropped
    r.start_new_run()  # the loop saw it (on every rank)
    assert not r.new_run and not r.closed and r.count(1) == 1


def test_with_notices_a_frame_under_a_closed_id_waits_for_the_header_that_tells_late_from_new():
    """Headers come on their own socket and can be overtaken: a frame under a closed series id is held until a
    header says whether it is the first of a new run's series (then the last run's cuts, identities and ends are
    forgotten) or is released as late."""
    import numpy as np

    from streamer.dectris import ImageFrame
    from streamer.frames import encode_frame, encode_series_end, encode_series_start

    def frame(series, i):
        one = np.ones((8, 8), np.float32)
        return encode_frame(ImageFrame(series=series, frame=i, image=np.ones((8, 8), np.uint32), encoding="<",
                                       amplitude=one, phase=one))

    def header(series, date, index):
        return encode_series_start(series, {"data_collection_date": date, "ptychosteer": {"scan_index": index}})

    r = FrameReceiver("tcp://127.0.0.1:1", notice_endpoint="tcp://127.0.0.1:2", header_wait_s=0.0)
    for s in (1, 2):  # the last run: two series, trained and closed
        r._handle(header(s, "A", s - 1))
        r._handle(frame(s, 0))
        r._handle(encode_series_end(s, 1))
        r.discard(s)
    assert r.ended_series == 2 and r.scan_identity[1] == (0, None)
    r._handle(frame(2, 1))  # a late frame of the last run: held, then released as late
    assert r.held_for_header == 1 and r.late_for_closed_task == 0
    r._release_overdue()
    assert r.late_for_closed_task == 1 and r.count(2) == 0
    r._handle(frame(1, 0))  # the new run's first frame overtook its header: held
    assert r.held_for_header == 2 and r.count(1) == 0
    r._handle(header(1, "B", 7))
    assert r.new_run and r.count(1) == 1 and r.late_for_closed_task == 1
    assert r.scan_identity == {1: (7, None)} and r.ended_series == -1 and not r.closed  # the last run forgotten


def test_a_header_of_another_arming_under_an_open_series_id_is_counted(caplog):
    """The new run's header came before the last run's series of that id was trained (its task is open): frames
    under one id cannot be told apart; that is said and counted, not silent."""
    import logging

    from streamer.frames import encode_series_start

    r = FrameReceiver("tcp://127.0.0.1:1")
    r._handle(encode_series_start(1, {"data_collection_date": "A"}))
    r._handle(encode_series_start(1, {"data_collection_date": "A"}))  # a resend: nothing to say
    assert r.armings_mixed == 0
    with caplog.at_level(logging.WARNING, logger="trainer.stream"):
        r._handle(encode_series_start(1, {"data_collection_date": "B"}))
    assert r.armings_mixed == 1 and not r.new_run and "armings_mixed" in caplog.text
