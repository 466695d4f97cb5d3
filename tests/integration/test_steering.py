import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from steering.policy import PolicyConfig
from steering.protocol import Decision
from steering.service import Steering, SteeringConfig
from streamer.config import IngestConfig, SimulatorConfig
from streamer.dectris import ImageFrame
from streamer.frames import decode_message, encode_frame, encode_series_end, encode_series_start
from streamer.ingest import Ingest
from streamer.simulator import Detector, follow
from trainer.data import INPUT_ENCODING
from trainer.models import PtychoNN

pytestmark = pytest.mark.integration


def _checkpoint(path, seed=0, frame=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = PtychoNN(nconv=4, depth=2, frame_size=frame)
    torch.save({"model": model.state_dict(),
                "model_config": {"nconv": 4, "depth": 2, "frame_size": frame, "input": INPUT_ENCODING}}, path)
    return str(path)


def _steering(tmp_path, **kw):
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    base = dict(live_endpoint="tcp://127.0.0.1:1", models_endpoint="", feed_endpoint="tcp://127.0.0.1:*",
                out_dir=str(tmp_path / "steer"), models_dir=str(tmp_path / "ckpt"))
    return Steering(SteeringConfig(**(base | kw)))


def test_bad_announcements_and_checkpoints_keep_the_current_model(tmp_path):
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "v1.pt"))
    first = steering.model
    (tmp_path / "ckpt" / "v3").mkdir()
    (tmp_path / "ckpt" / "v3" / "model.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "ckpt" / "v5").mkdir()
    torch.save({"model_config": {"nconv": 4}}, tmp_path / "ckpt" / "v5" / "model.pt")  # loadable, but wrong
    for raw in (b"{not json", json.dumps({"kind": "model"}).encode(), json.dumps([1, 2]).encode(),
                json.dumps({"kind": "model", "version": 2, "path": str(tmp_path / "ckpt" / "missing.pt")}).encode(),
                json.dumps({"kind": "model", "version": 3, "path": str(tmp_path / "ckpt/v3/model.pt")}).encode(),
                json.dumps({"kind": "model", "version": 5, "path": str(tmp_path / "ckpt/v5/model.pt")}).encode()):
        steering._on_announcement(raw)
    for t in steering.loaders:
        t.join(timeout=30)
    steering._swap()
    assert steering.model is first and steering.model_version == 0
    assert steering.counters["bad_announcements"] == 3 and steering.counters["models_refused"] == 1  # missing
    assert steering.counters["model_errors"] == 2
    good = json.dumps({"kind": "model", "version": 6,
                       "path": _checkpoint(tmp_path / "ckpt" / "v6" / "model.pt", seed=1)}).encode()
    steering._on_announcement(good)
    steering._on_announcement(json.dumps({"kind": "model", "version": 6, "path": "x"}).encode())  # not newer
    for t in steering.loaders:
        t.join(timeout=30)
    steering._swap()
    assert steering.model is not first and steering.model_version == 6 and len(steering.loaders) == 3


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a crafted pickle does: call a function at load time
        return (open, (self.marker, "w"))


def test_steering_never_unpickles_and_loads_models_only_from_the_trainers_checkpoints(tmp_path):
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "ckpt" / "v1" / "model.pt"))
    first = steering.model
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "ckpt" / "v7" / "model.pt"
    crafted.parent.mkdir()
    torch.save({"model": _RunsCode(str(marker)),
                "model_config": {"nconv": 4, "depth": 2, "frame_size": 32, "input": INPUT_ENCODING}},
               crafted)
    outside = _checkpoint(tmp_path / "elsewhere" / "model.pt")  # a valid model, but not the trainer's
    (tmp_path / "ckpt" / "v9").mkdir()
    (tmp_path / "ckpt" / "v9" / "model.pt").symlink_to(outside)  # a symlink out of the folder
    for version, path in ((7, str(crafted)), (8, outside), (9, str(tmp_path / "ckpt" / "v9" / "model.pt")),
                          (10, str(tmp_path / "ckpt" / ".." / "elsewhere" / "model.pt")),
                          (11, str(tmp_path / "ckpt" / "v1"))):  # a folder, not a model.pt
        steering._on_announcement(json.dumps({"kind": "model", "version": version, "path": path}).encode())
    for t in steering.loaders:
        t.join(timeout=30)
    steering._swap()
    assert not marker.exists(), "loading a checkpoint ran code"
    assert steering.model is first and steering.model_version == 0
    assert steering.counters["model_errors"] == 1 and steering.counters["models_refused"] == 4


def test_frames_for_unknown_scans_and_malformed_messages_are_counted(tmp_path):
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"))
    img = ImageFrame(series=5, frame=0, image=np.ones((32, 32), np.uint16), encoding="<", position_px=(0, 0))
    steering._on_live(encode_frame(img))
    steering._on_live([b"{garbage"])
    steering._on_live(encode_series_start(6, {"nimages": 3}))  # no geometry
    assert steering.counters["unknown_scan"] == 1 and steering.counters["malformed"] == 1
    assert steering.counters["unknown_geometry"] == 1 and not steering._backlog
    geometry = {"y_pixels_in_detector": 32, "ptychosteer": {"object_shape": [64, 64]}}
    for bad in ({**geometry, "nimages": "many"},  # each of these once killed steering
                {**geometry, "ptychosteer": {"object_shape": [1 << 20, 1 << 20]}},
                {**geometry, "ptychosteer": [1, 2]}, {**geometry, "ptychosteer": {"object_shape": [64, -1]}},
                {**geometry, "y_pixels_in_detector": 1e9}):
        steering._on_live(encode_series_start(7, bad))
    steering._on_live([json.dumps({"schema": 1, "kind": "series_start", "scan": 8, "config": [1, 2]}).encode()])
    assert steering.counters["bad_series_config"] == 5 and 7 not in steering.scans and 8 not in steering.scans
    assert steering.counters["malformed"] == 2  # the notice with a list for its configuration
    steering._on_live(encode_series_start(9, geometry))
    assert steering.scans[9].mosaic.shape == (64, 64)  # and the next good scan is steered


