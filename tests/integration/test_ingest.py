import json
import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import zmq

from streamer import dectris
from streamer.compression import encode
from streamer.config import IngestConfig, SimulatorConfig
from streamer.frames import Frame, SeriesEndNotice, SeriesStartNotice, decode_message
from streamer.hdf5 import Recording
from streamer.replay import FileSource
from streamer.simulator import Control, Detector, SimulatedSource
from streamer.notices import subscribe, unwrap

from .helpers import frame_digest, raw_detector, running_ingest

pytestmark = pytest.mark.integration

SIM = dict(endpoint="tcp://127.0.0.1:*", frame_size=32, object_size_px=64, overlap=0.5, linger_ms=5000)


def _ingest_config(endpoint, tmp_path, **kw):
    base = dict(detector_endpoint=endpoint, output_path=str(tmp_path / "rec.h5"), train_endpoint="tcp://127.0.0.1:*",
                live_endpoint="", stats_interval_s=60)
    return IngestConfig(**(base | kw))


def _through_ingest(ctx, sim, out, **kw):
    """The simulator's scans through an ingest with a trainer socket attached: (ingest, detector, what the trainer
    socket got up to the last series' end)."""
    with Detector(sim, context=ctx) as det:
        config = _ingest_config(det.endpoint, out, max_series=sim.scans, **{"stats_interval_s": 0.05, **kw})
        with running_ingest(config, ctx) as (ingest, thread):
            trainer = ctx.socket(zmq.PULL)
            trainer.connect(ingest.train_endpoint)
            _until(lambda: ingest.stats.trainer_peers >= 1, what="the trainer to connect")  # or it drops frames
            det.run()
            thread.join(timeout=60)
            got = []
            while trainer.poll(2000):
                msg = decode_message(trainer.recv_multipart(copy=False))
                got.append(msg)
                if isinstance(msg, SeriesEndNotice) and msg.scan == sim.first_series + sim.scans - 1:
                    break
            trainer.close(linger=0)
    return ingest, det, got


def _expected_images(config):
    return [f.image for frames in SimulatedSource(config).scans(Control()) for f in frames]


@pytest.mark.parametrize("encoding", ["raw", "lz4", "bslz4"])
def test_simulator_to_ingest_to_file_persists_every_frame(ctx, tmp_path, encoding):
    sim = SimulatorConfig(**SIM, scans=2, encoding=encoding, seed=4)
    ingest, det, got = _through_ingest(ctx, sim, tmp_path, block_frames=7)
    expected = _expected_images(sim)
    stats = ingest.snapshot()
    assert stats["received"] == stats["persisted"] == det.frames_sent == len(expected)
    assert stats["malformed"] == 0
    with Recording(tmp_path / "rec.h5") as rec:
        assert len(rec) == len(expected)
        frames = list(rec.frames())
        assert frame_digest(f.image for f in frames) == frame_digest(expected)
        assert all(f.amplitude is not None and f.position_m is not None for f in frames)
        assert sorted(set(rec.series_ids())) == [1, 2]
        assert rec.series_config(1)["ptychosteer"]["family"] == sim.families[0]
    images = [m for m in got if isinstance(m, Frame)]
    assert stats["forwarded"] == len(images) == len(expected)
    assert frame_digest(m.image for m in images) == frame_digest(expected)
    # raw frames are forwarded as the received buffers (zero-copy): the labels must come through intact too
    assert frame_digest(m.amplitude for m in images) == frame_digest(f.amplitude for f in frames)
    assert frame_digest(m.phase for m in images) == frame_digest(f.phase for f in frames)


def _valid(series, frame, shape=(8, 8)):
    img = np.full(shape, frame, np.uint16)
    return dectris.image_message(series, frame, encode(img, "bs16-lz4<"), shape, "uint16", "bs16-lz4<")


def _tampered(series, frame, shape=(8, 8)):
    """A raw image whose blob was altered after its MD5 was computed (same size: only the hash can tell)."""
    parts = dectris.image_message(series, frame, np.full(shape, frame, np.uint16).tobytes(), shape, "uint16", "<")
    return [parts[0], parts[1], b"\x01" + parts[2][1:], *parts[3:]]


def test_bad_input_is_counted_quarantined_and_the_ingest_keeps_running(ctx, tmp_path):
    det, endpoint = raw_detector(ctx)
    good = _valid(1, 0)
    bad = {
        "malformed_json": [b"{oops"],
        "missing_parts": good[:2],
        "extra_parts": good + [b"a", b"b", b"c"],
        "wrong_order": [good[1], good[0], good[2], good[3]],
        "unknown_htype": [b'{"htype":"dmystery-1.0"}'],
        "size_mismatch": [good[0], good[1], good[2][:-1], good[3]],
        "corrupt_data": [good[0], good[1], good[2][:12] + b"\xff" * (len(good[2]) - 12), good[3]],
        "unknown_encoding": [good[0], json.dumps(json.loads(good[1]) | {"encoding": "xz<"}).encode(), *good[2:]],
        "unknown_dtype": [good[0], json.dumps(json.loads(good[1]) | {"type": "int7"}).encode(), *good[2:]],
        "duplicate_frame": _valid(1, 0),
        "no_series_header": _valid(99, 0),
        "shape_changed": _valid(1, 5, shape=(4, 4)),
        "hash_mismatch": _tampered(1, 7),
        "unknown_series_end": dectris.end_message(42),  # must not count toward max_series (1 here)
    }
    config = _ingest_config(endpoint, tmp_path, max_series=1, train_endpoint="", verify_hash=True)
    with running_ingest(config, ctx) as (ingest, thread):
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8}, "basic"))
        det.send_multipart(good)
        for parts in bad.values():
            det.send_multipart(parts)
        det.send_multipart(_valid(1, 1))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
    det.close(linger=0)
    stats = ingest.snapshot()
    assert stats["malformed_by_kind"] == {kind: 1 for kind in bad}
    assert stats["received"] == stats["persisted"] == 2
    with Recording(tmp_path / "rec.h5") as rec:
        assert rec.quarantine() == {kind: 1 for kind in bad}
        assert [int(f.image[0, 0]) for f in rec.frames()] == [0, 1]
    with h5py.File(tmp_path / "rec.h5", "r") as f:
        q = [g for g in f["entry/quarantine"].values() if g.attrs["kind"] == "extra_parts"][0]
        assert q.attrs["parts"] == 7 and bytes(q["part_006"][...]) == b"c"


