import json
import threading

import pytest
import zmq
from click.testing import CliRunner

from ptychosteer.cli import main
from streamer.config import SimulatorConfig
from streamer.dectris import ImageFrame
from streamer.frames import encode_frame, encode_series_end, encode_series_start
from streamer.simulator import Control, SimulatedSource

from .test_trainer_stream import _wait_for_peers

pytestmark = pytest.mark.integration


def _feeder(sock, series_ids, seed, armed=None, then=(), between=None):
    """Frames of simulated scans under ``series_ids``; with ``armed`` (an arming date), each after its series
    header, on the same socket (one rank gets them all, in order); ``then``: more such runs, (ids, seed, armed),
    each once ``between()`` returns."""

    def feed():
        _wait_for_peers(sock, 1)
        for run, (ids, run_seed, date) in enumerate([(series_ids, seed, armed), *then]):
            if run and between is not None:
                between()
            sim = SimulatorConfig(frame_size=64, object_size_px=96, overlap=0.75, scans=len(ids), seed=run_seed)
            for series, frames in zip(ids, SimulatedSource(sim).scans(Control())):
                if date:
                    sock.send_multipart(encode_series_start(series, {"data_collection_date": date,
                                                                     "x_pixels_in_detector": 64,
                                                                     "y_pixels_in_detector": 64}))
                for i, f in enumerate(frames):
                    sock.send_multipart(encode_frame(ImageFrame(series=series, frame=i, image=f.image,
                                                                encoding="<", amplitude=f.amplitude,
                                                                phase=f.phase)), copy=False)
                sock.send_multipart(encode_series_end(series, i + 1))

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def _train(tmp_path, endpoint, *extra):
    args = ["train", "--config", "configs/train-cpu.toml", "--stream", endpoint, "--announce", "",
            "--out-dir", str(tmp_path / "run"), "--no-eval", "--idle-timeout", "20", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.mark.parametrize("extra", [(), pytest.param(("--backend", "nccl", "--buffer-comm", "cupy"),
                                                    marks=pytest.mark.gpu, id="cuda-cupy")])
def test_train_cli_runs_checkpoints_and_resumes(tmp_path, extra):
    if extra:
        pytest.importorskip("cupy")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    feeder = _feeder(push, [1, 2], seed=0)
    first = _train(tmp_path, endpoint, "--max-tasks", "2", "--strategy", "derpp", *extra)
    feeder.join(timeout=30)
    assert first["tasks"] == [1, 2] and first["steps"] >= 2
    assert (tmp_path / "run" / "checkpoints" / f"v{first['version']:06d}" / "MANIFEST.json").exists()

    feeder = _feeder(push, [3], seed=1)
    second = _train(tmp_path, endpoint, "--max-tasks", "3", "--strategy", "derpp", "--resume", *extra)
    feeder.join(timeout=30)
    push.close(linger=0)
    ctx.term()
    assert second["tasks"] == [1, 2, 3]  # the tasks done before the restart came back with the checkpoint
    assert second["steps"] > first["steps"]  # the step count continued
    assert second["version"] > first["version"]
    manifest = lambda run: json.loads((tmp_path / "run" / "checkpoints" / f"v{run['version']:06d}"  # noqa: E731
                                       / "MANIFEST.json").read_text())
    before, after = manifest(first)["task_floors"], manifest(second)["task_floors"]
    # the buffered samples' task weights came back: the tasks before the restart keep their floors
    assert len(before) == 2 and after[:2] == before and len(after) == 3 and min(after) > 0


def test_a_trainer_resumed_into_a_new_run_trains_the_series_ids_it_trained_before(tmp_path):
    """A new beamtime: the detector numbers its series from 1 again. The resumed trainer used to take them for
    the series it had trained and drop every frame as late; the headers' arming dates tell the runs apart."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    feeder = _feeder(push, [1, 2], seed=0, armed="2026-12-07T10:00:00Z")
    first = _train(tmp_path, endpoint, "--max-tasks", "2")
    feeder.join(timeout=30)
    assert first["tasks"] == [1, 2]
    feeder = _feeder(push, [1, 2], seed=1, armed="2026-12-08T10:00:00Z")
    second = _train(tmp_path, endpoint, "--max-tasks", "4", "--resume")
    feeder.join(timeout=30)
    push.close(linger=0)
    ctx.term()
    assert second["tasks"] == [1, 2, 1, 2] and second["late_for_closed_task"] == 0, second
    assert second["steps"] > first["steps"]
    manifest = json.loads((tmp_path / "run" / "checkpoints" / f"v{second['version']:06d}" / "MANIFEST.json")
                          .read_text())
    assert manifest["run_first_task"] == 2
    headers = manifest["task_headers"]  # each task's arming: the first run's twice, then the second run's
    assert all(headers) and headers[0] == headers[1] != headers[2] == headers[3]


def test_a_running_trainer_trains_a_restarted_detectors_series_ids_again(tmp_path):
    """The detector (behind a restarted ingest) numbers from 1 again while the trainer runs, which has trained
    the last run's series (a restart takes longer than the trainer's last task): a new run."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    models = ctx.socket(zmq.SUB)
    models.setsockopt(zmq.SUBSCRIBE, b"")
    models.connect(f"ipc://{tmp_path}/announce")

    def after_the_first_run():  # the model announced at the end of task 2
        while True:
            assert models.poll(120_000), "no model announced"
            if json.loads(models.recv())["task"] == 2:
                return

    feeder = _feeder(push, [1, 2], seed=0, armed="2026-12-07T10:00:00Z", then=[([1, 2], 1, "2026-12-07T11:00:00Z")],
                     between=after_the_first_run)
    summary = _train(tmp_path, endpoint, "--max-tasks", "4", "--announce", f"ipc://{tmp_path}/announce")
    models.close(linger=0)
    feeder.join(timeout=30)
    push.close(linger=0)
    ctx.term()
    assert summary["tasks"] == [1, 2, 1, 2] and summary["late_for_closed_task"] == 0, summary