@pytest.mark.parametrize("max_lag_ms", [600_000, 100], ids=["every-frame", "overloaded"])
def test_closed_loop_simulator_ingest_steering(tmp_path, max_lag_ms):
    """The detector sends as fast as the ingest takes frames: with a generous budget steering reconstructs them
    all; with the default 100 ms it cannot, reconstructs a fraction, and still refines and stops the scan."""
    ctx = zmq.Context()
    sim = SimulatorConfig(endpoint="tcp://127.0.0.1:*", frame_size=32, object_size_px=96, overlap=0.5, scans=1,
                          follow_wait_s=30, linger_ms=5000)
    detector = Detector(sim, context=ctx)
    detector.start()
    ingest = Ingest(IngestConfig(detector_endpoint=detector.endpoint, output_path=str(tmp_path / "rec.h5"),
                                 train_endpoint="", live_endpoint="tcp://127.0.0.1:*", max_series=1), context=ctx)
    ingest.start()
    policy = PolicyConfig(evaluate_every_frames=16, rescan_plan=((8, 0.75),), cell_px=32,
                          converged_disagreement=0.0, saturated_fraction=1.0, starved_counts=0.0)
    steering = Steering(SteeringConfig(live_endpoint=ingest.live_endpoint, models_endpoint="",
                                       feed_endpoint="tcp://127.0.0.1:*", model_path=_checkpoint(tmp_path / "m.pt"),
                                       out_dir=str(tmp_path / "steer"), max_scans=1, picture_interval_s=3600,
                                       max_lag_ms=max_lag_ms, policy=policy, recording=str(tmp_path / "rec.h5")),
                        context=ctx)
    steering.start()
    steer_thread = threading.Thread(target=steering.run, daemon=True)
    steer_thread.start()
    while not steering.counters["unknown_geometry"]:  # the live SUB is joined once a probe notice gets through
        ingest._live.send_multipart(encode_series_start(0, {}))
        steer_thread.join(0.02)
    done = threading.Event()
    follower = threading.Thread(target=follow, args=(detector, steering.feed.endpoint, done, ctx), daemon=True)
    follower.start()
    ingest_thread = threading.Thread(target=ingest.run, daemon=True)
    ingest_thread.start()
    detector.run()
    ingest_thread.join(timeout=60)
    steer_thread.join(timeout=60)
    done.set()
    follower.join(timeout=10)
    ingest.close()
    steering.close()
    detector.close()
    ctx.term()

    coarse = steering.scans[1].nimages
    actions = detector.control.actions
    assert any(a.startswith("rescan_region->") for a in actions), actions
    assert "stop_scan->scan stopped" in actions
    assert detector.frames_sent > coarse  # the refinement was measured
    assert ingest.snapshot()["persisted"] == detector.frames_sent
    kinds = [d.kind for d in steering.decisions]
    assert kinds.index("rescan_region") < kinds.index("stop_scan")
    status = steering.snapshot()
    if max_lag_ms > 1000:
        assert status["reconstructed"] == detector.frames_sent and status["reconstructed_fraction"] == 1.0
    else:  # every frame accounted for: reconstructed, or skipped with its reason
        assert 0 < status["reconstructed"] < detector.frames_sent, str(status)
        assert status["reconstructed"] + status["skipped_behind"] == detector.frames_sent, str(status)
        assert status["skipped_behind"] == sum(status.get(f"skipped_{r}", 0)
                                               for r in ("thinned", "late", "upstream", "backlog"))
        assert status["reconstructed_fraction"] == pytest.approx(status["reconstructed"] / detector.frames_sent)
        # the simulator waits for the end-of-scan decision: steering is idle then and backfills what it skipped
        assert status["backfilled"] > 0, str(status)
        assert steering.scans[1].mosaic.frames == status["reconstructed"] + status["backfilled"]
        # and it stops only after that work: every frame measured is in the mosaic, those the live queues
        # dropped (if any) read from the recording
        assert steering.scans[1].mosaic.frames == detector.frames_sent, str(status)
        assert status.get("recovered", 0) == status.get("skipped_upstream", 0), str(status)
    assert list((tmp_path / "steer").glob("mosaic_scan1.png"))


def test_a_follower_acts_on_each_decision_once_however_often_the_feed_repeats_it(tmp_path):
    """Every new subscriber makes the feed repeat its cached state to all: the exposure must be halved once."""
    import time

    from steering.feed import DecisionPublisher
    from steering.protocol import Decision

    ctx = zmq.Context()
    pub = DecisionPublisher("tcp://127.0.0.1:*", context=ctx)
    detector = Detector(SimulatorConfig(frame_size=32, object_size_px=64), context=ctx)
    detector.current_series = 1
    done = threading.Event()
    follower = threading.Thread(target=follow, args=(detector, pub.endpoint, done, ctx), daemon=True)
    follower.start()
    deadline = time.monotonic() + 30

    def serve_until(greeted):
        while pub.greeted < greeted and time.monotonic() < deadline:
            pub.service()
            follower.join(0.01)
        assert pub.greeted >= greeted

    serve_until(1)  # the follower's subscription
    pub.publish(Decision("adjust_exposure", 1, "saturated", exposure_factor=0.5))
    others = []
    for i in range(5):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"steer.")
        sub.connect(pub.endpoint)
        others.append(sub)
        serve_until(2 + i)  # each join repeats the cached adjust_exposure to every subscriber
    # recorded as series 7 (a re-armed detector reused its id 1): the detector acts on its own id
    pub.publish(Decision("rescan_region", 7, "refine", positions_px=[[0, 0]], detector_series=1))
    pub.publish(Decision("adjust_exposure", 1, "another arming's", exposure_factor=0.25, detector_series=9))
    pub.publish(Decision("stop_scan", 1, "converged"))  # after the repeats on the same connection
    while not any(a.startswith("stop_scan") for a in detector.control.actions) and time.monotonic() < deadline:
        follower.join(0.01)
    done.set()
    follower.join(timeout=10)
    for sub in others:
        sub.close(linger=0)
    pub.close()
    ctx.term()
    assert [a.split("->")[0] for a in detector.control.actions] == ["adjust_exposure", "rescan_region", "stop_scan"]
    assert detector.control.exposure == 0.5