def test_frames_no_trainer_takes_are_dropped_for_training_but_persisted(ctx, tmp_path):
    sim = SimulatorConfig(**SIM, scans=1)
    with Detector(sim, context=ctx) as det:
        with running_ingest(_ingest_config(det.endpoint, tmp_path, max_series=1), ctx) as (ingest, thread):
            det.run()  # nobody is connected to the trainer endpoint
            thread.join(timeout=60)
    stats = ingest.snapshot()
    assert stats["dropped"] == stats["received"] == stats["persisted"] == det.frames_sent > 0
    assert stats["forwarded"] == 0


def test_a_stalled_trainer_never_blocks_the_receive_loop(ctx, tmp_path):
    sim = SimulatorConfig(**(SIM | dict(frame_size=128, object_size_px=512, overlap=0.75)), scans=1, encoding="raw")
    with Detector(sim, context=ctx) as det:
        config = _ingest_config(det.endpoint, tmp_path, max_series=1, train_hwm=1)
        with running_ingest(config, ctx) as (ingest, thread):
            stalled = ctx.socket(zmq.PULL)
            stalled.setsockopt(zmq.RCVHWM, 1)
            stalled.setsockopt(zmq.RCVBUF, 4096)
            stalled.connect(ingest.train_endpoint)
            det.run()
            thread.join(timeout=60)
            stalled.close(linger=0)
    stats = ingest.snapshot()
    assert stats["persisted"] == stats["received"] == det.frames_sent
    assert stats["dropped"] > 0 and stats["forwarded"] + stats["dropped"] == stats["received"]


def test_a_stopped_simulator_whose_receiver_is_gone_gives_up_instead_of_blocking_forever():
    """A PUSH socket with no receiver blocks a send for good: a simulator stopped (SIGTERM) after its ingest left
    must still exit. It waits ``linger_ms`` for a receiver, then gives the message up and counts it."""
    sim = SimulatorConfig(**(SIM | dict(linger_ms=200)), scans=1)
    own = zmq.Context()  # its own: a simulator still blocked must not hang the fixture's term()
    det = Detector(sim, context=own)
    det.start()  # nobody connects: the series header cannot be sent
    result = {}
    runner = threading.Thread(target=lambda: result.update(sent=det.run()), daemon=True)
    runner.start()
    _until(lambda: det.current_series == sim.first_series, what="the simulator to start its series")
    det.stop()
    runner.join(timeout=30)
    assert not runner.is_alive(), "a stopped simulator is still blocked in a send"
    assert result["sent"] == det.frames_sent == 0 and det.unsent == 1
    det.close()
    own.term()


def test_a_detector_that_comes_back_with_a_new_series_is_accepted(ctx, tmp_path):
    sim = SimulatorConfig(**SIM, scans=1)
    first_ctx = zmq.Context()  # its own context: term() returns once the listening port is really released
    first = Detector(sim, context=first_ctx)
    endpoint = first.start()
    with running_ingest(_ingest_config(endpoint, tmp_path, max_series=2), ctx) as (ingest, thread):
        first.run()
        first.close()
        first_ctx.term()
        with Detector(SimulatorConfig(**(SIM | dict(endpoint=endpoint)), scans=1, first_series=2, seed=1),
                      context=ctx) as second:
            second.run()
            thread.join(timeout=60)
    assert ingest.snapshot()["series_ended"] == 2
    with Recording(tmp_path / "rec.h5") as rec:
        assert sorted(set(rec.series_ids())) == [1, 2]
        assert len(rec) == first.frames_sent + second.frames_sent


def _armings(ctx, tmp_path, runs, **kw):
    """Send each (series id, header, frames) arming through an ingest; the (scan, detector_series) of each start
    notice on its live feed, and the ingest."""
    from streamer.ingest import Ingest

    det, endpoint = raw_detector(ctx)
    ingest = Ingest(_ingest_config(endpoint, tmp_path, max_series=len(runs), train_endpoint="",
                                   live_endpoint="tcp://127.0.0.1:*", **kw), context=ctx)
    ingest.start()
    live = ctx.socket(zmq.SUB)
    live.setsockopt(zmq.SUBSCRIBE, b"")
    live.connect(ingest.live_endpoint)
    assert ingest._live.poll(30_000) and ingest.live_subscribers() == 1  # subscribed before anything is sent
    thread = threading.Thread(target=ingest.run, daemon=True)
    thread.start()
    notices = []
    try:
        for series, header, frames in runs:
            det.send_multipart(dectris.header_message(series, header, "basic"))
            for frame in range(frames):
                det.send_multipart(_valid(series, frame))
            det.send_multipart(dectris.end_message(series))
        thread.join(timeout=30)
        while live.poll(2000):
            msg = decode_message(live.recv_multipart())
            if isinstance(msg, SeriesStartNotice):
                notices.append((msg.scan, msg.detector_series))
            if len(notices) == len(runs):
                break
    finally:
        thread.join(timeout=30)
        live.close(linger=0)
        ingest.close()
    det.close(linger=0)
    return notices, ingest


def test_a_restarted_detector_that_reuses_a_series_id_is_recorded_as_its_own_acquisition(ctx, tmp_path):
    """A real EIGER numbers series from 1 again after a restart: the second arming must neither replace the
    first one's header nor merge its frames with the first one's; downstream it is a new series, whose notice
    and whose steering decisions carry the detector's own id."""
    from ptychosteer.summary import summarise

    runs = [(1, {"x_pixels_in_detector": 8, "nimages": 2, "description": "before the restart"}, 2),
            (1, {"x_pixels_in_detector": 8, "nimages": 3, "description": "after the restart"}, 3),
            (2, {"x_pixels_in_detector": 8, "nimages": 1, "description": "the next one"}, 1)]
    notices, ingest = _armings(ctx, tmp_path, runs)
    assert ingest.snapshot()["rearmed"] == 2 and ingest.snapshot()["series_ended"] == 3
    assert notices == [(1, None), (2, 1), (3, 2)]
    with Recording(tmp_path / "rec.h5") as rec:
        assert rec.series_ids().tolist() == [1, 1, 2, 2, 2, 3]
        assert [rec.series_config(s)["description"] for s in (1, 2, 3)] == [
            "before the restart", "after the restart", "the next one"]
        assert [rec.detector_series(s) for s in (1, 2, 3)] == [1, 1, 2]
    summary = summarise(tmp_path / "rec.h5")
    assert summary["series"] == {1: 2, 2: 3, 3: 1} and summary["detector_series"] == {2: 1, 3: 2}


