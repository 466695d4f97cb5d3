"""The labeler stage: labels from iterative reconstructions of the recording, for frames that carry none."""

import json
import threading

import numpy as np
import pytest
import zmq

from streamer.config import IngestConfig, SimulatorConfig
from streamer.frames import Frame, SeriesEndNotice, SeriesStartNotice, decode_message
from streamer.hdf5 import Recording
from streamer.physics import illuminated, make_probe
from streamer.simulator import Control, Detector, SimulatedSource
from trainer.distributed import spawn_local
from trainer.iterative import EngineConfig
from trainer.labeler import Labeler, LabelerConfig

from .helpers import running_ingest
from .test_trainer_stream import SIM, _config
from .train_workers import train_rank

pytestmark = pytest.mark.integration


def _record_without_labels(tmp_path):
    ctx = zmq.Context()
    sim = SimulatorConfig(**{**SIM.__dict__, "endpoint": "tcp://127.0.0.1:*", "linger_ms": 5000,
                             "send_labels": False})
    with Detector(sim, context=ctx) as det:
        config = IngestConfig(detector_endpoint=det.endpoint, output_path=str(tmp_path / "rec.h5"),
                              train_endpoint="", live_endpoint="", max_series=sim.scans, stats_interval_s=60)
        with running_ingest(config, ctx) as (ingest, thread):
            det.run()
            thread.join(timeout=60)
    ctx.term()
    with Recording(tmp_path / "rec.h5") as rec:
        assert not rec.labelled().any()  # nothing to learn from but the frames
    return str(tmp_path / "rec.h5")


def test_the_labeler_labels_every_frame_from_the_reconstruction_close_to_the_truth(tmp_path):
    recording = _record_without_labels(tmp_path)
    labeler = Labeler(LabelerConfig(recording=recording, endpoint="tcp://127.0.0.1:*", max_series=2,
                                    engine=EngineConfig(algorithm="lsqml", iterations=60)))
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(labeler.endpoint)
    thread = threading.Thread(target=labeler.run, daemon=True)
    thread.start()
    frames, ends, starts = [], [], []
    while len(ends) < 2:
        assert pull.poll(120_000), "the labeler sent nothing"
        msg = decode_message(pull.recv_multipart())
        (ends if isinstance(msg, SeriesEndNotice) else starts if isinstance(msg, SeriesStartNotice)
         else frames).append(msg)
    thread.join(timeout=30)
    labeler.close()
    pull.close(linger=0)
    ctx.term()
    truth = [f for scan in SimulatedSource(SIM).scans(Control()) for f in scan]
    assert len(frames) == len(truth) and all(isinstance(f, Frame) and f.labelled for f in frames)
    assert [e.scan for e in ends] == [1, 2] and labeler.counters["frames_dropped"] == 0
    assert [s.scan for s in starts] == [1, 2]  # each series' header first: the trainers cut frames with it
    assert starts[0].config["x_pixels_in_detector"] == SIM.frame_size
    region = illuminated(make_probe(SIM.frame_size, SIM.probe_diameter, SIM.probe_curvature_rad))
    for series in (1, 2):
        mine = [(f, t) for f, t in zip(frames, truth) if f.scan == series]
        got = np.stack([f.amplitude * np.exp(1j * f.phase) for f, _ in mine])
        true = np.stack([t.amplitude * np.exp(1j * t.phase) for _, t in mine])
        got = got * np.exp(-1j * np.angle(np.sum(got[:, region] * np.conj(true[:, region]))))  # one global phase
        err = (np.abs(np.abs(got) - np.abs(true))[:, region].mean()
               + np.abs(np.angle(got * np.conj(true)))[:, region].mean())
        amp, phase = np.abs(true)[:, region], np.angle(true)[:, region]
        floor = np.abs(amp - np.median(amp)).mean() + np.abs(phase - np.median(phase)).mean()  # constant guess
        assert err < 0.3 * floor, (series, err, floor)


def test_a_trainer_fed_by_the_labeler_learns_every_series_for_at_least_its_steps(tmp_path):
    recording = _record_without_labels(tmp_path)
    labeler = Labeler(LabelerConfig(recording=recording, endpoint="tcp://127.0.0.1:*", max_series=2,
                                    engine=EngineConfig(algorithm="lsqml", iterations=30)))
    config = _config(tmp_path, labeler.endpoint, min_steps_per_task=40)  # the trainer's stream is the labeler
    ranks = threading.Thread(target=spawn_local, args=(train_rank, 1, config, str(tmp_path)), daemon=True)
    ranks.start()
    try:
        while labeler.trainer_peers() < 1:  # its own socket monitor: the rank connected
            assert labeler._monitor.poll(60_000), "the trainer rank did not connect"
        labeler.run()
        ranks.join(timeout=300)
    finally:
        labeler.close()
    assert not ranks.is_alive()
    summary = json.loads((tmp_path / "summary-rank0.json").read_text())
    assert summary["tasks"] == [1, 2] and summary["unlabelled"] == 0
    # a scan's labels arrive in one burst: without min_steps_per_task each task would get one pass (about 10
    # steps of 8 of its 81 frames); with it, the trainer keeps revisiting the task's window
    assert summary["steps"] >= 2 * 40