def test_model_announcements_over_curve_reach_only_authorised_steering(tmp_path):
    """With the feed on CURVE the announcements must be too; an unauthorised subscriber hears nothing."""
    import zmq.auth

    from trainer.checkpoint import Announcer

    keys, clients, strangers = tmp_path / "keys", tmp_path / "keys" / "clients", tmp_path / "strangers"
    for folder in (keys, clients, strangers):
        folder.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(keys), "announce")
    zmq.auth.create_certificates(str(keys), "feed")
    zmq.auth.create_certificates(str(clients), "steering")
    zmq.auth.create_certificates(str(strangers), "mallory")
    with pytest.raises(ValueError, match="model announcements must be too"):
        SteeringConfig(curve_secret=str(keys / "feed.key_secret"), authorized_keys=str(clients))
    ctx = zmq.Context()
    announcer = Announcer("tcp://127.0.0.1:0", ctx, curve_secret=str(keys / "announce.key_secret"),
                          authorized_keys=str(clients))
    (tmp_path / "ckpt").mkdir()
    steering = _steering(tmp_path, models_endpoint=announcer.endpoint, curve_secret=str(keys / "feed.key_secret"),
                         authorized_keys=str(clients), models_server_key=str(keys / "announce.key"),
                         models_client_cert=str(clients / "steering.key_secret"))
    steering.start()
    rogue = ctx.socket(zmq.SUB)  # right server key, a client key the trainer does not know
    rogue.setsockopt(zmq.SUBSCRIBE, b"")
    from streamer.netsec import curve_client

    curve_client(rogue, keys / "announce.key", strangers / "mallory.key_secret")
    rogue.connect(announcer.endpoint)
    plain = ctx.socket(zmq.SUB)  # no CURVE at all
    plain.setsockopt(zmq.SUBSCRIBE, b"")
    plain.connect(announcer.endpoint)
    path = Path(_checkpoint(tmp_path / "ckpt" / "v000001" / "model.pt"))
    for _ in range(600):  # announce until the authorised subscriber hears it (PUB drops until it has joined)
        announcer.announce(path.parent, {"version": 1})
        if steering.models.poll(50):
            break
    heard = json.loads(steering.models.recv())
    assert heard["version"] == 1 and heard["path"] == str(path)
    assert not rogue.poll(300) and not plain.poll(300)
    for sock in (rogue, plain):
        sock.close(linger=0)
    steering.close()
    announcer.close()
    ctx.term()