def test_recorded_series_ids_increase_in_arming_order_when_a_restart_numbers_below_them(ctx, tmp_path):
    """Series 5 and 6, then a restarted detector's series 1, which this recording never used: it is recorded
    after them (7), since steering ends the older open scans when a newer one starts, and would otherwise leave
    scan 6 open for ever had its end been dropped."""
    runs = [(5, {"x_pixels_in_detector": 8, "nimages": 1, "description": "five"}, 1),
            (6, {"x_pixels_in_detector": 8, "nimages": 2, "description": "six"}, 2),
            (1, {"x_pixels_in_detector": 8, "nimages": 1, "description": "after the restart"}, 1)]
    notices, ingest = _armings(ctx, tmp_path, runs)
    assert notices == [(5, None), (6, None), (7, 1)]
    assert ingest.snapshot()["rearmed"] == 1
    with Recording(tmp_path / "rec.h5") as rec:
        assert rec.series_ids().tolist() == [5, 6, 6, 7]
        assert rec.series_config(7)["description"] == "after the restart" and rec.detector_series(7) == 1


def _replay_into_ingest(ctx, tmp_path, source, scans):
    sim = SimulatorConfig(**SIM, scans=1)
    with Detector(sim, source, context=ctx) as det:
        out = tmp_path / "replayed.h5"
        with running_ingest(_ingest_config(det.endpoint, tmp_path, max_series=scans, output_path=str(out)), ctx) as (
                ingest, thread):
            det.run()
            thread.join(timeout=60)
    return Recording(out)


def test_replay_of_our_own_recording_reproduces_it(ctx, tmp_path):
    sim = SimulatorConfig(**SIM, scans=2)
    with Detector(sim, context=ctx) as det:
        with running_ingest(_ingest_config(det.endpoint, tmp_path, max_series=2), ctx) as (_, thread):
            det.run()
            thread.join(timeout=60)
    with Recording(tmp_path / "rec.h5") as original, _replay_into_ingest(
            ctx, tmp_path, FileSource(tmp_path / "rec.h5"), 2) as replayed:
        a, b = list(original.frames()), list(replayed.frames())
        assert len(a) == len(b) > 0
        assert frame_digest(f.image for f in a) == frame_digest(f.image for f in b)
        assert [f.position_m for f in a] == [f.position_m for f in b]
        np.testing.assert_array_equal(a[3].phase, b[3].phase)


def test_replay_of_an_eiger_master_file_with_external_links(ctx, tmp_path):
    rng = np.random.default_rng(0)
    stacks = [rng.integers(0, 1000, size=(n, 16, 16), dtype=np.uint32) for n in (5, 3)]
    with h5py.File(tmp_path / "scan_master.h5", "w") as master:
        for i, stack in enumerate(stacks, start=1):
            name = f"scan_data_{i:06d}.h5"
            with h5py.File(tmp_path / name, "w") as data_file:
                data_file.create_dataset("entry/data/data", data=stack)
            master[f"entry/data/data_{i:06d}"] = h5py.ExternalLink(name, "entry/data/data")
    source = FileSource(tmp_path / "scan_master.h5")
    assert source.layout == "eiger" and source.frames_total == 8
    with _replay_into_ingest(ctx, tmp_path, source, 1) as replayed:
        frames = list(replayed.frames())
        assert frame_digest(f.image for f in frames) == frame_digest(np.concatenate(stacks))
        assert all(f.amplitude is None and f.position_m is None for f in frames)


_KILLED_INGEST = """
import sys
from streamer.config import IngestConfig
from streamer.ingest import Ingest
ingest = Ingest(IngestConfig(detector_endpoint=sys.argv[1], output_path=sys.argv[2], train_endpoint="",
                             live_endpoint="", flush_interval_s=0.05, block_frames=10_000, stats_interval_s=0.05))
ingest.start()
ingest.run(lambda s: print(s["persisted"], flush=True))
"""


def test_a_killed_ingest_leaves_a_readable_file_with_the_flushed_frames(ctx, tmp_path):
    det, endpoint = raw_detector(ctx)
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_INGEST, endpoint, str(path)], stdout=subprocess.PIPE,
                            text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        det.send_multipart(dectris.header_message(1, {}, "none"))
        for i in range(50):
            det.send_multipart(_valid(1, i))
        for line in proc.stdout:  # progress lines: persisted counts
            if int(line) >= 50:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        det.close(linger=0)
    with Recording(path) as rec:
        assert len(rec) == 50
        assert [int(f.image[0, 0]) for f in rec.frames()] == list(range(50))


def test_live_pub_carries_series_start_frames_and_end(ctx, tmp_path):
    sim = SimulatorConfig(**SIM, scans=1)
    with Detector(sim, context=ctx) as det:
        config = _ingest_config(det.endpoint, tmp_path, max_series=1, live_endpoint="tcp://127.0.0.1:*",
                                output_path="")
        ingest = __import__("streamer.ingest", fromlist=["Ingest"]).Ingest(config, context=ctx)
        ingest.start()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(ingest.live_endpoint)
        # the PUB drops until the subscription arrives: probe with series_start notices until one is seen
        from streamer.frames import encode_series_start
        while True:
            ingest._live.send_multipart(encode_series_start(0, {}))
            if sub.poll(50):
                sub.recv_multipart()
                break
        thread = threading.Thread(target=ingest.run, daemon=True)
        thread.start()
        det.run()
        thread.join(timeout=60)
        ingest.close()
        kinds = []
        while sub.poll(1000):
            msg = decode_message(sub.recv_multipart(copy=False))
            kinds.append(type(msg).__name__)
            if isinstance(msg, SeriesEndNotice):
                break
        sub.close(linger=0)
    assert kinds[0] == "SeriesStartNotice" and kinds[-1] == "SeriesEndNotice"
    assert kinds.count("Frame") == det.frames_sent