def test_train_cli_rejects_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[trainer.learner]\nbuffer_capacity = 0\n")
    result = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "buffer_capacity" in result.output


def test_train_cli_rejects_cupy_buffer_on_gloo(tmp_path):
    result = CliRunner().invoke(main, ["train", "--config", "configs/train-cpu.toml", "--buffer-comm", "cupy"])
    assert result.exit_code == 2 and "buffer_comm cupy needs CUDA ranks" in result.output


def test_train_cli_rejects_cupy_buffer_without_cuda_before_starting(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    args = ["train", "--config", "configs/train-cpu.toml", "--backend", "auto", "--buffer-comm", "cupy",
            "--out-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "no CUDA device" in result.output
    assert not (tmp_path / "run").exists()  # refused before any rank started


def test_a_wrong_newest_checkpoint_is_skipped_on_resume_so_a_restart_cannot_loop(tmp_path):
    """The restart that launch performs (``train --resume``) used to die on a loadable but wrong newest
    checkpoint (KeyError) and be restarted into the same failure: now it resumes from the previous version."""
    import torch

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    feeder = _feeder(push, [1, 2], seed=0)
    first = _train(tmp_path, endpoint, "--max-tasks", "2")
    feeder.join(timeout=30)
    newest = tmp_path / "run" / "checkpoints" / f"v{first['version']:06d}" / "model.pt"
    torch.save({"model_config": {"nconv": 4}}, newest)  # loadable, but no model, optimizer, step
    feeder = _feeder(push, [3], seed=1)
    second = _train(tmp_path, endpoint, "--max-tasks", "2", "--resume")
    feeder.join(timeout=30)
    push.close(linger=0)
    ctx.term()
    assert second["tasks"] == [1, 3]  # resumed from the version before the wrong one (task 1 done)


def test_a_trainer_killed_mid_task_resumes_with_the_tasks_staged_samples(tmp_path):
    """``insert_at_task_end``: a task's samples wait outside the buffer until the task ends. A trainer killed
    mid-task (SIGKILL, as a crash) and resumed from its periodic checkpoint still inserts the samples staged
    before that checkpoint: they are in the checkpoint's buffer shard."""
    import signal
    import subprocess
    import sys

    from trainer import checkpoint as ckpt

    (tmp_path / "train.toml").write_text(
        '[trainer]\nbackend = "gloo"\ncheckpoint_every_steps = 4\nmax_tasks = 1\nidle_timeout_s = 20.0\n'
        '[trainer.model]\nnconv = 4\ndepth = 2\nframe_size = 32\n'
        '[trainer.learner]\nstrategy = "er"\nbatch_size = 8\nreplay = 8\nbuffer_capacity = 1000\n'
        'insert_at_task_end = true\ntask_weight = "floor"\n[trainer.eval]\nenabled = false\n')
    sim = SimulatorConfig(frame_size=32, object_size_px=80, overlap=0.75, scans=1, seed=0)
    frames = list(next(iter(SimulatedSource(sim).scans(Control()))))
    first_part = 96
    assert len(frames) - first_part >= 48

    def send(sock, part):
        for i, f in part:
            sock.send_multipart(encode_frame(ImageFrame(series=1, frame=i, image=f.image, encoding="<",
                                                        amplitude=f.amplitude, phase=f.phase)), copy=False)

    ctx = zmq.Context()
    push, models = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    models.setsockopt(zmq.SUBSCRIBE, b"")
    models.connect(f"ipc://{tmp_path}/announce")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ptychosteer.cli", "train", "--config", str(tmp_path / "train.toml"),
                             "--stream", endpoint, "--announce", f"ipc://{tmp_path}/announce", "--out-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_peers(push, 1)
        send(push, list(enumerate(frames))[:first_part])
        staged = 0
        while staged < 32:  # checkpoints of the open task, each with what the task has staged so far
            assert models.poll(120_000), "no checkpoint announced"
            version = json.loads(models.recv())["version"]
            shard = ckpt.load_shard(run / "checkpoints" / f"v{version:06d}", 0)
            assert len(shard["data"]["x"]) == 0  # nothing enters the buffer before the task ends
            staged = len(shard["staged"]["rows"]["x"])
        proc.send_signal(signal.SIGKILL)  # a crash: nothing more is written
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    newest = ckpt.latest_version(run / "checkpoints")
    staged = len(ckpt.load_shard(run / "checkpoints" / f"v{newest:06d}", 0)["staged"]["rows"]["x"])

    def rest():
        _wait_for_peers(push, 1)
        send(push, list(enumerate(frames))[first_part:])
        push.send_multipart(encode_series_end(1, len(frames)))

    feeder = threading.Thread(target=rest, daemon=True)
    feeder.start()
    resumed = _train(tmp_path, endpoint, "--config", str(tmp_path / "train.toml"), "--resume")
    feeder.join(timeout=30)
    models.close(linger=0)
    push.close(linger=0)
    ctx.term()
    assert resumed["tasks"] == [1]
    buffered = len(ckpt.load_shard(run / "checkpoints" / f"v{resumed['version']:06d}", 0)["data"]["x"])
    rest_count = len(frames) - first_part
    # the resumed run trained at most the rest of the scan: more rows than that came from the checkpoint
    assert buffered > rest_count and buffered >= staged + rest_count - 8, (buffered, staged, rest_count)