def test_frames_skipped_under_load_are_backfilled_when_idle_within_a_memory_bound(tmp_path):
    geometry = {"y_pixels_in_detector": 32, "nimages": 12, "ptychosteer": {"object_shape": [96, 96]}}
    frame_bytes = 32 * 32 * 2
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e-6,  # nothing in time
                         backfill_mb=8 * frame_bytes / 2**20)
    steering._on_live(encode_series_start(1, geometry))
    for i in range(12):
        img = ImageFrame(series=1, frame=i, image=np.full((32, 32), 50, np.uint16), encoding="<",
                         position_px=(8 * (i // 4), 16 * (i % 4)))
        steering._on_live(encode_frame(img))
    while steering._backlog:
        steering._reconstruct()
    state = steering.scans[1]
    assert steering.counters["reconstructed"] == 0 and steering.counters["skipped_behind"] == 12
    assert state.skipped == 12 and state.deferred == 8  # the store holds 8 frames: the 4 oldest are gone
    # measured all the same, those gone for good too: a rescan must not ask for any of them again
    assert state.mosaic.measured == {(8 * (i // 4), 16 * (i % 4)) for i in range(12)}
    while steering._deferred:
        steering._backfill()
    assert steering.counters["backfilled"] == 8 and state.mosaic.frames == 8
    assert state.skipped == 4 and state.deferred == 0  # progress: 8 reconstructed + 4 skipped for good = 12


def test_a_frame_that_waited_in_hidden_queues_past_the_budget_is_skipped_not_reconstructed_late(tmp_path):
    """The age counts from the ingest's receipt stamp, so time spent in the PUB/SUB queues counts; a gap in the
    frame ids (frames the queues dropped) and a missing tail at the series end count as skipped upstream."""
    import time

    geometry = {"y_pixels_in_detector": 32, "nimages": 6, "ptychosteer": {"object_shape": [96, 96]}}
    # a budget that a fresh frame makes on a loaded machine too (the model's first call is slow), and an age
    # far past it
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=3000, backfill_mb=0)
    steering._on_live(encode_series_start(1, geometry))

    def frame(i, age_s):
        img = ImageFrame(series=1, frame=i, image=np.full((32, 32), 50, np.uint16), encoding="<",
                         position_px=(0, 16 * i))
        steering._on_live(encode_frame(img, t_recv_ns=time.time_ns() - int(age_s * 1e9)))
        steering._reconstruct()

    frame(0, 0.0)  # fresh: reconstructed
    frame(1, 30.0)  # half a minute in queues nobody sees
    frame(3, 0.0)  # frame 2 never arrived
    state = steering.scans[1]
    assert steering.counters["reconstructed"] == 2 and steering.counters["skipped_late"] == 1
    assert steering.counters["skipped_upstream"] == 1
    steering._on_live(encode_series_end(1, 6))  # frames 4 and 5 never arrived either
    assert steering.counters["skipped_upstream"] == 3 and state.mosaic.frames + state.skipped == 6


def test_without_a_model_steering_waits_on_its_sockets_instead_of_spinning(tmp_path):
    """Frames wait for the first model; the loop must block in its poll meanwhile (a busy loop took a whole core
    from the trainers and the labeler), and poll without waiting once it has a model and work."""
    steering = _steering(tmp_path)
    steering.start()
    geometry = {"y_pixels_in_detector": 32, "nimages": 4, "ptychosteer": {"object_shape": [96, 96]}}
    steering._on_live(encode_series_start(1, geometry))
    img = ImageFrame(series=1, frame=0, image=np.full((32, 32), 50, np.uint16), encoding="<", position_px=(0, 0))
    steering._on_live(encode_frame(img))
    timeouts = []
    real = steering.poller.poll
    steering.poller.poll = lambda timeout: timeouts.append(timeout) or real(0)
    steering.step()
    steering._load(_checkpoint(tmp_path / "m.pt"), 1)
    steering._swap()
    steering._on_live(encode_frame(ImageFrame(series=1, frame=1, image=img.image, encoding="<",
                                              position_px=(0, 16))))
    steering.step()
    steering.close()
    assert timeouts == [50, 0]


def _scan_without_model(steering, frames=3):
    geometry = {"y_pixels_in_detector": 32, "nimages": frames, "ptychosteer": {"object_shape": [96, 96]}}
    steering._on_live(encode_series_start(1, geometry))
    for i in range(frames):
        steering._on_live(encode_frame(ImageFrame(series=1, frame=i, image=np.full((32, 32), 50, np.uint16),
                                                  encoding="<", position_px=(0, 16 * i))))
    steering._on_live(encode_series_end(1, frames))


def test_a_stage_done_without_any_model_stops_and_counts_the_frames_that_waited(tmp_path):
    """max_scans reached, frames waiting for a first model, and no model can come (no --model, no models
    endpoint): the stage stops instead of waiting for ever, the frames counted as skipped."""
    steering = _steering(tmp_path, max_scans=1)
    steering.start()
    try:
        _scan_without_model(steering)
        assert steering.step() is True
    finally:
        steering.close()
    assert steering.counters["skipped_no_model"] == 3 and steering.counters["reconstructed"] == 0
    assert not steering._backlog and steering.scans[1].skipped == 3


def test_a_stage_done_before_its_first_model_waits_for_one_then_reconstructs_every_frame(tmp_path):
    """With a models endpoint the trainer's first model may come after the last scan (short scans): the frames
    wait for it, within model_wait_s, and are reconstructed; with no wait left the stage stops."""
    for wait, stops in ((3600.0, False), (0.0, True)):
        steering = _steering(tmp_path, max_scans=1, models_endpoint=f"ipc://{tmp_path}/models", model_wait_s=wait)
        steering.start()
        try:
            _scan_without_model(steering)
            assert steering.step() is stops
            if not stops:
                assert steering.counters["skipped_no_model"] == 0 and len(steering._backlog) == 3
                steering._load(_checkpoint(tmp_path / "m.pt"), 1)  # the first model arrives
                while not steering.step():
                    pass
                # past the latency budget by now, so backfilled rather than reconstructed live: all in the mosaic
                assert steering.scans[1].mosaic.frames == 3 and steering.counters["skipped_no_model"] == 0
            else:
                assert steering.counters["skipped_no_model"] == 3
        finally:
            steering.close()


@pytest.mark.parametrize("binning, field", [(2, 192), (1, 96)])
def test_steering_cuts_frames_as_the_models_checkpoint_says_and_stitches_them_in_its_geometry(tmp_path, binning,
                                                                                               field):
    """64x64 frames, a 32x32 model: binned by 2 (same object pixels, half the field of view) or a 32-pixel region
    of interest (object pixels twice as large: the mosaic of a 192-pixel object is 96 of them)."""
    path = tmp_path / "ckpt" / "m.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = PtychoNN(nconv=4, depth=2, frame_size=32)
    prepare = {"size": 32, "binning": binning, "center": None, "pixel_mask": True, "mask_max": True,
               "flatfield": True, "count_time_s": 0.0}
    torch.save({"model": model.state_dict(),
                "model_config": {"nconv": 4, "depth": 2, "frame_size": 32, "prepare": prepare,
                                 "input": INPUT_ENCODING}}, path)
    steering = _steering(tmp_path, max_lag_ms=60_000)
    geometry = {"y_pixels_in_detector": 64, "x_pixels_in_detector": 64, "nimages": 4,
                "ptychosteer": {"object_shape": [192, 192], "probe_diameter_px": 32}}
    steering._on_live(encode_series_start(1, geometry))  # before any model: the mosaic follows the model later
    steering._load(str(path), 1)
    steering._swap()
    assert steering.prepare.binning == binning
    image = np.full((64, 64), 40, np.uint32)
    image[5, 5] = 0xFFFFFFFF  # a gap pixel: masked, never stitched as 4e9 counts
    skipped = decode_message(encode_frame(ImageFrame(series=1, frame=4, image=image, encoding="<",
                                                     position_px=(128.0, 0.0))))
    steering._skip(steering.scans[1], 1, "thinned", skipped)  # measured, not reconstructed (overload)
    for i in range(4):
        steering._on_live(encode_frame(ImageFrame(series=1, frame=i, image=image, encoding="<",
                                                  position_px=(64.0 * (i // 2), 64.0 * (i % 2)))))
    while steering._backlog:
        steering._reconstruct()
    mosaic = steering.scans[1].mosaic
    assert mosaic.frame == 32 and mosaic.shape == (field, field) and mosaic.frames == 4
    assert steering.counters["geometry_changed"] == 0
    # a rescan asked for in the mosaic's pixels reaches the experiment in its own: the patches just stitched map
    # back to the positions the frames were measured at, and so does the frame skipped under load before anything
    # was stitched (it joined the measured set of the mosaic that then replaced the first, in the model's geometry)
    asked = Decision("rescan_region", 1, "test", positions_px=sorted(map(list, mosaic.measured)), region_px=[0] * 4)
    told = steering._in_object_pixels(asked, steering.scans[1])
    assert sorted(map(tuple, told.positions_px)) == [(0, 0), (0, 64), (64, 0), (64, 64), (128, 0)]
    assert told.region_px == [0, 0, 192, 128]


def test_a_long_run_keeps_only_its_newest_ended_scans_in_memory(tmp_path):
    geometry = {"y_pixels_in_detector": 32, "nimages": 4, "ptychosteer": {"object_shape": [64, 64]}}
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), keep_ended_scans=2, max_lag_ms=60_000)
    img = lambda scan, i: ImageFrame(series=scan, frame=i, image=np.full((32, 32), 50, np.uint16),  # noqa: E731
                                     encoding="<", position_px=(16 * (i // 2), 16 * (i % 2)))
    for scan in range(1, 6):
        steering._on_live(encode_series_start(scan, geometry))
        for i in range(4):
            steering._on_live(encode_frame(img(scan, i)))
        if scan < 5:
            while steering._backlog:
                steering._reconstruct()
        else:  # scan 5's frames still wait when scans 4 and 5 end: 5 is kept, so they are reconstructed later
            assert len(steering._backlog) == 4
        steering._on_live(encode_series_end(scan, 4))
    assert sorted(steering.scans) == [4, 5] and steering.counters["scans_retired"] == 3
    assert steering.counters["retired_frames"] == 0
    # each retired scan got its last picture before it was dropped, and nothing else of it is kept
    assert all((tmp_path / "steer" / f"mosaic_scan{s}.png").exists() for s in (1, 2, 3))
    assert not {1, 2, 3} & (set(steering._pictures) | set(steering._headers) | {k[0] for k in steering.policy._last})
    while steering._backlog:
        steering._reconstruct()
    assert steering.scans[5].mosaic.frames == 4
    # a straggler of a retired scan is counted, not stitched
    steering._on_live(encode_frame(img(1, 3)))
    assert steering.counters["unknown_scan"] == 1
    # frames still waiting when their scan is retired are dropped and counted
    steering._on_live(encode_series_start(6, geometry))
    steering._on_live(encode_frame(img(6, 0)))
    steering._on_live(encode_series_end(6, 4))
    steering._on_live(encode_series_start(7, geometry))
    steering._on_live(encode_series_end(7, 0))
    steering._on_live(encode_series_start(8, geometry))
    steering._on_live(encode_series_end(8, 0))
    assert sorted(steering.scans) == [7, 8] and steering.counters["retired_frames"] == 1 and not steering._backlog
    while steering._deferred or steering._backlog:
        steering._reconstruct()
        steering._backfill()
    assert steering.snapshot()["scans"] == [7, 8]


def _recover_all(steering, turns=4):
    """What the loop does when idle: read dropped frames from the recording, reconstruct them."""
    for _ in range(turns):
        steering._recover()
        while steering._deferred:
            steering._backfill()


def _recording(path, frames, geometry, ended=False):
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import FrameBlock, RecordingWriter

    writer = RecordingWriter(path, overwrite=True)  # called again: a later state of the same recording
    writer.put_series_header(SeriesHeader(series=1, detail="basic", config=geometry))
    block = FrameBlock(capacity=len(frames), shape=(32, 32), dtype=np.dtype(np.uint16))
    for img in frames:
        block.append(img, recv_time_ns=0)
    writer.put_block(block)
    if ended:
        writer.put_series_end(1, len(frames))
    writer.close()
    return str(path)


def test_frames_the_live_queues_dropped_are_read_from_the_recording_and_reconstructed(tmp_path):
    """Frames 4-7 never reached steering (a gap in the ids) and 12-13 neither (the end notice says 14); the
    ingest recorded 0-11. Steering reads 4-7 from the recording when idle, without their labels; 12-13 are not
    on disk and are given up after the wait, counted."""
    from steering.service import RECORDING_WAIT_S

    geometry = {"y_pixels_in_detector": 32, "nimages": 14, "ptychosteer": {"object_shape": [96, 96]}}
    frames = [ImageFrame(series=1, frame=i, image=np.full((32, 32), 40 + i, np.uint16), encoding="<",
                         position_px=(8 * (i // 4), 16 * (i % 4)), amplitude=np.full((32, 32), 0.5, np.float32),
                         phase=np.zeros((32, 32), np.float32)) for i in range(12)]
    recording = _recording(tmp_path / "recording.h5", frames, geometry)
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6, recording=recording)
    seen = []
    infer = steering._infer
    steering._infer = lambda batch: (seen.extend(batch), infer(batch))
    steering._on_live(encode_series_start(1, geometry))
    for img in frames[:4] + frames[8:]:
        steering._on_live(encode_frame(img))
    steering._on_live(encode_series_end(1, 14))
    while steering._backlog:
        steering._reconstruct()
    state = steering.scans[1]
    assert steering.counters["skipped_upstream"] == 6 and state.deferred == 6 and state.mosaic.frames == 8
    _recover_all(steering)
    recovered = [f for f in seen if 4 <= f.frame < 8]
    assert steering.counters["recovered"] == 4 and state.mosaic.frames == 12 and state.deferred == 2
    assert sorted(f.frame for f in recovered) == [4, 5, 6, 7] and not any(f.labelled for f in recovered)
    assert all(np.array_equal(f.image, frames[f.frame].image) and f.position_px == frames[f.frame].position_px
               for f in recovered)
    _recover_all(steering)  # 12 and 13 are not on disk: looked for again later, not at once
    assert steering.counters["recovered"] == 4 and 1 in steering._dropped
    steering._recover(now=steering._dropped_until[1] + RECORDING_WAIT_S)
    assert steering.counters["unrecovered"] == 2 and state.deferred == 0 and state.skipped == 2
    assert not steering._dropped


def test_an_unreadable_recording_is_counted_and_the_dropped_frames_stay_skipped(tmp_path):
    geometry = {"y_pixels_in_detector": 32, "nimages": 4, "ptychosteer": {"object_shape": [96, 96]}}
    (tmp_path / "recording.h5").write_bytes(b"not HDF5")
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6,
                         recording=str(tmp_path / "recording.h5"))
    steering._on_live(encode_series_start(1, geometry))
    steering._on_live(encode_frame(ImageFrame(series=1, frame=3, image=np.full((32, 32), 9, np.uint16),
                                              encoding="<", position_px=(0, 0))))
    steering._on_live(encode_series_end(1, 4))
    while steering._backlog:
        steering._reconstruct()
    steering._recover()
    assert steering.counters["recording_errors"] == 1 and steering.scans[1].deferred == 3
    steering._recover(now=steering._dropped_until[1] + 1)
    assert steering.counters["recording_errors"] == 2 and steering.counters["unrecovered"] == 3
    assert steering.scans[1].deferred == 0 and steering.scans[1].skipped == 3


def test_a_series_start_ends_a_scan_whose_end_was_dropped_and_its_tail_comes_from_the_recording(tmp_path):
    """Scan 1's frames 4-11 and its end never reached steering; the ingest recorded all 12 and the end. Scan 2's
    start ends scan 1 with the recorded count (so a stage waiting for ``max_scans`` ends does not wait forever),
    and its tail is read from the recording."""
    geometry = {"y_pixels_in_detector": 32, "nimages": 12, "ptychosteer": {"object_shape": [96, 96]}}
    frames = [ImageFrame(series=1, frame=i, image=np.full((32, 32), 40 + i, np.uint16), encoding="<",
                         position_px=(8 * (i // 4), 16 * (i % 4))) for i in range(12)]
    recording = _recording(tmp_path / "recording.h5", frames, geometry, ended=True)
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6, recording=recording)
    steering._on_live(encode_series_start(1, geometry))
    for img in frames[:4]:
        steering._on_live(encode_frame(img))
    steering._on_live(encode_series_start(2, geometry))
    state = steering.scans[1]
    assert state.ended and steering.counters["implicit_ends"] == 1 and steering.counters["scans_ended"] == 1
    assert not steering.scans[2].ended and state.last_frame == 11 and state.deferred == 8
    while steering._backlog:
        steering._reconstruct()
    _recover_all(steering)
    assert steering.counters["recovered"] == 8 and state.mosaic.frames == 12 and state.deferred == 0
    steering._on_live(encode_series_start(3, {}))  # without a recording's count: ended with the frames seen
    assert steering.scans[2].ended and steering.counters["implicit_ends"] == 2 and steering.scans[2].last_frame == -1


def test_an_open_scan_whose_end_the_recording_holds_is_ended_when_nothing_arrives(tmp_path):
    """The last scan's tail and end were dropped and no series follows: when the live socket is quiet, steering
    finds the end in the recording, ends the scan and reads its tail. A late end notice is then only counted."""
    geometry = {"y_pixels_in_detector": 32, "nimages": 12, "ptychosteer": {"object_shape": [96, 96]}}
    frames = [ImageFrame(series=1, frame=i, image=np.full((32, 32), 40 + i, np.uint16), encoding="<",
                         position_px=(8 * (i // 4), 16 * (i % 4))) for i in range(12)]
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6,
                         recording=str(tmp_path / "recording.h5"))
    steering._on_live(encode_series_start(1, geometry))
    for img in frames[:5]:
        steering._on_live(encode_frame(img))
    _recording(tmp_path / "recording.h5", frames[:9], geometry)  # the end is not on disk yet
    steering._ends_from_recording(now=1.0)
    assert not steering.scans[1].ended
    _recording(tmp_path / "recording.h5", frames, geometry, ended=True)
    steering._ends_from_recording(now=1.1)  # looked at again too soon
    assert not steering.scans[1].ended
    steering._ends_from_recording(now=2.0)
    state = steering.scans[1]
    assert state.ended and steering.counters["ends_from_recording"] == 1 and state.deferred == 7
    while steering._backlog:
        steering._reconstruct()
    _recover_all(steering)
    assert steering.counters["recovered"] == 7 and state.mosaic.frames == 12 and state.deferred == 0
    steering._on_live(encode_series_end(1, 12))
    assert steering.counters["repeated_ends"] == 1 and steering.counters["scans_ended"] == 1


def test_a_scan_whose_start_never_arrived_starts_from_the_recordings_header(tmp_path):
    """Steering (re)started mid-scan, or the start was dropped: the first frame of the unknown scan makes steering
    read the scan's header from the recording; the frames before it are read from there too."""
    geometry = {"y_pixels_in_detector": 32, "nimages": 12, "ptychosteer": {"object_shape": [96, 96]}}
    frames = [ImageFrame(series=1, frame=i, image=_speckled(40 + i), encoding="<",
                         position_px=(8 * (i // 4), 16 * (i % 4))) for i in range(12)]
    recording = _recording(tmp_path / "recording.h5", frames, geometry)
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6, recording=recording)
    for img in frames[5:]:
        steering._on_live(encode_frame(img))
    assert steering.counters["starts_from_recording"] == 1 and not steering.counters["unknown_scan"]
    state = steering.scans[1]
    assert state.nimages == 12 and state.deferred == 5 and steering.counters["skipped_upstream"] == 5
    steering._on_live(encode_series_end(1, 12))
    while steering._backlog:
        steering._reconstruct()
    _recover_all(steering)
    assert steering.counters["recovered"] == 5 and state.mosaic.frames == 12 and state.deferred == 0
    # without the header on disk the frame stays unknown (counted), and the recording is not read at every frame
    steering._on_live(encode_frame(ImageFrame(series=7, frame=0, image=frames[0].image, encoding="<",
                                              position_px=(0, 0))))
    steering._on_live(encode_frame(ImageFrame(series=7, frame=1, image=frames[0].image, encoding="<",
                                              position_px=(0, 0))))
    assert steering.counters["unknown_scan"] == 2 and list(steering._header_next) == [7]


def test_a_frame_that_arrives_after_its_scan_was_ended_from_the_recording_is_not_counted_twice(tmp_path):
    geometry = {"y_pixels_in_detector": 32, "nimages": 6, "ptychosteer": {"object_shape": [96, 96]}}
    frames = [ImageFrame(series=1, frame=i, image=np.full((32, 32), 40 + i, np.uint16), encoding="<",
                         position_px=(0, 16 * (i % 4))) for i in range(6)]
    recording = _recording(tmp_path / "recording.h5", frames, geometry, ended=True)
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6, recording=recording)
    steering._on_live(encode_series_start(1, geometry))
    steering._on_live(encode_frame(frames[0]))
    steering._ends_from_recording(now=1.0)
    state = steering.scans[1]
    assert state.ended and state.deferred == 5
    steering._on_live(encode_frame(frames[1]))  # it was on its way after all
    assert steering.counters["late_frames"] == 1 and state.deferred == 5 and len(steering._backlog) == 1
    while steering._backlog:
        steering._reconstruct()
    _recover_all(steering)
    assert steering.counters["recovered"] == 5 and state.mosaic.frames == 6 and state.skipped == 0


def test_dropped_frames_are_read_from_a_recording_this_process_is_still_writing(tmp_path):
    """An ingest and steering in one process (a notebook, a test): HDF5 refuses a second open with other locking
    flags, so the reader shares the writer's open file instead of failing."""
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import FrameBlock, RecordingWriter

    geometry = {"y_pixels_in_detector": 32, "nimages": 8, "ptychosteer": {"object_shape": [96, 96]}}
    frames = [ImageFrame(series=1, frame=i, image=_speckled(40 + i), encoding="<",
                         position_px=(8 * (i // 4), 16 * (i % 4))) for i in range(8)]
    writer = RecordingWriter(tmp_path / "recording.h5")
    try:
        writer.put_series_header(SeriesHeader(series=1, detail="basic", config=geometry))
        block = FrameBlock(capacity=8, shape=(32, 32), dtype=np.dtype(np.uint16))
        for img in frames:
            block.append(img, recv_time_ns=0)
        writer.put_block(block)
        assert writer.sync(timeout=30)
        steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6,
                             recording=str(tmp_path / "recording.h5"))
        for img in frames[6:]:  # the start and frames 0-5 were dropped
            steering._on_live(encode_frame(img))
        while steering._backlog:
            steering._reconstruct()
        _recover_all(steering)
        assert steering.counters["starts_from_recording"] == 1 and steering.counters["recovered"] == 6
        assert steering.scans[1].mosaic.frames == 8 and not steering.counters["recording_errors"]
        writer.put_series_end(1, 8)  # the writer still works after the reads
    finally:
        writer.close()
    from streamer.hdf5 import Recording

    with Recording(tmp_path / "recording.h5") as rec:
        assert len(rec) == 8 and rec.ended_series() == {1}


def test_a_series_none_of_whose_messages_arrived_is_read_from_the_recording(tmp_path):
    """Steering saw scans 1 and 3 (3 still open); every message of scan 2 was dropped. When the socket is quiet it
    finds scan 2 in the recording: started from its header, ended with its recorded count, its frames read; scan 3
    is newer and stays open. A series before the first one steering saw is not reconstructed (its history)."""
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import FrameBlock, RecordingWriter

    geometry = {"y_pixels_in_detector": 32, "nimages": 4, "ptychosteer": {"object_shape": [96, 96]}}

    def frames(series):
        return [ImageFrame(series=series, frame=i, image=np.full((32, 32), 10 * series + i, np.uint16),
                           encoding="<", position_px=(0, 16 * i)) for i in range(4)]

    writer = RecordingWriter(tmp_path / "recording.h5")
    for series in (0, 1, 2, 3):
        writer.put_series_header(SeriesHeader(series=series, detail="basic", config=geometry))
        block = FrameBlock(capacity=4, shape=(32, 32), dtype=np.dtype(np.uint16))
        for img in frames(series):
            block.append(img, recv_time_ns=0)
        writer.put_block(block)
        if series < 3:
            writer.put_series_end(series, 4)
    writer.close()
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6,
                         recording=str(tmp_path / "recording.h5"))
    for series in (1, 3):
        steering._on_live(encode_series_start(series, geometry))
        for img in frames(series):
            steering._on_live(encode_frame(img))
        if series == 1:
            steering._on_live(encode_series_end(1, 4))
    assert not steering.scans[3].ended  # scan 3's start did not end anything newer, and scan 1 had ended
    steering._ends_from_recording(now=1.0)
    assert set(steering.scans) == {1, 2, 3} and steering.counters["starts_from_recording"] == 1
    assert steering.scans[2].ended and steering.scans[2].deferred == 4 and not steering.scans[3].ended
    while steering._backlog:
        steering._reconstruct()
    _recover_all(steering)
    assert [steering.scans[s].mosaic.frames for s in (1, 2, 3)] == [4, 4, 4]
    assert steering.counters["recovered"] == 4 and steering.counters["ends_from_recording"] == 0


def _speckled(value):
    """A 32×32 frame around ``value`` whose pixels differ (a frame of one value, a dark frame, would be equal in
    any run's recording: steering does not take it as the witness that a file is this run's)."""
    return np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 7 + np.uint16(value)


def _watched_steering(tmp_path):
    """Steering with a trained model and ``tmp_path/recording.h5``, and the list of every frame it reconstructs."""
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6,
                         recording=str(tmp_path / "recording.h5"))
    seen = []
    infer = steering._infer
    steering._infer = lambda batch: (seen.extend(batch), infer(batch))
    return steering, seen


@pytest.mark.parametrize("same_run", [True, False])
def test_a_recording_of_another_run_is_never_read(tmp_path, same_run):
    """The recording holds series 1-3, each ended. Live, steering saw scan 1 with frames 4-7 dropped, and scan 3
    open. If the recording's header of scan 1 is the live one (the same arming date), it is this run's: frames
    4-7, scan 2 (never seen) and scan 3's end come from it. If it differs — an old file, while a restarted ingest
    writes a new one and the detector reuses the ids — nothing is read from it: frames 4-7 stay skipped
    (``unrecovered``), scan 2 is not started from it, scan 3 is not ended from it."""
    from steering.service import RECORDING_WAIT_S
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import FrameBlock, RecordingWriter

    def geometry(date):
        return {"y_pixels_in_detector": 32, "nimages": 12, "data_collection_date": date,
                "ptychosteer": {"object_shape": [96, 96]}}

    def frames(series, offset=0):
        return [ImageFrame(series=series, frame=i, image=np.full((32, 32), offset + 10 * series + i, np.uint16),
                           encoding="<", position_px=(8 * (i // 4), 16 * (i % 4))) for i in range(12)]

    old_date, live_date = "2026-12-06T09:00:00.000001+00:00", "2026-12-07T12:00:00.000002+00:00"
    writer = RecordingWriter(tmp_path / "recording.h5")
    for series in (1, 2, 3):
        writer.put_series_header(SeriesHeader(series=series, detail="basic",
                                              config=geometry(live_date if same_run else old_date)))
        block = FrameBlock(capacity=12, shape=(32, 32), dtype=np.dtype(np.uint16))
        for img in frames(series, 0 if same_run else 1000):
            block.append(img, recv_time_ns=0)
        writer.put_block(block)
        writer.put_series_end(series, 12)
    writer.close()
    steering, seen = _watched_steering(tmp_path)
    steering._on_live(encode_series_start(1, geometry(live_date)))
    for img in frames(1)[:4] + frames(1)[8:]:
        steering._on_live(encode_frame(img))
    steering._on_live(encode_series_end(1, 12))
    steering._on_live(encode_series_start(3, geometry(live_date)))
    steering._on_live(encode_frame(frames(3)[0]))
    while steering._backlog:
        steering._reconstruct()
    steering._ends_from_recording(now=1.0)
    _recover_all(steering)
    for scan in list(steering._dropped):
        steering._recover(now=steering._dropped_until[scan] + RECORDING_WAIT_S)
    recovered = sorted((f.scan, f.frame) for f in seen if f.scan == 1 and 4 <= f.frame < 8)
    if same_run:
        assert recovered == [(1, 4), (1, 5), (1, 6), (1, 7)]
        assert all(int(f.image[0, 0]) == 10 * f.scan + f.frame for f in seen)
        assert set(steering.scans) == {1, 2, 3} and steering.scans[3].ended
        assert steering.counters["foreign_recording"] == 0
    else:
        assert recovered == [] and all(int(f.image[0, 0]) < 1000 for f in seen), "a frame of the old run was read"
        assert steering.counters["foreign_recording"] == 1 and steering.counters["unrecovered"] == 4
        assert set(steering.scans) == {1, 3} and not steering.scans[3].ended
        assert steering.scans[1].deferred == 0 and steering.scans[1].skipped == 4


def test_a_frame_of_an_unknown_scan_never_starts_it_from_another_runs_recording(tmp_path):
    """Once the recording has shown itself another run's (its scan 1 header differs from the live one), a live frame
    of a scan whose start was dropped does not start that scan from the file's header: it is counted as
    ``unknown_scan``, as without a recording."""
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import RecordingWriter

    def geometry(date):
        return {"y_pixels_in_detector": 32, "nimages": 4, "data_collection_date": date,
                "ptychosteer": {"object_shape": [96, 96]}}

    writer = RecordingWriter(tmp_path / "recording.h5")
    for series in (1, 2):
        writer.put_series_header(SeriesHeader(series=series, detail="basic", config=geometry("old")))
    writer.close()
    steering = _steering(tmp_path, model_path=_checkpoint(tmp_path / "m.pt"), max_lag_ms=1e6,
                         recording=str(tmp_path / "recording.h5"))
    steering._on_live(encode_series_start(1, geometry("live")))
    steering._ends_from_recording(now=1.0)  # looks for unseen series: finds the file another run's
    assert steering.counters["foreign_recording"] == 1
    steering._on_live(encode_frame(ImageFrame(series=2, frame=0, image=np.zeros((32, 32), np.uint16), encoding="<",
                                              position_px=(0, 0))))
    assert set(steering.scans) == {1} and steering.counters["unknown_scan"] == 1
    assert steering.counters["starts_from_recording"] == 0


@pytest.mark.parametrize("file", ["this_run", "another_run", "without_the_frame", "another_run_dark_first"])
def test_without_a_live_header_the_live_frame_tells_whether_the_recording_is_this_runs(tmp_path, file):
    """Steering (re)started mid-scan: no series header arrived live, so there is none to compare the recording's
    with. The first live frame is compared with the recorded frame of that id. The same: the scan starts from the
    file and the frames the live queues dropped (4-7) are read from it. Another: the file is another run's
    (``foreign_recording``), the scan does not start from it, nothing is read. Not on disk (an old file that
    never held it): the scan starts, but nothing more is read from the file (dropped frames: ``unrecovered``).
    A dark first frame (every pixel 0), equal in any run's file, tells nothing: the scan starts, and the next live
    frame is the witness, which shows another run's file as such."""
    from steering.service import RECORDING_WAIT_S
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import FrameBlock, RecordingWriter

    geometry = {"y_pixels_in_detector": 32, "nimages": 12, "ptychosteer": {"object_shape": [96, 96]}}
    dark = {2} if file == "another_run_dark_first" else set()

    def frames(offset=0):
        return [ImageFrame(series=1, frame=i, image=np.zeros((32, 32), np.uint16) if i in dark else
                           _speckled(offset + 10 + i), encoding="<",
                           position_px=(8 * (i // 4), 16 * (i % 4))) for i in range(12)]

    writer = RecordingWriter(tmp_path / "recording.h5")
    writer.put_series_header(SeriesHeader(series=1, detail="basic", config=geometry))  # the same geometry
    on_disk = frames(0 if file == "this_run" else 1000)[:2 if file == "without_the_frame" else 12]
    block = FrameBlock(capacity=12, shape=(32, 32), dtype=np.dtype(np.uint16))
    for img in on_disk:
        block.append(img, recv_time_ns=0)
    writer.put_block(block)
    writer.close()
    steering, seen = _watched_steering(tmp_path)
    for img in frames()[2:4] + frames()[8:]:  # frames 0-1 and 4-7 dropped on the way, and the series start
        steering._on_live(encode_frame(img))
        if file == "this_run":  # shown by the first frame: the file is not compared again
            assert 1 in steering._matched and not steering._witness
    while steering._backlog:
        steering._reconstruct()
    _recover_all(steering)
    for scan in list(steering._dropped):
        steering._recover(now=steering._dropped_until[scan] + RECORDING_WAIT_S)
    assert all(int(f.image.max()) < 1000 for f in seen), "a frame of another run was read"
    got = sorted(f.frame for f in seen)
    if file == "this_run":
        assert got == list(range(12)) and steering.counters["foreign_recording"] == 0
    elif file == "another_run":
        assert got == [] and 1 not in steering.scans and steering.counters["foreign_recording"] == 1
        assert steering.counters["unknown_scan"] == 6 and steering.counters["starts_from_recording"] == 0
    else:
        assert got == [2, 3, 8, 9, 10, 11] and steering.counters["starts_from_recording"] == 1
        assert steering.counters["unrecovered"] == 6 and steering.counters["recovered"] == 0
        assert steering.counters["foreign_recording"] == (file == "another_run_dark_first")


def test_reading_frames_from_a_recording_that_has_only_a_header_yet_finds_none(tmp_path):
    """The ingest writes a series header before its first block of frames: a read then finds no frame (it used to
    raise IndexError, counted as a recording error on every look)."""
    from steering.service import read_dropped
    from streamer.dectris import SeriesHeader
    from streamer.hdf5 import RecordingWriter

    writer = RecordingWriter(tmp_path / "recording.h5")
    writer.put_series_header(SeriesHeader(series=1, detail="basic", config={"y_pixels_in_detector": 32}))
    writer.close()
    assert read_dropped(str(tmp_path / "recording.h5"), 1, [(0, 4)], 4) == []