_EXITING_INGEST = """
import os, sys
from streamer.config import IngestConfig
from streamer.ingest import Ingest
ingest = Ingest(IngestConfig(detector_endpoint=sys.argv[1], output_path="", train_endpoint="tcp://127.0.0.1:*",
                             live_endpoint="", max_series=1, train_hwm=100_000, stats_interval_s=3600))
ingest.start()
print(ingest.train_endpoint, flush=True)
while ingest.trainer_peers() < 1:
    ingest._monitor.poll(100)
print("ready", flush=True)
ingest.run()
print("run over", ingest.snapshot()["forwarded"], flush=True)
ingest.close()
os._exit(0)  # no interpreter clean-up: only what close() flushed reaches the trainer
"""


def test_frames_queued_for_a_slow_trainer_are_delivered_after_the_ingest_exits(ctx):
    det, endpoint = raw_detector(ctx)
    proc = subprocess.Popen([sys.executable, "-c", _EXITING_INGEST, endpoint], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    trainer = ctx.socket(zmq.PULL)
    try:
        trainer.setsockopt(zmq.RCVHWM, 1)  # a slow trainer: the frames wait in the ingest's queue
        trainer.connect(proc.stdout.readline().strip())
        assert proc.stdout.readline().strip() == "ready"
        det.send_multipart(dectris.header_message(1, {}, "none"))
        shape = (128, 128)
        for i in range(300):
            det.send_multipart(dectris.image_message(1, i, np.full(shape, i, np.uint16).tobytes(), shape, "uint16", "<"))
        det.send_multipart(dectris.end_message(1))
        over = proc.stdout.readline().split()  # the run is over; most frames are still queued in the ingest
        assert over[:2] == ["run", "over"] and int(over[2]) == 300
        frames = []
        while trainer.poll(5000):
            msg = decode_message(trainer.recv_multipart(copy=False))
            if isinstance(msg, SeriesEndNotice):
                break
            if isinstance(msg, Frame):  # (the series_start each connected rank is sent comes first)
                frames.append(int(msg.image[0, 0]))
        assert frames == list(range(300))  # lost at exit when close() does not flush (linger=0, or no ctx.term)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        trainer.close(linger=0)
        det.close(linger=0)


def test_oversized_messages_and_a_spent_quarantine_budget_keep_only_heads(ctx, tmp_path):
    """A 5 MB junk part beyond a 1 MB message limit is refused unparsed; past the byte budget, quarantined
    messages keep 1 KiB of each part and their sizes; counting goes on, and the next good frame is recorded."""
    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=1, train_endpoint="", max_message_bytes=1 << 20,
                            quarantine_budget_bytes=10_000)
    with running_ingest(config, ctx) as (ingest, thread):
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8}, "basic"))
        det.send_multipart([b'{"htype":"dimage-1.0"}', b"x" * 5_000_000])
        for _ in range(3):  # 8 KB each: the second one crosses the 10 KB budget
            det.send_multipart([b"junk" * 2000])
        det.send_multipart(_valid(1, 0))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
    det.close(linger=0)
    stats = ingest.snapshot()
    assert stats["malformed_by_kind"] == {"oversized": 1, "malformed_json": 3} and stats["persisted"] == 1
    assert stats["quarantine_truncated"] == 2
    with h5py.File(tmp_path / "rec.h5", "r") as f:
        groups = sorted(f["entry/quarantine"].values(), key=lambda g: g.name)
        big = groups[0]
        assert big.attrs["kind"] == "oversized" and big.attrs["truncated"]
        assert list(big.attrs["sizes"]) == [22, 5_000_000] and big["part_001"].shape == (1024,)
        assert [bool(g.attrs["truncated"]) for g in groups[1:]] == [False, True, True]
        assert groups[1]["part_000"].shape == (8000,) and groups[3]["part_000"].shape == (1024,)


def test_frames_another_receiver_took_are_counted_missing_and_a_lost_series_end_does_not_stall(ctx, tmp_path):
    """A rogue PULL on the detector's endpoint takes frames (and maybe a dseries_end) round-robin: the gaps in the
    frame ids are counted per series and recorded; a series whose end never came is closed by the next header."""
    det, endpoint = raw_detector(ctx)
    with running_ingest(_ingest_config(endpoint, tmp_path, max_series=2, train_endpoint=""), ctx) as (ingest, thread):
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8, "nimages": 6}, "basic"))
        for frame in (0, 1, 3, 5):  # 2 and 4 went to the rogue receiver
            det.send_multipart(_valid(1, frame))
        # the dseries_end of series 1 went to the rogue receiver too
        det.send_multipart(dectris.header_message(2, {"x_pixels_in_detector": 8, "nimages": 5}, "basic"))
        for frame in (0, 1, 2):  # 3 and 4 lost after the last one received (or the scan stopped early)
            det.send_multipart(_valid(2, frame))
        det.send_multipart(dectris.end_message(2))
        thread.join(timeout=30)
        assert not thread.is_alive(), "the ingest waited for a series end that never came"
    det.close(linger=0)
    stats = ingest.snapshot()
    assert stats["series_ended"] == 2 and stats["missing_frames"] == 2 and stats["persisted"] == 7
    assert stats["short_of_nimages"] == 2  # series 2's tail: counted apart, the stream cannot say why
    with h5py.File(tmp_path / "rec.h5", "r") as f:
        assert f["entry/series/1"].attrs["missing_frames"] == 2 and f["entry/series/1"].attrs["frames"] == 4
        assert f["entry/series/1"].attrs["short_of_nimages"] == 0
        assert f["entry/series/2"].attrs["missing_frames"] == 0 and f["entry/series/2"].attrs["short_of_nimages"] == 2


