import json
import threading

import pytest
import zmq
from click.testing import CliRunner

from ptychosteer.cli import main
from streamer.config import IngestConfig
from streamer.ingest import Ingest


def test_every_command_has_help_with_units():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in ("simulate", "ingest", "inspect", "demo", "train", "steer", "subscribe", "view", "keys", "launch",
                    "status"):
        assert command in top.output
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, result.output
    assert "[frames/s]" in runner.invoke(main, ["simulate", "--help"]).output
    assert "[s]" in runner.invoke(main, ["ingest", "--help"]).output


def test_inspect_summarises_a_recording(tmp_path):
    from streamer.config import SimulatorConfig
    from streamer.simulator import Detector

    with Detector(SimulatorConfig(endpoint="tcp://127.0.0.1:*", scans=2, frame_size=32, object_size_px=64)) as det:
        ingest = Ingest(IngestConfig(detector_endpoint=det.endpoint, output_path=str(tmp_path / "recording.h5"),
                                     train_endpoint="", live_endpoint="", max_series=2))
        ingest.start()
        thread = threading.Thread(target=ingest.run, daemon=True)
        thread.start()
        det.run()
        thread.join(timeout=60)
        ingest.close()
    runner = CliRunner()
    summary = json.loads(runner.invoke(main, ["inspect", "--json", str(tmp_path / "recording.h5")]).output)
    assert summary["frames"] == det.frames_sent and len(summary["series"]) == 2
    assert summary["labelled"] == summary["frames"]
    assert summary["families"] == {"1": "particles", "2": "cells"}
    table = runner.invoke(main, ["inspect", str(tmp_path / "recording.h5")])
    assert table.exit_code == 0 and "bitshuffle" in table.output


def test_simulate_streams_into_an_ingest(tmp_path):
    ctx = zmq.Context()
    probe = ctx.socket(zmq.PUSH)  # find a free port for the simulator to bind
    probe.bind("tcp://127.0.0.1:*")
    endpoint = probe.getsockopt_string(zmq.LAST_ENDPOINT)
    probe.close(linger=0)
    ctx.term()
    ingest = Ingest(IngestConfig(detector_endpoint=endpoint, output_path=str(tmp_path / "r.h5"), train_endpoint="",
                                 live_endpoint="", max_series=1))
    ingest.start()
    thread = threading.Thread(target=ingest.run, daemon=True)
    thread.start()
    result = CliRunner().invoke(main, ["simulate", "--endpoint", endpoint, "--scans", "1", "--frame-size", "32",
                                       "--object-size", "64", "--encoding", "lz4", "--bit-depth", "32"])
    thread.join(timeout=60)
    ingest.close()
    assert result.exit_code == 0, result.output
    assert ingest.snapshot()["persisted"] > 0
    assert f"sent {ingest.snapshot()['persisted']} frames" in result.output


@pytest.mark.parametrize("args, message", [
    (["simulate", "--overlap", "1.5"], "overlap"),
    (["simulate", "--families", "galaxies"], "unknown object families"),
    (["simulate", "--from-file", "/nonexistent.h5"], "does not exist"),
    (["ingest", "--detector", "not-an-endpoint", "--output", ""], "cannot start the ingest"),
    (["ingest", "--compression", "zip"], "zip"),
])
def test_bad_options_give_clear_errors(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output


def test_inspect_rejects_a_file_that_is_no_recording(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "other.h5")])
    assert result.exit_code == 1 and "no /entry/data group" in result.output
