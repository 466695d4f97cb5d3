import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer.config import SimulatorConfig
from streamer.dectris import ImageFrame
from streamer.frames import encode_frame, encode_series_end
from streamer.simulator import Control, SimulatedSource
from trainer import checkpoint as ckpt
from trainer.config import EvalConfig, ModelConfig, TrainerConfig
from trainer.distributed import spawn_local
from trainer.learner import LearnerConfig

from .train_workers import train_rank

pytestmark = pytest.mark.integration

SIM = SimulatorConfig(frame_size=32, object_size_px=64, overlap=0.75, scans=2, seed=2)


def _config(tmp_path, endpoint, strategy="er", **kw):
    return TrainerConfig(
        stream_endpoint=endpoint, announce_endpoint=f"ipc://{tmp_path}/announce", out_dir=str(tmp_path / "out"),
        backend="gloo", model=ModelConfig(nconv=4, depth=2, frame_size=32),
        learner=LearnerConfig(strategy=strategy, batch_size=8, replay=8, buffer_capacity=64, lr=2e-3),
        eval=EvalConfig(enabled=True, count=16, seed=SIM.seed, object_size_px=SIM.object_size_px,
                        overlap=SIM.overlap, families=SIM.families),
        checkpoint_every_steps=0, max_tasks=2, idle_timeout_s=20, boundary_grace_s=0.3, **kw)


def _wait_for_peers(sock, n):
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    seen = 0
    while seen < n:
        assert monitor.poll(60_000), "trainer ranks did not connect"
        if recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            seen += 1
    sock.disable_monitor()
    monitor.close(linger=0)


def _send_stream(sock, unlabelled_every=10):
    sent = unlabelled = 0
    for scan, frames in enumerate(SimulatedSource(SIM).scans(Control())):
        series = scan + 1
        for i, f in enumerate(frames):
            label = i % unlabelled_every != 0  # some unlabelled frames: counted and skipped
            img = ImageFrame(series=series, frame=i, image=f.image, encoding="<", position_m=f.position_m,
                             position_px=f.position_px, amplitude=f.amplitude if label else None,
                             phase=f.phase if label else None)
            sock.send_multipart(encode_frame(img), copy=False)
            sent += 1
            unlabelled += not label
        sock.send_multipart(encode_series_end(series, i + 1))
    return sent, unlabelled