def test_a_recording_whose_every_frame_was_quarantined_can_be_inspected(ctx, tmp_path):
    from click.testing import CliRunner

    from ptychosteer.cli import main

    det, endpoint = raw_detector(ctx)
    with running_ingest(_ingest_config(endpoint, tmp_path, max_series=1, train_endpoint=""), ctx) as (_, thread):
        det.send_multipart(dectris.header_message(3, {"x_pixels_in_detector": 8, "nimages": 2}, "basic"))
        det.send_multipart([b"{oops"])
        det.send_multipart(_with_type(_valid(3, 0), "int7"))
        det.send_multipart(dectris.end_message(3))
        thread.join(timeout=30)
    det.close(linger=0)
    result = CliRunner().invoke(main, ["inspect", "--json", str(tmp_path / "rec.h5")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["frames"] == 0 and summary["series"] == {"3": 0}
    assert summary["quarantined"] == {"malformed_json": 1, "unknown_dtype": 1}


def _with_type(parts, dtype):
    return [parts[0], json.dumps(json.loads(parts[1]) | {"type": dtype}).encode(), *parts[2:]]


def test_a_series_end_nobody_can_take_does_not_wait(ctx, tmp_path, monkeypatch):
    """The trainer endpoint bound and no trainer connected (the `ingest` command's default): a series-end notice
    is dropped at once instead of waiting up to 2 s for room (20 series used to take 19 s more)."""
    from streamer.ingest import Ingest

    waited = []
    real = Ingest._send_control
    monkeypatch.setattr(Ingest, "_send_control", staticmethod(lambda *a, **kw: waited.append(1) or real(*a, **kw)))
    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=5, train_endpoint="tcp://127.0.0.1:*")
    with running_ingest(config, ctx) as (ingest, thread):
        for series in range(1, 6):
            det.send_multipart(dectris.header_message(series, {"x_pixels_in_detector": 8}, "basic"))
            det.send_multipart(_valid(series, 0))
            det.send_multipart(dectris.end_message(series))
        thread.join(timeout=60)
    det.close(linger=0)
    stats = ingest.snapshot()
    assert stats["series_ended"] == 5 and stats["notices_dropped"] == 5 and not waited


def test_image_appendices_are_recorded_verbatim_and_inspect_shows_them(ctx, tmp_path):
    from click.testing import CliRunner

    from ptychosteer.cli import main

    det, endpoint = raw_detector(ctx)
    appendices = [b'{"user": "json", "I0": 1.25e6}', b"\x00\xffbinary\x80", None]
    with running_ingest(_ingest_config(endpoint, tmp_path, max_series=1, train_endpoint=""), ctx) as (_, thread):
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8}, "basic"))
        for frame, appendix in enumerate(appendices):
            det.send_multipart(_valid(1, frame) + ([appendix] if appendix is not None else []))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
    det.close(linger=0)
    with Recording(tmp_path / "rec.h5") as rec:
        assert rec.appendices() == [appendices[0], appendices[1], b""]
    summary = json.loads(CliRunner().invoke(main, ["inspect", "--json", str(tmp_path / "rec.h5")]).output)
    assert summary["with_appendix"] == 2 and summary["frames"] == 3


def test_a_running_ingest_survives_every_hostile_message_between_valid_frames(ctx, tmp_path):
    """Each message that once killed the ingest (and an oversized one), sent between valid frames to a running
    ingest: every valid frame is recorded (count and SHA-256 of the pixels), every bad one quarantined with its
    reason, and the ingest is still there to end the series."""
    from tests.streamer.test_parser_fuzz import HOSTILE

    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=1, train_endpoint="tcp://127.0.0.1:*",
                            live_endpoint="tcp://127.0.0.1:*", max_message_bytes=1 << 20)
    hostile = [parts for parts, _ in HOSTILE.values()] + [[b'{"htype":"dimage-1.0"}', b"x" * (2 << 20)]]
    images = []
    with running_ingest(config, ctx) as (ingest, thread):
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8}, "basic"))
        for frame, bad in enumerate(hostile):
            good = _valid(1, frame)
            images.append(np.full((8, 8), frame, np.uint16))
            det.send_multipart(good)
            det.send_multipart(bad)
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=60)
        alive_at_end = not thread.is_alive() and ingest.snapshot()["series_ended"] == 1
    det.close(linger=0)
    stats = ingest.snapshot()
    assert alive_at_end and stats["persisted"] == len(images)
    assert stats["malformed"] == len(hostile) and "parser_error" not in stats["malformed_by_kind"]
    with Recording(tmp_path / "rec.h5") as rec:
        assert frame_digest(f.image for f in rec.frames()) == frame_digest(images)
        assert sum(rec.quarantine().values()) == len(hostile)


def test_an_unusable_series_configuration_is_quarantined_and_the_frames_kept(ctx, tmp_path):
    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=1, train_endpoint="", live_endpoint="tcp://127.0.0.1:*")
    with running_ingest(config, ctx) as (ingest, thread):
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8, "nimages": "many"}, "basic"))
        for frame in range(3):
            det.send_multipart(_valid(1, frame))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
    det.close(linger=0)
    stats = ingest.snapshot()
    assert stats["malformed_by_kind"] == {"bad_series_config": 1} and stats["persisted"] == 3
    assert stats["series_ended"] == 1


# ------------------------------------------------------------------------------------------------ stream v2
@pytest.mark.parametrize("encoding", ["raw", "lz4", "bslz4"])
def test_stream_v2_from_the_simulator_is_recorded_as_v1_is(ctx, tmp_path, encoding):
    """One ingest, both protocols, one layout: the same simulated scans sent as v1 and as v2 give recordings with
    the same frames (count and SHA-256), positions and labels."""
    digests = {}
    for protocol in ("v1", "v2"):
        sim = SimulatorConfig(**SIM, scans=2, encoding=encoding, seed=5, protocol=protocol, header_detail="all")
        out = tmp_path / protocol
        ingest, _, got = _through_ingest(ctx, sim, out, block_frames=5, protocol=protocol)
        got = [m for m in got if isinstance(m, Frame)]
        stats = ingest.snapshot()
        expected = _expected_images(sim)
        assert stats["malformed"] == 0 and stats["received"] == stats["persisted"] == len(expected)
        with Recording(out / "rec.h5") as rec:
            frames = list(rec.frames())
            assert frame_digest(f.image for f in frames) == frame_digest(expected)
            assert frame_digest(m.image for m in got) == frame_digest(expected)  # the trainers' copy too
            digests[protocol] = (frame_digest(f.amplitude for f in frames), [f.position_px for f in frames])
            assert rec.series_config(1)["ptychosteer"]["family"] == sim.families[0]
            assert rec.series_config(1)["x_pixels_in_detector"] == sim.frame_size
    assert digests["v1"] == digests["v2"]


