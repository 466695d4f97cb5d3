import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from ptychosteer.pipeline import Pipeline, PipelineConfig, SimulatorSection, to_toml
from ptychosteer.summary import pipeline_summary
from steering.protocol import decode
from streamer.hdf5 import Recording
from streamer.status import read_status
from trainer.config import EvalConfig, ModelConfig, TrainerConfig
from trainer.learner import LearnerConfig

pytestmark = pytest.mark.integration


def tiny(workdir, scans=2, rate_hz=400.0, follow_wait_s=5.0, idle_timeout_s=60.0):
    sim = SimulatorSection(scans=scans, frame_size=32, rate_hz=rate_hz, object_size_px=64, overlap=0.75,
                           follow_wait_s=follow_wait_s)
    trainer = TrainerConfig(backend="gloo", model=ModelConfig(nconv=4, depth=2, frame_size=32),
                            learner=LearnerConfig(strategy="er", batch_size=8, replay=8, buffer_capacity=64),
                            eval=EvalConfig(enabled=True, count=8, object_size_px=64, overlap=0.75),
                            checkpoint_every_steps=0, idle_timeout_s=idle_timeout_s)
    return PipelineConfig(workdir=str(workdir), simulator=sim, trainer=trainer, nproc=2, grace_s=15)


def _running():
    """(pid, parent pid, process group) of every running process (zombies left out), from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), int(fields[1]), int(fields[2])


def _processes_in_groups(pgids):
    return [pid for pid, _, group in _running() if group in pgids]


def _descendants(pid):
    """Every running process below ``pid`` (children, theirs, ...), from /proc."""
    children = {}
    for child, parent, _ in _running():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid):
    """Running (a zombie waiting for a reaper that this container may not have does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_whole_pipeline_on_the_cpu(tmp_path):
    import dataclasses
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def gauges(text, labels=False):
        return {s.name: s.labels if labels else s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    prom = tmp_path / "node_exporter" / "ptychosteer.prom"
    pipeline = Pipeline(dataclasses.replace(tiny(tmp_path / "run"), metrics=True, metrics_textfile=str(prom)))
    result = {}
    runner = threading.Thread(target=lambda: result.update(code=pipeline.run()), daemon=True)
    runner.start()
    feed = pipeline.wait_endpoint("feed", timeout_s=120)  # steering reports the port it bound
    assert feed and feed.startswith("tcp://127.0.0.1:") and not feed.endswith(":0"), feed
    text = urllib.request.urlopen(pipeline.wait_endpoint("metrics", timeout_s=10), timeout=30).read().decode()
    scraped = gauges(text)  # Prometheus's view of the running pipeline: the stages started so far
    assert "ptychosteer_ingest_status_age_seconds" in scraped and "ptychosteer_steering_status_age_seconds" in scraped
    # text values: the labels of each stage's info metric
    assert gauges(text, labels=True)["ptychosteer_steering_info"]["feed_endpoint"] == feed
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"steer.")
    sub.connect(feed)  # before the simulator's go line: it starts only once steering sees its subscriber
    received = []
    while runner.is_alive() or sub.poll(0):
        if sub.poll(200):
            received.append(decode(sub.recv_multipart()))
    sub.close(linger=0)
    ctx.term()
    assert result["code"] == 0, pipeline.failure
    st = read_status(tmp_path / "run" / "status")
    assert st["ingest"]["persisted"] == st["simulator"]["frames_sent"] > 0
    with Recording(tmp_path / "run" / "recording.h5") as rec:
        assert len(rec) == st["simulator"]["frames_sent"]
    assert st["trainer"]["world_size"] == 2 and st["trainer"]["steps"] > 0 and st["trainer"]["done"]
    assert st["trainer"]["tasks"] == [1, 2]
    assert "error" not in st["trainer"]["catch_up"], st["trainer"]["catch_up"]  # a fresh recording is no error
    # reconstructed live, or (when the first model arrives after the last scan's frames, all of which then miss
    # their deadline) later from the backfill: either way with a trained model
    steered = st["steering"]
    assert steered["model_version"] >= 1 and steered.get("reconstructed", 0) + steered.get("backfilled", 0) > 0, steered
    assert any(d.kind != "continue" for d in received), [d.kind for d in received]
    assert st["simulator"]["actions"], "the simulator never acted on a decision"
    assert (tmp_path / "run" / "train" / "metrics.json").exists()
    final = gauges(prom.read_text())  # written once more when launch stopped the exporter: the final counters
    assert final["ptychosteer_trainer_steps"] == st["trainer"]["steps"] and final["ptychosteer_trainer_done"] == 1
    assert not _processes_in_groups({p.pid for p in pipeline.procs.values()})
    from ptychosteer.demo import compare_with_naive  # "vs naive when asked"

    comparison = compare_with_naive(pipeline.config)
    assert 0 < comparison["naive_average_error"] < 10 and 0 < comparison["er_average_error"] < 10
    assert set(comparison["naive_per_task_error"]) == {0, 1}


def test_without_ground_truth_the_labeler_feeds_the_trainers(tmp_path):
    """[labeler] enabled: the simulator sends no labels; each series is reconstructed from the recording as it
    completes and the trainers learn from those labels; steering gets their models."""
    import dataclasses

    from ptychosteer.pipeline import LabelerSection

    config = dataclasses.replace(tiny(tmp_path / "run", scans=2),
                                 labeler=LabelerSection(enabled=True, algorithm="lsqml", iterations=30,
                                                        steps_per_task=20))  # 300 (the default): 65 s
    pipeline = Pipeline(config)
    code = pipeline.run()
    assert code == 0, pipeline.failure
    st = read_status(tmp_path / "run" / "status")
    with Recording(tmp_path / "run" / "recording.h5") as rec:
        assert not rec.labelled().any()  # no ground truth reached the recording (or anything that trains)
    assert st["labeler"]["labelled"] == [1, 2] and st["labeler"]["frames_dropped"] == 0
    assert st["labeler"]["frames_sent"] == st["simulator"]["frames_sent"]
    assert st["trainer"]["tasks"] == [1, 2] and st["trainer"]["unlabelled_rank0"] == 0, st["trainer"]
    # the trainers held each labelled scan until the next one's labels, and the labeler did not fight them for
    # the cores: one thread
    assert "hold_task = true" in (tmp_path / "run" / "trainer.toml").read_text()
    assert st["labeler"]["threads"] == 1
    assert st["steering"]["model_version"] >= 1  # the first model comes a scan late: labels need a whole scan
    summary = pipeline_summary(tmp_path / "run")
    assert summary["tasks"] == {"1": "evaluated", "2": "evaluated"}  # evaluation alone uses the truth


def _launch_until_training(tmp_path, launcher="spawn"):
    """``ptychosteer launch`` of a 50-scan pipeline, returned once 50 frames are persisted and the trainer has
    stepped: (the launch process, the stages' pids, the status folder)."""
    config = tiny(tmp_path / "run", scans=50, rate_hz=200.0)
    (tmp_path / "pipeline.toml").write_text(
        f'workdir = "{config.workdir}"\nnproc = 2\ngrace_s = 15.0\nlauncher = "{launcher}"\n\n'
        + to_toml(config.simulator, "simulator")
        + to_toml(config.trainer, "trainer"))
    proc = subprocess.Popen([sys.executable, "-m", "ptychosteer.cli", "launch", "--config", str(tmp_path / "pipeline.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    status = tmp_path / "run" / "status"
    for _ in proc.stdout:  # progress lines while the pipeline runs
        st = read_status(status) if status.exists() else {}
        if st.get("ingest", {}).get("persisted", 0) >= 50 and st.get("trainer", {}).get("steps", 0) > 0:
            break
    return proc, {body["pid"] for body in read_status(status).values()}, status


def test_launch_with_curve_closes_the_loop_and_the_feed_is_closed_to_strangers(tmp_path):
    """curve = true: feed and announcements on CURVE with keys made in the workdir; the simulator (authorised)
    still acts on decisions, a subscriber whose key is in curve_clients hears them, a plaintext one does not."""
    import dataclasses

    import zmq.auth

    from streamer.netsec import curve_client

    (tmp_path / "user").mkdir()
    zmq.auth.create_certificates(str(tmp_path / "user"), "beamline")
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "beamline.key").write_bytes((tmp_path / "user" / "beamline.key").read_bytes())
    config = dataclasses.replace(tiny(tmp_path / "run"), curve=True, curve_clients=str(tmp_path / "allowed"))
    pipeline = Pipeline(config)
    result = {}
    runner = threading.Thread(target=lambda: result.update(code=pipeline.run()), daemon=True)
    runner.start()
    feed = pipeline.wait_endpoint("feed", timeout_s=120)
    ctx = zmq.Context()
    user, plain = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    curve_client(user, tmp_path / "run" / "keys" / "feed.key", tmp_path / "user" / "beamline.key_secret")
    for sock in (user, plain):
        sock.setsockopt(zmq.SUBSCRIBE, b"steer.")
        sock.connect(feed)
    heard = {"user": 0, "plain": 0}
    while runner.is_alive() or user.poll(0) or plain.poll(0):
        for name, sock in (("user", user), ("plain", plain)):
            while sock.poll(50):
                sock.recv_multipart()
                heard[name] += 1
    user.close(linger=0)
    plain.close(linger=0)
    ctx.term()
    assert result["code"] == 0, pipeline.failure
    st = read_status(tmp_path / "run" / "status")
    assert st["steering"]["model_version"] >= 1  # the announcements reached steering over CURVE
    assert st["simulator"]["actions"], "the simulator never acted on a decision"
    assert heard["user"] > 0 and heard["plain"] == 0, heard


def test_sigterm_stops_everything_and_leaves_the_recording_intact(tmp_path):
    proc, stages, status = _launch_until_training(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert not _processes_in_groups(stages | {proc.pid})
    for pid in stages:  # the stage processes themselves (the trainer's is its rank 0) are gone too
        assert not _alive(pid), f"stage process {pid} survived"
    with Recording(tmp_path / "run" / "recording.h5") as rec:
        persisted = json.loads((status / "ingest.json").read_text())["persisted"]
        assert len(rec) == persisted >= 50


@pytest.mark.parametrize("launcher", ["spawn", "torchrun"])
def test_a_killed_supervisor_leaves_no_stage_behind(tmp_path, launcher):
    """kill -9 of launch: every stage notices (parent-death signal), stops as on SIGTERM, and is gone; under
    torchrun too, whose agent stands between the supervisor and the trainer ranks."""
    import time

    proc, stages, _ = _launch_until_training(tmp_path, launcher)
    assert len(stages) == 4
    below = _descendants(proc.pid)  # the stages, torchrun's agent and every rank
    assert stages <= below and len(below) >= 5, (stages, below)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    left = lambda: _processes_in_groups(stages) + [p for p in below if _alive(p)]  # noqa: E731
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and left():
        time.sleep(0.2)  # polling /proc for the stages' exits
    assert not left(), "stages outlived their supervisor"
    with Recording(tmp_path / "run" / "recording.h5") as rec:  # the ingest stopped as on SIGTERM: file intact
        assert len(rec) >= 50


def _kill_trainer_when_training(pipeline, killed):
    """Watch the status files; SIGKILL the trainer's process group once it has trained (a crash, not a stop)."""
    status = Path(pipeline.config.workdir) / "status"
    while not killed.is_set() and not pipeline.stop_event.is_set():
        st = read_status(status) if status.exists() else {}
        proc = pipeline.procs.get("trainer")
        if proc is not None and st.get("trainer", {}).get("version", 0) >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            killed.set()
            return
        pipeline.stop_event.wait(0.1)


@pytest.mark.parametrize("policy", ["restart", "shutdown"])
def test_a_dead_trainer_is_restarted_from_its_checkpoint_or_shuts_the_pipeline_down(tmp_path, policy):
    import dataclasses

    config = dataclasses.replace(tiny(tmp_path / "run", scans=3, rate_hz=200.0, idle_timeout_s=8.0),
                                 on_failure=policy)
    pipeline = Pipeline(config)
    killed = threading.Event()
    watcher = threading.Thread(target=_kill_trainer_when_training, args=(pipeline, killed), daemon=True)
    watcher.start()
    code = pipeline.run()
    watcher.join(timeout=10)
    assert killed.is_set()
    if policy == "restart":
        assert code == 0, pipeline.failure
        assert pipeline.restarts == 1
        log = (tmp_path / "run" / "logs" / "trainer.log").read_text()
        assert "resumed from" in log, log[-3000:]  # the second trainer continued from the newest checkpoint
        trainer = read_status(tmp_path / "run" / "status")["trainer"]
        assert trainer["done"] and trainer["version"] >= 1, (trainer, log[-3000:])
        # frames streamed while no trainer was up were dropped for training, not for the recording: the second
        # trainer caught up from the recording, so every series is trained and evaluated, by its id
        assert trainer["tasks"] == [1, 2, 3], (trainer, log[-3000:])
        assert "error" not in trainer["catch_up"], trainer["catch_up"]
        summary = pipeline_summary(tmp_path / "run")
        assert summary["tasks"] == {"1": "evaluated", "2": "evaluated", "3": "evaluated"}, summary
        assert len(summary["per_task_error"]) == 3
    else:
        assert code == 1
        assert "trainer exited with status -9" in pipeline.failure and "last log lines" in pipeline.failure
    assert not _processes_in_groups({p.pid for p in pipeline.procs.values()})


def test_no_stage_is_handed_a_port_that_someone_else_can_take_first(tmp_path, monkeypatch):
    """Just before each stage starts, bind every port named in its command line (and its config file) that can
    still be bound, as another process on a busy machine might. A supervisor that hands out port numbers nobody
    holds (bind, read, close, pass on) loses them here; one whose stages bind port 0 themselves and report what
    they hold does not."""
    import re
    import socket

    squatted: list[socket.socket] = []
    real_start = Pipeline._start

    def start_after_squatting(self, stage, cmd):
        text = " ".join(cmd)
        if "--config" in cmd:
            text += Path(cmd[cmd.index("--config") + 1]).read_text()
        for host, port in re.findall(r"tcp://([0-9.]+):([0-9]+)", text):
            if int(port) == 0:
                continue
            s = socket.socket()
            try:
                s.bind((host, int(port)))
                s.listen()
            except OSError:  # held by the stage that serves it, as it must be
                s.close()
                continue
            squatted.append(s)
        real_start(self, stage, cmd)

    monkeypatch.setattr(Pipeline, "_start", start_after_squatting)
    pipeline = Pipeline(tiny(tmp_path / "run", scans=1))
    try:
        code = pipeline.run()
    finally:
        ports = [s.getsockname()[1] for s in squatted]
        for s in squatted:
            s.close()
    assert not ports, f"stages were handed ports {ports} that nobody held"
    assert code == 0, pipeline.failure
    assert set(pipeline.endpoints) == {"detector", "train", "notice", "live", "announce", "feed"}
    st = read_status(tmp_path / "run" / "status")
    assert st["ingest"]["persisted"] == st["simulator"]["frames_sent"] > 0


def test_a_port_in_use_is_reported_before_anything_starts(tmp_path):
    import dataclasses
    import socket

    from ptychosteer.pipeline import Ports

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = dataclasses.replace(tiny(tmp_path / "run"), ports=Ports(feed=port))
        with pytest.raises(ValueError, match=f"port {port} for feed"):
            Pipeline(config)
    assert not (tmp_path / "run" / "logs").exists()


def test_status_command_shows_every_stage(tmp_path):
    from click.testing import CliRunner

    from ptychosteer.cli import main
    from streamer.status import write_status

    write_status(tmp_path / "status" / "ingest.json", "ingest", {"received": 12, "persisted": 12})
    write_status(tmp_path / "status" / "trainer.json", "trainer", {"steps": 3, "tasks": [1]})
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 0 and "received=12" in result.output and "steps=3" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["status", "--json", str(tmp_path)]).output)
    assert as_json["trainer"]["tasks"] == [1]
    assert CliRunner().invoke(main, ["status", str(tmp_path / "status")]).exit_code == 1


def test_a_metrics_exporter_that_cannot_start_is_reported_and_the_pipeline_goes_on(tmp_path, caplog):
    """Monitoring never stops an experiment: an unwritable textfile ends the exporter at once, launch logs it and
    starts the stages."""
    import dataclasses
    import logging

    (tmp_path / "blocker").write_text("")  # a file where the textfile's folder would be
    config = dataclasses.replace(tiny(tmp_path / "run"), metrics_textfile=str(tmp_path / "blocker" / "p.prom"))
    with caplog.at_level(logging.ERROR):
        assert Pipeline(config).run() == 0
    assert "metrics exited with status 1" in caplog.text and "goes on without it" in caplog.text
    st = read_status(tmp_path / "run" / "status")
    assert st["trainer"]["done"] and st["trainer"]["tasks"] == [1, 2]