def test_two_rank_gloo_ddp_trains_on_the_stream_checkpoints_and_announces(tmp_path):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{tmp_path}/announce")
    config = _config(tmp_path, endpoint)
    config = dataclasses.replace(config, learner=dataclasses.replace(config.learner, task_weight="floor"))
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 2, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 2)
    sent, unlabelled = _send_stream(push)
    ranks.join(timeout=300)
    assert not ranks.is_alive()
    announcements = []
    while sub.poll(100):
        announcements.append(json.loads(sub.recv()))
    push.close(linger=0)
    sub.close(linger=0)
    ctx.term()

    s0, s1 = (json.loads((tmp_path / f"summary-rank{r}.json").read_text()) for r in (0, 1))
    assert s0["steps"] == s1["steps"] > 4  # lockstep
    assert s0["param_hash"] == s1["param_hash"]  # DDP kept the replicas identical
    assert s0["tasks"] == [1, 2]
    assert s0["loss_last"] < s0["loss_first"]
    assert s0["frames_received"] + s1["frames_received"] == sent
    assert s0["unlabelled"] + s1["unlabelled"] == unlabelled > 0
    assert [a["version"] for a in announcements] == [1, 2]
    assert announcements[-1]["task"] == 2 and announcements[-1]["path"].endswith("model.pt")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["rows"]) == 2 and metrics["metrics"]["tasks_seen"] == 2
    assert set(metrics["constant_guess"]) == {"0", "1"} and all(v > 0 for v in metrics["constant_guess"].values())
    assert sum(metrics["steps_per_task"].values()) == s0["steps"] and min(metrics["steps_per_task"].values()) > 0
    assert set(metrics["skill"]["full"]["skill_after_task"]) == {"0", "1"}
    assert (tmp_path / "out" / "error_matrix.png").stat().st_size > 0
    assert (tmp_path / "out" / "reconstructions.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["v000001", "v000002"]
    assert (tmp_path / "out" / "checkpoints" / "v000002" / "buffer-rank1.pt").exists()
    _assert_buffered_weights_are_their_scans_floor(tmp_path / "out" / "checkpoints" / "v000002")

    # resumed on one rank, the rank takes both ranks' buffer shards (the loop's _resume calls these two)
    from buffer import BufferConfig, RehearsalBuffer
    from trainer.data import ptycho_fields
    from trainer.loop import regroup_shards, restore_buffer

    version = tmp_path / "out" / "checkpoints" / "v000002"
    fills = [ckpt.load_shard(version, r)["policy_state"]["fill"] for r in (0, 1)]
    one = RehearsalBuffer(BufferConfig(fields=ptycho_fields(config.model.frame_size, weighted=True)[0],
                                       capacity_samples=config.learner.buffer_capacity))
    assert restore_buffer(one, regroup_shards(version, 2, 0, 1), str(version))
    assert min(fills) > 0 and one.fill == min(sum(fills), config.learner.buffer_capacity)

    # a corrupt newest checkpoint falls back to the previous one
    (tmp_path / "out" / "checkpoints" / "v000002" / "model.pt").write_bytes(b"garbage")
    assert ckpt.find_resumable(tmp_path / "out" / "checkpoints", 2).name == "v000001"


def _assert_buffered_weights_are_their_scans_floor(version):
    """task_weight = "floor": every buffered sample carries its scan's task index, and the checkpoint holds each
    task's floor (its labels' constant-guess error over both ranks, within 3 %: the ranks' estimates combined);
    the scans' floors differ (particles, cells), so a single weight fails."""
    import torch

    from trainer.data import label_floor

    scan_of, floor = {}, {}
    for scan, frames in enumerate(SimulatedSource(SIM).scans(Control())):
        frames = list(frames)
        scan_of.update({f.amplitude.astype(np.float32).tobytes(): scan for f in frames})
        floor[scan] = label_floor(torch.as_tensor(np.stack([f.amplitude for f in frames])),
                                  torch.as_tensor(np.stack([f.phase for f in frames])))
    assert max(floor.values()) > 1.5 * min(floor.values())
    seen = {0: 0, 1: 0}
    for rank in (0, 1):
        data = ckpt.load_safe(version / f"buffer-rank{rank}.pt")["data"]
        for amp, task in zip(data["amp"], data["task"]):
            scan = scan_of[amp.numpy().tobytes()]
            assert int(task) == scan, (scan, float(task))  # one task per scan, in order
            seen[scan] += 1
    assert all(seen.values()), f"a scan has no sample in the buffers: {seen}"
    floors = json.loads((version / "MANIFEST.json").read_text())["task_floors"]
    assert len(floors) == 2
    for scan, f in enumerate(floors):
        assert abs(f / floor[scan] - 1) < 0.03, (scan, f, floor[scan])


def test_a_slow_stream_keeps_the_trainer_busy_on_the_tasks_window(tmp_path):
    """Continuous training: 4 batches' worth of frames per rank, then nothing until the trainer reports many
    more steps than those frames allow (it revisits the task's window); only new frames enter the buffer."""
    from streamer.status import read_status

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    config = dataclasses.replace(_config(tmp_path, push.getsockopt_string(zmq.LAST_ENDPOINT)), max_tasks=1,
                                 log_every_steps=5, status_path=str(tmp_path / "status" / "trainer.json"),
                                 eval=EvalConfig(enabled=False))
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 2, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 2)
    frames = next(iter(SimulatedSource(SIM).scans(Control())))
    sent = 0
    for i, f in zip(range(64), frames):  # 8 batches of 8 in all: 4 per rank
        push.send_multipart(encode_frame(ImageFrame(series=1, frame=i, image=f.image, encoding="<",
                                                    amplitude=f.amplitude, phase=f.phase)), copy=False)
        sent += 1
    steps, deadline = 0, time.monotonic() + 90
    while steps < 40 and ranks.is_alive() and time.monotonic() < deadline:  # its status file says how far it is
        st = read_status(tmp_path / "status").get("trainer", {})
        steps = st.get("steps", 0)
        ranks.join(timeout=0.1)
    push.send_multipart(encode_series_end(1, sent))
    ranks.join(timeout=120)
    push.close(linger=0)
    ctx.term()
    s0, s1 = (json.loads((tmp_path / f"summary-rank{r}.json").read_text()) for r in (0, 1))
    assert s0["steps"] == s1["steps"] >= 40  # lockstep, and far more steps than 4 batches per rank
    # in the steady state (the window full, no end in sight) the ranks agree once per status_every_steps (4)
    assert s0["status_exchanges"] == s1["status_exchanges"] < s0["steps"] / 2
    assert s0["tasks"] == [1] and s0["param_hash"] == s1["param_hash"]
    assert s0["frames_received"] + s1["frames_received"] == sent
    assert s0["samples_per_frame_rank0"] > 5  # each frame trained many times (window rows + replayed rows)
    # new samples per second between step 20 and the last step (what scripts/bench_trainer.py compares)
    assert 0 < s0["steady_samples_per_s_per_rank"] < 1e6
    assert s0["loss_last"] < s0["loss_first"]