def test_a_multi_threshold_v2_detector_is_recorded_per_channel(ctx, tmp_path):
    from streamer import stream2

    det, endpoint = raw_detector(ctx)
    rng = np.random.default_rng(0)
    images = [{"threshold_1": rng.poisson(20, (8, 12)).astype(np.uint32),
               "threshold_2": rng.poisson(2, (8, 12)).astype(np.uint32)} for _ in range(3)]
    config = _ingest_config(endpoint, tmp_path, max_series=1, train_endpoint="", protocol="v2")
    with running_ingest(config, ctx) as (ingest, thread):
        det.send(stream2.start_message(1, {"x_pixels_in_detector": 12, "y_pixels_in_detector": 8, "nimages": 3},
                                       channels=("threshold_1", "threshold_2")))
        for i, data in enumerate(images):
            det.send(stream2.image_message(1, i, data, compression="bslz4" if i % 2 else "lz4"))
        det.send_multipart(dectris.header_message(9, {}))  # a v1 message on a v2 ingest: told, counted, kept
        det.send(stream2.end_message(1))
        thread.join(timeout=30)
    det.close(linger=0)
    assert ingest.snapshot()["malformed_by_kind"] == {"wrong_protocol": 1}
    with h5py.File(tmp_path / "rec.h5") as f:
        data = f["entry/data"]
        np.testing.assert_array_equal(data["data"][...], [d["threshold_1"] for d in images])
        np.testing.assert_array_equal(data["channel_threshold_2"][...], [d["threshold_2"] for d in images])
        assert data["data"].attrs["channel"] == "threshold_1"
        assert list(data.attrs["auxiliary_signals"]) == ["channel_threshold_2"]
        assert f["entry/quarantine/00000000"].attrs["kind"] == "wrong_protocol"


def test_bitshuffle_frames_are_written_as_sent_without_decoding_in_the_ingest(ctx, tmp_path, monkeypatch):
    """Direct chunk writes: the HDF5 chunk of each frame is the detector's blob byte for byte, the ingest never
    decodes it (decoding fails here by construction), and plain h5py + hdf5plugin read the frames back."""
    import streamer.compression as compression

    def refuse(*args, **kwargs):
        raise AssertionError("the ingest decoded a frame")

    det, endpoint = raw_detector(ctx)
    rng = np.random.default_rng(1)
    images = [rng.poisson(30, (40, 56)).astype(np.uint32) for _ in range(6)]
    blobs = [encode(img, "bs32-lz4<") for img in images]
    monkeypatch.setattr(dectris, "decode", refuse)
    monkeypatch.setattr(compression, "decode", refuse)
    config = _ingest_config(endpoint, tmp_path, max_series=1, block_frames=4, stats_interval_s=0.05)
    with running_ingest(config, ctx) as (ingest, thread):
        trainer = ctx.socket(zmq.PULL)
        trainer.connect(ingest.train_endpoint)
        # the header goes to the ranks the ingest has seen connect: wait until it has seen this one (without, the
        # header was not sent when the connection's handshake came after it, once in a full run)
        _until(lambda: ingest.stats.trainer_peers >= 1, what="the trainer to connect")
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 56, "y_pixels_in_detector": 40}))
        for i, blob in enumerate(blobs):
            det.send_multipart(dectris.image_message(1, i, blob, (40, 56), "uint32", "bs32-lz4<"))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
        notice = decode_message(trainer.recv_multipart())  # the series header, sent each connected rank first
        assert isinstance(notice, SeriesStartNotice) and notice.config["x_pixels_in_detector"] == 56
        forwarded = [trainer.recv_multipart() for _ in blobs]
        trainer.close(linger=0)
    det.close(linger=0)
    monkeypatch.undo()
    assert ingest.snapshot()["persisted"] == len(images)
    with h5py.File(tmp_path / "rec.h5") as f:
        ds = f["entry/data/data"]
        assert [ds.id.read_direct_chunk((i, 0, 0))[1] for i in range(len(blobs))] == blobs
        np.testing.assert_array_equal(ds[...], images)
        from dectris.compression import decompress  # and the vendor's decoder reads the recorded chunks

        chunk = ds.id.read_direct_chunk((5, 0, 0))[1]
        np.testing.assert_array_equal(np.frombuffer(decompress(chunk, "bslz4", elem_size=4), "<u4").reshape(40, 56),
                                      images[5])
    assert [parts[1] for parts in forwarded] == blobs  # forwarded compressed, decoded by the consumer
    np.testing.assert_array_equal(decode_message(forwarded[3]).image, images[3])


def test_a_chunk_whose_lz4_content_is_corrupt_is_recorded_as_sent_and_readers_skip_only_it(ctx, tmp_path, caplog):
    """Framing intact, LZ4 content garbage: the ingest (which does not decode) records it as received; the reader
    skips that one frame with a warning and a count, and every other frame reads back."""
    det, endpoint = raw_detector(ctx)
    images = [np.full((16, 16), i, np.uint16) + np.arange(16, dtype=np.uint16) for i in range(5)]
    blobs = [bytearray(encode(img, "bs16-lz4<")) for img in images]
    size = int.from_bytes(blobs[2][12:16], "big")
    blobs[2][16:16 + size] = b"\xff" * size  # an LZ4 block that runs past its input
    with running_ingest(_ingest_config(endpoint, tmp_path, max_series=1, train_endpoint=""), ctx) as (ingest, thread):
        det.send_multipart(dectris.header_message(1, {}))
        for i, blob in enumerate(blobs):
            det.send_multipart(dectris.image_message(1, i, bytes(blob), (16, 16), "uint16", "bs16-lz4<"))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
    det.close(linger=0)
    assert ingest.snapshot()["persisted"] == 5
    with Recording(tmp_path / "rec.h5") as rec:
        got = list(rec.frames())
        assert [f.frame_id for f in got] == [0, 1, 3, 4] and rec.unreadable == 1
        np.testing.assert_array_equal(got[2].image, images[3])
        assert [f.frame_id for f in rec.frames(indices=np.array([1, 2, 4]))] == [1, 4]
    assert "does not decode" in caplog.text


def test_the_recording_is_nexus_that_a_nexus_checker_accepts(ctx, tmp_path):
    """The tools of the field (silx, h5web, NeXpy) follow the NeXus classes: the tree read back with nexusformat
    has them, with units on every physical quantity, and nexusformat's checker (nxcheck) reports no errors."""
    import subprocess
    import sys

    from nexusformat.nexus import nxload

    sim = SimulatorConfig(**SIM, scans=1, header_detail="all", seed=2)
    with Detector(sim, context=ctx) as det:
        config = _ingest_config(det.endpoint, tmp_path, max_series=1, train_endpoint="")
        with running_ingest(config, ctx) as (_, thread):
            det.run()
            thread.join(timeout=60)
    path = tmp_path / "rec.h5"
    root = nxload(str(path))
    try:
        entry = root["entry"]
        assert root.attrs["default"] == "entry" and entry.nxclass == "NXentry"
        assert str(entry["start_time"].nxvalue) <= str(entry["end_time"].nxvalue)
        data = entry["data"]
        assert data.nxclass == "NXdata" and data.nxsignal.nxname == "data"
        assert [a.nxname for a in data.nxaxes][1:] == ["y_pixel", "x_pixel"]  # the frame axis has none ("Axis0")
        assert data["position_m"].attrs["units"] == "m" and data["recv_time_ns"].attrs["units"] == "ns"
        detector = entry["instrument/detector"]
        assert detector.nxclass == "NXdetector"
        for name, units in (("x_pixel_size", "m"), ("y_pixel_size", "m"), ("distance", "m"), ("count_time", "s")):
            assert detector[name].attrs["units"] == units, name
        assert detector["pixel_mask"].shape == detector["flatfield"].shape == (sim.frame_size, sim.frame_size)
        assert entry["instrument/beam/incident_energy"].attrs["units"] == "eV"
        sample = entry["sample"]
        assert sample.nxclass == "NXsample" and sample["x_position"].nxclass == "NXpositioner"
        with Recording(path) as rec:
            positions = np.array([f.position_m for f in rec.frames()])
        np.testing.assert_array_equal(sample["y_position/value"].nxvalue, positions[:, 0])
        assert sample["y_position/value"].attrs["units"] == "m"
    finally:
        root.nxfile.close()
    check = subprocess.run([sys.executable, "-c", "from nexusformat.scripts.nxcheck import main; main()", "-e",
                            str(path)], capture_output=True, text=True, timeout=120)
    report = check.stdout + check.stderr
    assert "Total number of errors: 0" in report, report[-2000:]


def test_a_v2_stream_built_from_the_specification_is_recorded_bit_exactly(ctx, tmp_path):
    """Messages written by hand from DECTRIS's stream v2 specification (CBOR tags 55799, 40, 69/70 and 56500),
    compressed by the reference HDF5 filters (hdf5plugin), not by our simulator: every frame of both channels
    recorded (count and SHA-256), the start's tables kept, the frames' blobs stored as sent."""
    import cbor2

    rng = np.random.default_rng(7)
    shape = (24, 40)
    t1 = [rng.poisson(30, shape).astype("<u4") for _ in range(5)]
    t2 = [rng.poisson(2, shape).astype("<u4") for _ in range(5)]
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        bs = f.create_dataset("bs", data=np.stack(t1), chunks=(1, *shape), **hdf5plugin.Bitshuffle(cname="lz4"))
        lz = f.create_dataset("lz", data=np.stack(t2), chunks=(1, *shape), **hdf5plugin.LZ4())
        bs_blobs = [bs.id.read_direct_chunk((i, 0, 0))[1] for i in range(5)]
        lz_blobs = [lz.id.read_direct_chunk((i, 0, 0))[1] for i in range(5)]

    def md(payload):
        return cbor2.CBORTag(40, [list(shape), cbor2.CBORTag(70, payload)])

    mask = np.zeros(shape, "<u4")
    mask[:, 7] = 1
    start = {"type": "start", "series_id": 4, "series_unique_id": "u4", "channels": ["t1", "t2"],
             "image_size_x": shape[1], "image_size_y": shape[0], "number_of_images": 5, "count_time": 0.01,
             "beam_center_x": 20.0, "beam_center_y": 12.0, "pixel_size_x": 75e-6, "pixel_size_y": 75e-6,
             "pixel_mask": {"t1": md(mask.tobytes()), "t2": md(mask.tobytes())}}
    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=1, train_endpoint="", protocol="v2")
    with running_ingest(config, ctx) as (ingest, thread):
        det.send(cbor2.dumps(cbor2.CBORTag(55799, start)))
        for i in range(5):
            det.send(cbor2.dumps(cbor2.CBORTag(55799, {
                "type": "image", "series_id": 4, "series_unique_id": "u4", "image_id": i,
                "real_time": [1000, 100000], "start_time": [i * 1000, 100000], "stop_time": [i * 1000 + 1000, 100000],
                "data": {"t1": md(cbor2.CBORTag(56500, ["bslz4", 4, bs_blobs[i]])),
                         "t2": md(cbor2.CBORTag(56500, ["lz4", 0, lz_blobs[i]]))}})))
        det.send(cbor2.dumps(cbor2.CBORTag(55799, {"type": "end", "series_id": 4, "series_unique_id": "u4"})))
        thread.join(timeout=30)
    det.close(linger=0)
    assert ingest.snapshot()["malformed"] == 0 and ingest.snapshot()["persisted"] == 5
    with Recording(tmp_path / "rec.h5") as rec:
        assert frame_digest(f.image for f in rec.frames()) == frame_digest(t1)
        assert rec.series_tables(4)["pixelmask"][:, 7].all()
        assert rec.series_config(4)["x_pixels_in_detector"] == shape[1]
    with h5py.File(tmp_path / "rec.h5") as f:
        assert frame_digest(f["entry/data/channel_t2"][...]) == frame_digest(t2)
        assert [f["entry/data/data"].id.read_direct_chunk((i, 0, 0))[1] for i in range(5)] == bs_blobs
        assert f["entry/data/start_time_ns"][2] == 20_000_000  # [2000, 100000] s = 20 ms


def _until(condition, timeout_s=30.0, what="a condition"):
    """Wait for a state another thread changes, with a deadline (each look 10 ms apart)."""
    deadline, tick = time.monotonic() + timeout_s, threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        tick.wait(0.01)