def test_after_a_task_ends_the_rank_keeps_training_on_it_until_the_next_task_s_frames_come(tmp_path):
    """max_tasks says a second task comes, but its frames are late (a labeler's labels come a reconstruction after
    their scan): the rank goes on training on the first task's window instead of waiting, and closes the task
    when the second task's frames arrive."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{tmp_path}/announce")
    config = dataclasses.replace(_config(tmp_path, push.getsockopt_string(zmq.LAST_ENDPOINT)),
                                 checkpoint_every_steps=10, hold_task=True)
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 1, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 1)
    scans = [list(frames) for frames in SimulatedSource(SIM).scans(Control())]

    def send(series):
        for i, f in enumerate(scans[series - 1]):
            push.send_multipart(encode_frame(ImageFrame(series=series, frame=i, image=f.image, encoding="<",
                                                        amplitude=f.amplitude, phase=f.phase)), copy=False)
        push.send_multipart(encode_series_end(series, len(scans[series - 1])))

    send(1)
    held = 6 * len(scans[0]) // 8  # six passes over the task's frames in batches of 8: only a held task gets there
    seen = []
    while not seen or seen[-1]["step"] < held:  # the periodic checkpoints say how far the rank is
        assert sub.poll(120_000), f"no further checkpoint: the rank stopped training at {seen[-1:]}"
        seen.append(json.loads(sub.recv()))
    assert all(a["task"] == 0 for a in seen), seen  # the first task was still open all along
    send(2)
    ranks.join(timeout=300)
    assert not ranks.is_alive()
    sub.close(linger=0)
    push.close(linger=0)
    ctx.term()
    summary = json.loads((tmp_path / "summary-rank0.json").read_text())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["tasks"] == [1, 2] and metrics["steps_per_task"]["0"] >= held


def _record(tmp_path, scans):
    """A recording of ``scans`` simulated series (SIM's frames, labelled), made by the real ingest."""
    from streamer.config import IngestConfig
    from streamer.simulator import Detector

    from .helpers import running_ingest

    ctx = zmq.Context()
    sim = SimulatorConfig(**{**SIM.__dict__, "endpoint": "tcp://127.0.0.1:*", "scans": scans, "linger_ms": 5000})
    with Detector(sim, context=ctx) as det:
        config = IngestConfig(detector_endpoint=det.endpoint, output_path=str(tmp_path / "rec.h5"),
                              train_endpoint="", live_endpoint="", max_series=scans, stats_interval_s=60)
        with running_ingest(config, ctx) as (ingest, thread):
            det.run()
            thread.join(timeout=60)
    ctx.term()
    return tmp_path / "rec.h5", det.frames_sent


def test_a_restarted_trainer_catches_up_from_the_recording_and_drops_live_duplicates(tmp_path):
    """Both series were recorded while no trainer was up; the trainer trains on them from disk, in order, and
    evaluates both; live copies of replayed frames are dropped."""
    from streamer.hdf5 import Recording

    recording, sent = _record(tmp_path, scans=2)
    with Recording(recording) as rec:
        series = sorted(set(rec.series_ids().tolist()))
        labelled = int(rec.labelled().sum())
    assert series == [1, 2] and labelled == sent
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    config = _config(tmp_path, push.getsockopt_string(zmq.LAST_ENDPOINT), catch_up=str(recording))  # 2 tasks
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 1, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 1)
    frames = next(iter(SimulatedSource(SIM).scans(Control())))
    for i, f in zip(range(5), frames):  # the live copies of frames 0-4 of series 1: already replayed
        push.send_multipart(encode_frame(ImageFrame(series=1, frame=i, image=f.image, encoding="<",
                                                    position_px=f.position_px, amplitude=f.amplitude,
                                                    phase=f.phase)))
    ranks.join(timeout=300)
    assert not ranks.is_alive()
    summary = json.loads((tmp_path / "summary-rank0.json").read_text())
    assert summary["tasks"] == [1, 2] and summary["replayed"] == labelled
    assert summary["duplicates_dropped"] == 5 and summary["frames_received"] == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["series"] == {"0": 1, "1": 2} and len(metrics["rows"]) == 2
    push.close(linger=0)
    ctx.term()


def test_catch_up_skips_what_the_checkpoint_trained_and_reports_an_unreadable_recording(tmp_path):
    from trainer.catchup import plan

    recording, _ = _record(tmp_path, scans=2)
    p = plan(str(recording), trained=[1])
    assert sorted(p.indices) == [2] and p.ended == [2] and p.frames > 0
    assert plan(str(tmp_path / "absent.h5"), []).frames == 0  # nothing recorded yet: nothing to replay
    import shutil

    import h5py

    torn = tmp_path / "torn.h5"  # as a reader can see a file the ingest is writing: one column still short
    shutil.copy(recording, torn)
    with h5py.File(torn, "a") as f:
        n = f["entry/data/frame_id"].shape[0]
        f["entry/data/frame_id"].resize((n - 3,))
    p_torn = plan(str(torn), trained=[])
    assert not p_torn.error and sum(len(v) for v in p_torn.frame_ids.values()) == n - 3
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    bad = plan(str(tmp_path / "junk.h5"), [])
    assert bad.error and bad.frames == 0


def test_frames_of_another_size_than_the_model_are_cut_to_it_and_the_checkpoint_says_how(tmp_path):
    """A 64x64 detector and a 32x32 model: with binning 2 the rank trains on the frames cut with their series header
    (which the ingest sends every rank), the labels follow, and the checkpoint records the preparation."""
    big = SimulatorConfig(frame_size=64, object_size_px=128, overlap=0.5, scans=1, seed=4)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    config = dataclasses.replace(_config(tmp_path, push.getsockopt_string(zmq.LAST_ENDPOINT)), max_tasks=1,
                                 eval=EvalConfig(enabled=False), prepare={"binning": 2},
                                 status_path=str(tmp_path / "status" / "trainer.json"))
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 1, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 1)
    source = SimulatedSource(big)
    from streamer.frames import encode_series_start

    push.send_multipart(encode_series_start(1, source.series_config(0)))
    n = 0
    for n, f in enumerate(next(iter(source.scans(Control()))), 1):
        push.send_multipart(encode_frame(ImageFrame(series=1, frame=n - 1, image=f.image, encoding="<",
                                                    position_px=f.position_px, amplitude=f.amplitude,
                                                    phase=f.phase)), copy=False)
    push.send_multipart(encode_series_end(1, n))
    ranks.join(timeout=300)
    assert not ranks.is_alive()
    push.close(linger=0)
    ctx.term()
    summary = json.loads((tmp_path / "summary-rank0.json").read_text())
    assert summary["steps"] >= n // 8 > 0 and summary["frames_received"] == n  # every frame trained on
    model_pt = sorted((tmp_path / "out" / "checkpoints").iterdir())[-1] / "model.pt"
    model, model_config = ckpt.load_model(model_pt)
    assert model_config["prepare"]["binning"] == 2 and model_config["frame_size"] == 32
    from streamer.status import read_status

    assert read_status(tmp_path / "status")["trainer"]["without_header_rank0"] == 0


def test_the_physics_loss_trains_on_unlabelled_frames_with_the_headers_probe(tmp_path):
    """No labels on the stream: with learner.loss = physics a rank trains on the measured frames alone, with the
    probe its series header describes; a scan whose header says nothing of the probe is skipped and counted."""
    from streamer.frames import encode_series_start
    from streamer.status import read_status

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    base = _config(tmp_path, push.getsockopt_string(zmq.LAST_ENDPOINT))
    config = dataclasses.replace(base, max_tasks=2, eval=EvalConfig(enabled=False),
                                 learner=dataclasses.replace(base.learner, loss="physics", strategy="der"),
                                 status_path=str(tmp_path / "status" / "trainer.json"))
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 1, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 1)
    source = SimulatedSource(SIM)
    sent = {}
    for scan, frames in enumerate(source.scans(Control())):
        series = scan + 1
        header = source.series_config(scan)
        if series == 2:  # a header without the probe: nothing to compare the predictions with
            header = {**header, "ptychosteer": {k: v for k, v in header["ptychosteer"].items()
                                                if k != "probe_diameter_px"}}
        push.send_multipart(encode_series_start(series, header))
        n = 0
        for n, f in enumerate(frames, 1):
            push.send_multipart(encode_frame(ImageFrame(series=series, frame=n - 1, image=f.image, encoding="<",
                                                        position_px=f.position_px)), copy=False)
        push.send_multipart(encode_series_end(series, n))
        sent[series] = n
    ranks.join(timeout=300)
    assert not ranks.is_alive()
    push.close(linger=0)
    ctx.term()
    summary = json.loads((tmp_path / "summary-rank0.json").read_text())
    status = read_status(tmp_path / "status")["trainer"]
    assert summary["steps"] >= sent[1] // 8 and summary["unlabelled"] == sent[1] + sent[2]
    assert status["without_probe_rank0"] == sent[2]
    assert summary["loss_last"] < summary["loss_first"]