def test_a_rank_that_missed_the_header_on_the_frames_socket_gets_it_from_the_notices(ctx, tmp_path):
    """The frames' PUSH deals a header's copies round-robin, so a rank at its high-water mark can miss it. Here a
    rank gets the frames but never the header's copy (the test relays only frames to it): it must still cut them
    with the header's pixel mask, from the ingest's notice endpoint, whatever the order the two sockets deliver."""
    from trainer.prepare import Preparation
    from trainer.stream import FrameReceiver

    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=1, notice_endpoint="tcp://127.0.0.1:*",
                            stats_interval_s=0.05)
    relay_out = ctx.socket(zmq.PUSH)
    relay_out.bind("tcp://127.0.0.1:*")
    with running_ingest(config, ctx) as (ingest, thread):
        relay_in = ctx.socket(zmq.PULL)
        relay_in.connect(ingest.train_endpoint)
        receiver = FrameReceiver(relay_out.getsockopt_string(zmq.LAST_ENDPOINT), context=ctx,
                                 prepare=Preparation(size=8), notice_endpoint=ingest.notice_endpoint).start()
        _until(lambda: ingest.stats.trainer_peers >= 1, what="the relay to connect")
        mask = np.zeros((8, 8), np.uint32)
        mask[3, 4] = 1
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8, "y_pixels_in_detector": 8,
                                                      "nimages": 3}, "all", tables={"pixelmask": mask}))
        label = np.ones((8, 8), np.float32)
        for i in range(3):
            image = np.full((8, 8), 5 + i, np.uint16)
            det.send_multipart(dectris.image_message(1, i, image.tobytes(), (8, 8), "uint16", "<",
                                                     position_px=(0.0, 0.0), amplitude=label, phase=0 * label))
        det.send_multipart(dectris.end_message(1))
        relayed = 0
        while relay_in.poll(30_000):
            parts = relay_in.recv_multipart()
            msg = decode_message(parts)
            if isinstance(msg, Frame):
                relay_out.send_multipart(parts)
                relayed += 1
            elif isinstance(msg, SeriesEndNotice):
                break
        assert relayed == 3
        _until(lambda: receiver.count(1) == 3, what="the frames to be prepared")
        frames = receiver.take(1, 3)
        receiver.close()
        relay_in.close(linger=0)
    relay_out.close(linger=0)
    det.close(linger=0)
    assert receiver.without_header == 0
    assert [f.frame for f in frames] == [0, 1, 2]
    assert all(not f.valid[3, 4] and f.image[3, 4] == 0 and f.image[0, 0] == 5 + f.frame for f in frames)
    assert ingest.snapshot()["notice_subscribers"] >= 1


def test_a_late_subscriber_to_the_notices_gets_the_open_series_header_and_every_subscriber_its_end(ctx, tmp_path):
    det, endpoint = raw_detector(ctx)
    config = _ingest_config(endpoint, tmp_path, max_series=1, notice_endpoint="tcp://127.0.0.1:*",
                            stats_interval_s=0.05)
    with running_ingest(config, ctx) as (ingest, thread):
        early = ctx.socket(zmq.SUB)
        subscribe(early)
        early.connect(ingest.notice_endpoint)
        _until(lambda: ingest.stats.notice_subscribers >= 1, what="the first subscriber")
        det.send_multipart(dectris.header_message(1, {"x_pixels_in_detector": 8, "y_pixels_in_detector": 8,
                                                      "nimages": 2}, "basic"))
        assert early.poll(30_000)
        assert isinstance(decode_message(unwrap(early.recv_multipart())), SeriesStartNotice)
        late = ctx.socket(zmq.SUB)  # after the header went out
        subscribe(late)
        late.connect(ingest.notice_endpoint)
        assert late.poll(30_000), "the open series' header was not sent again for a newcomer"
        start = decode_message(unwrap(late.recv_multipart()))
        assert isinstance(start, SeriesStartNotice) and start.scan == 1
        det.send_multipart(_valid(1, 0))
        det.send_multipart(dectris.end_message(1))
        thread.join(timeout=30)
        for sub in (early, late):
            kinds = []
            while sub.poll(5000):
                msg = decode_message(unwrap(sub.recv_multipart()))
                kinds.append(type(msg).__name__)
                if isinstance(msg, SeriesEndNotice):
                    break
            assert kinds == ["SeriesEndNotice"], kinds  # the header again went to the newcomer alone
            sub.close(linger=0)
    det.close(linger=0)


def test_an_ingest_restarted_after_a_detector_restart_continues_the_earlier_recordings_numbering(ctx, tmp_path):
    """A restarted detector numbers its series from 1 again, and so would a restarted ingest's recording: a
    trainer or steering that outlived both would see series 1 twice, for two acquisitions. ``ingest --after``
    the earlier recording numbers the new run above it; the detector's ids go along as ``detector_series``."""
    from ptychosteer.cli import _series_after
    from streamer.hdf5 import highest_series

    first = tmp_path / "first"
    first.mkdir()
    _armings(ctx, first, [(1, {"x_pixels_in_detector": 8, "nimages": 2, "description": "one"}, 2),
                          (2, {"x_pixels_in_detector": 8, "nimages": 1, "description": "two"}, 1)])
    assert _series_after((str(first / "rec.h5"),), str(tmp_path / "rec.h5")) == 3
    with pytest.raises(ValueError, match="is the --output file itself"):
        _series_after((str(first / "rec.h5"),), str(first / "rec.h5"))
    notices, ingest = _armings(ctx, tmp_path, [
        (1, {"x_pixels_in_detector": 8, "nimages": 1, "description": "one, after the restart"}, 1),
        (2, {"x_pixels_in_detector": 8, "nimages": 2, "description": "two, after the restart"}, 2)], first_series=3)
    assert notices == [(3, 1), (4, 2)]
    assert highest_series(tmp_path / "rec.h5") == 4
    assert ingest.snapshot()["rearmed"] == 2 and ingest.snapshot()["first_series"] == 3
    with Recording(tmp_path / "rec.h5") as rec:
        assert rec.series_ids().tolist() == [3, 4, 4]
        assert [rec.detector_series(s) for s in (3, 4)] == [1, 2]
        assert rec.series_config(3)["description"] == "one, after the restart"