def test_catch_up_replays_a_new_runs_recording_whose_series_ids_were_trained_before(tmp_path):
    """A trainer resumed into a new run: the recording holds series 1 and 2 again, of other armings. Compared by
    header fingerprint they are untrained, so everything is replayed; with matching fingerprints, or none
    known (an older checkpoint), the trained ids are skipped as before."""
    from streamer.frames import header_fingerprint
    from streamer.hdf5 import Recording
    from trainer.catchup import plan

    recording, _ = _record(tmp_path, scans=2)
    with Recording(recording) as rec:
        configs = {s: rec.series_config(s) for s in (1, 2)}
    assert all(configs.values())  # the headers were recorded
    ours = {s: header_fingerprint(config) for s, config in configs.items()}
    same = plan(str(recording), trained={1: ours[1]})
    assert sorted(same.indices) == [2] and not same.new_run
    unknown = plan(str(recording), trained={1: None})
    assert sorted(unknown.indices) == [2] and not unknown.new_run
    other = plan(str(recording), trained={1: "0123456789abcdef", 2: ours[2]})
    assert other.new_run and sorted(other.indices) == [1, 2] and other.ended == [1, 2]


def test_two_ranks_with_notices_train_a_restarted_detectors_reused_series_ids_in_step(tmp_path):
    """Two gloo ranks, headers on the notice endpoint (as ``launch`` wires them), frames round-robin. A second
    run numbers its series from 1 again after the first run's tasks are trained: both ranks open the ids again
    together (the decision travels in the gathered status), train them as tasks 3 and 4 in lockstep, and drop
    nothing as late."""
    from streamer.frames import encode_series_start
    from streamer.notices import NoticePublisher

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    notices = NoticePublisher(ctx, "tcp://127.0.0.1:*")
    models = ctx.socket(zmq.SUB)
    models.setsockopt(zmq.SUBSCRIBE, b"")
    models.connect(f"ipc://{tmp_path}/announce")
    config = dataclasses.replace(_config(tmp_path, push.getsockopt_string(zmq.LAST_ENDPOINT)), max_tasks=4,
                                 notice_endpoint=notices.endpoint)
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 2, config, str(tmp_path)), daemon=True)
    ranks.start()
    _wait_for_peers(push, 2)
    while notices.serve() < 2:  # both ranks subscribed to the notices
        notices._sock.poll(1000)

    def run(date):
        for scan, frames in enumerate(SimulatedSource(SIM).scans(Control())):
            series = scan + 1
            notices.start(series, encode_series_start(series, {"data_collection_date": date,
                                                               "ptychosteer": {"scan_index": scan}}))
            for i, f in enumerate(frames):
                push.send_multipart(encode_frame(ImageFrame(series=series, frame=i, image=f.image, encoding="<",
                                                            position_px=f.position_px, amplitude=f.amplitude,
                                                            phase=f.phase)), copy=False)
            push.send_multipart(encode_series_end(series, i + 1))
            notices.end(series, encode_series_end(series, i + 1))
        return i + 1

    run("2026-12-07T10:00:00Z")
    while True:  # the first run's second task is trained (its model announced)
        assert models.poll(120_000), "no model announced"
        if json.loads(models.recv())["task"] == 2:
            break
    per_scan = run("2026-12-07T11:00:00Z")
    ranks.join(timeout=300)
    assert not ranks.is_alive()
    for sock in (push, models):
        sock.close(linger=0)
    notices.close(0)
    ctx.term()
    s0, s1 = (json.loads((tmp_path / f"summary-rank{r}.json").read_text()) for r in (0, 1))
    assert s0["tasks"] == s1["tasks"] == [1, 2, 1, 2]
    assert s0["steps"] == s1["steps"] and s0["param_hash"] == s1["param_hash"]  # lockstep through the new run
    assert s0["late_for_closed_task"] == s1["late_for_closed_task"] == 0
    assert s0["frames_received"] + s1["frames_received"] == 4 * per_scan
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["series"] == {"0": 1, "1": 2, "2": 1, "3": 2} and len(metrics["rows"]) == 4
