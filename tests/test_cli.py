import datetime
import json
import threading
import time
from typing import Any

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
                    "status", "reconstruct", "label"):
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
    from streamer.hdf5 import Recording

    # each arming is dated, as a detector's configuration is: what tells one run's series 1 from another's
    with Recording(tmp_path / "recording.h5") as rec:
        dates = [rec.series_config(s)["data_collection_date"] for s in (1, 2)]
    assert dates[0] < dates[1] and all(datetime.datetime.fromisoformat(d).tzinfo is not None for d in dates)


def test_simulate_streams_into_an_ingest(tmp_path):
    """The simulator binds port 0 and reports what it got in its status file; the ingest connects to that."""
    status = tmp_path / "simulator.json"
    result = {}

    def ingest_when_bound() -> None:
        deadline = time.monotonic() + 60
        while not (status.exists() and json.loads(status.read_text()).get("endpoint")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)  # polling a status file for the simulator's report, as launch does
        endpoint = json.loads(status.read_text())["endpoint"]
        ingest = Ingest(IngestConfig(detector_endpoint=endpoint, output_path=str(tmp_path / "r.h5"),
                                     train_endpoint="", live_endpoint="", max_series=1))
        with ingest:
            ingest.run()
        result["snapshot"] = ingest.snapshot()

    thread = threading.Thread(target=ingest_when_bound, daemon=True)
    thread.start()
    out = CliRunner().invoke(main, ["simulate", "--endpoint", "tcp://127.0.0.1:0", "--scans", "1", "--frame-size",
                                    "32", "--object-size", "64", "--encoding", "lz4", "--bit-depth", "32",
                                    "--status-file", str(status)])
    thread.join(timeout=60)
    assert out.exit_code == 0, out.output
    assert json.loads(status.read_text())["endpoint"].startswith("tcp://127.0.0.1:")
    assert result["snapshot"]["persisted"] > 0
    assert f"sent {result['snapshot']['persisted']} frames" in out.output


def _on_a_taken_port(args: list[str]) -> Any:
    """Run the command with ``{taken}`` in ``args`` replaced by an endpoint another socket holds."""
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PULL)
    holder.bind("tcp://127.0.0.1:0")
    taken = holder.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        return CliRunner().invoke(main, [a.replace("{taken}", taken) for a in args])
    finally:
        holder.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("args, message", [
    (["simulate", "--endpoint", "{taken}", "--scans", "1", "--frame-size", "32", "--object-size", "64"],
     "cannot bind the detector endpoint"),
    (["steer", "--live", "tcp://127.0.0.1:1", "--models", "", "--feed", "{taken}", "--out-dir", "{tmp}"],
     "cannot start steering"),
    (["ingest", "--detector", "tcp://127.0.0.1:1", "--output", "", "--train-endpoint", "{taken}", "--live-endpoint",
      ""], "cannot start the ingest: cannot bind"),  # it used to hang: the failed socket blocked the context
    (["train", "--stream", "tcp://127.0.0.1:1", "--announce", "{taken}", "--out-dir", "{tmp}", "--no-eval"],
     "cannot start the trainer: the announce endpoint"),  # it used to be a traceback from inside rank 0
])
def test_a_stage_on_a_taken_port_is_one_clear_error_and_exit_status_2(tmp_path, args, message):
    out = _on_a_taken_port([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert out.exit_code == 2 and message in out.output, out.output


def test_simulate_waits_for_its_go_line(tmp_path):
    """--wait-for-go: nothing is sent before the go line; a closed stdin before it sends nothing and says so."""
    out = CliRunner().invoke(main, ["simulate", "--endpoint", "tcp://127.0.0.1:0", "--scans", "1", "--frame-size",
                                    "32", "--object-size", "64", "--wait-for-go"], input="")
    assert out.exit_code == 1 and "before the go line" in out.output, out.output
    bad = CliRunner().invoke(main, ["simulate", "--endpoint", "tcp://127.0.0.1:0", "--scans", "1", "--frame-size",
                                    "32", "--object-size", "64", "--wait-for-go"], input="[1, 2]\n")
    assert bad.exit_code == 1 and "bad go line" in bad.output, bad.output


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


@pytest.mark.parametrize("command, option", [("subscribe", "--server-key"), ("subscribe", "--client-cert"),
                                             ("simulate", "--follow-server-key"), ("simulate", "--follow-client-cert")])
def test_curve_options_come_in_pairs(tmp_path, command, option):
    key = tmp_path / "k.key"
    key.write_text("")
    args = ["subscribe", "tcp://127.0.0.1:1", "--count", "1"] if command == "subscribe" else \
        ["simulate", "--endpoint", "tcp://127.0.0.1:0", "--follow", "tcp://127.0.0.1:1"]
    result = CliRunner().invoke(main, args + [option, str(key)])
    assert result.exit_code == 2 and "CURVE needs both" in result.output, result.output


def test_subscribe_to_a_bad_endpoint_or_with_unreadable_certificates_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["subscribe", "tcp://no-port-here", "--count", "1"])
    assert result.exit_code == 1 and "cannot subscribe to tcp://no-port-here: Invalid argument" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback
    result = CliRunner().invoke(main, ["subscribe", "ipc://" + str(tmp_path / "feed"), "--count", "1",
                                       "--server-key", str(tmp_path / "missing.key"),
                                       "--client-cert", str(tmp_path / "missing.key_secret")])
    assert result.exit_code == 1 and "cannot subscribe" in result.output and "missing.key" in result.output


@pytest.mark.parametrize("toml, key", [
    ("[ports]\nfeed = -1\n", "feed = -1"),
    ("[ports]\nlive = 70000\n", "live = 70000"),
    ("[simulator]\nscans = -2\n", "scans"),
    ("[simulator]\nscans = 0\n", "scans"),
    ("[simulator]\nfamilies = [1, 2]\n", "families"),
    ("[simulator]\nrate_hz = -1.0\n", "rate_hz"),
    ("[simulator]\noverlap = 1.5\n", "overlap"),
    ("grace_s = -5.0\n", "grace_s"),
    ("startup_timeout_s = -1.0\n", "startup_timeout_s"),
    ("max_restarts = -1\n", "max_restarts"),
    ("steering_max_lag_ms = 0.0\n", "steering_max_lag_ms"),
    ("steering_keep_ended_scans = 0\n", "steering_keep_ended_scans"),
    ("[trainer]\nbackend = \"nccl\"\n", "CUDA"),
    ("[trainer.eval]\noverlap = 2.0\n", "overlap"),
    ('workdir = "/proc/ptychosteer-not-writable"\n', "not a writable folder"),
])
def test_launch_checks_every_key_before_anything_starts(tmp_path, monkeypatch, toml, key):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    config = tmp_path / "bad.toml"
    config.write_text((f'workdir = "{tmp_path / "run"}"\n' if "workdir" not in toml else "") + toml)
    result = CliRunner().invoke(main, ["launch", "--config", str(config)])
    assert result.exit_code in (1, 2) and key in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "logs").exists()


@pytest.mark.parametrize("option, value, message", [("--max-lag-ms", "0", "max_lag_ms"),
                                                    ("--batch-max", "0", "batch_max"),
                                                    ("--backfill-mb", "-1", "backfill_mb"),
                                                    ("--keep-ended-scans", "0", "keep_ended_scans")])
def test_steer_refuses_a_budget_it_cannot_keep(tmp_path, option, value, message):
    result = CliRunner().invoke(main, ["steer", "--live", "tcp://127.0.0.1:1", "--models", "", "--feed",
                                       "tcp://127.0.0.1:0", "--out-dir", str(tmp_path), option, value])
    assert result.exit_code == 2 and message in result.output, result.output


def test_train_refuses_a_missing_or_mis_sized_probe_file_with_one_clear_line(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from ptychosteer.cli import main

    np.save(tmp_path / "probe.npy", np.ones((16, 16), np.complex64))
    for probe, why in ((tmp_path / "missing.npy", "cannot read a probe"), (tmp_path / "probe.npy", "16, 16")):
        result = CliRunner().invoke(main, ["train", "--loss", "physics", "--probe", str(probe), "--stream",
                                           "tcp://127.0.0.1:1", "--announce", ""])
        assert result.exit_code == 2 and why in result.output, result.output
    result = CliRunner().invoke(main, ["train", "--probe", str(tmp_path / "probe.npy"), "--announce", ""])
    assert result.exit_code == 2 and "physics" in result.output


def test_physics_from_the_command_line_turns_off_a_configs_task_weights(tmp_path, monkeypatch):
    """Task weights come from labels; ``--loss physics`` over a config with ``task_weight = "floor"`` (every
    shipped one) and ``demo --physics`` must compose, not fail on the combination."""
    from pathlib import Path

    from ptychosteer import cli

    config = Path(__file__).resolve().parents[1] / "configs" / "train-cpu.toml"
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--loss", "physics", "--probe",
                                       str(tmp_path / "missing.npy"), "--announce", ""])
    assert result.exit_code == 2 and "cannot read a probe" in result.output, result.output  # got past the config
    seen = {}

    def run_pipeline(config):  # what the demo would launch, without launching it
        seen["config"] = config
        return 0

    monkeypatch.setattr(cli, "_run_pipeline", run_pipeline)
    for flags, loss, weight in ((["--physics"], "physics", "none"), ([], "l1mse", "floor")):
        seen.clear()
        result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo"), *flags])
        assert result.exit_code == 0, result.output
        learner = seen["config"].trainer.learner
        assert (learner.loss, learner.task_weight) == (loss, weight)


def test_every_shipped_config_parses_and_serves_a_moving_average():
    """configs/*.toml: each is a whole pipeline (``launch``) or a trainer section (``train``) whose every key is
    known, and each serves the moving average of the weights (measured better than the raw weights)."""
    from pathlib import Path

    from ptychosteer.config import from_dict, load_toml
    from ptychosteer.pipeline import PipelineConfig
    from trainer.config import TrainerConfig

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert len(paths) >= 5
    for path in paths:
        data = load_toml(path)
        if "simulator" in data or "workdir" in data:
            learner = from_dict(PipelineConfig, data, "pipeline").trainer.learner
        else:
            learner = from_dict(TrainerConfig, data.get("trainer", data), "trainer").learner
        assert 0.9 <= learner.ema < 1.0, path.name


def test_the_demo_config_file_is_what_the_demo_runs():
    """configs/cpu-demo.toml says it is ``ptychosteer demo`` as a file: every setting equal to the embedded
    default but on_failure (until 2026-12-03 it still had the demo's old 64×64 frames at 150 Hz)."""
    import dataclasses
    from pathlib import Path

    from ptychosteer.config import from_dict, load_toml
    from ptychosteer.pipeline import PipelineConfig, default_demo_config

    data = load_toml(Path(__file__).resolve().parents[1] / "configs" / "cpu-demo.toml")
    from_file = from_dict(PipelineConfig, data, "pipeline")
    embedded = default_demo_config(data["workdir"])
    assert from_file.on_failure == "restart" and embedded.on_failure == "shutdown"
    assert dataclasses.replace(from_file, on_failure=embedded.on_failure) == embedded


@pytest.mark.parametrize("labeler, curve", [(False, False), (True, False), (False, True)])
def test_every_stage_command_the_launcher_builds_parses(tmp_path, labeler, curve):
    """What ``launch`` starts is checked by click here, not first at a user's beamtime: a renamed option or a
    config key passed as a bad value fails this test."""
    import click

    from ptychosteer.pipeline import LabelerSection, Pipeline, PipelineConfig

    config = PipelineConfig(workdir=str(tmp_path), labeler=LabelerSection(enabled=labeler), curve=curve,
                            steering_keep_ended_scans=3)
    pipeline = Pipeline(config)
    pipeline.endpoints.update({name: "tcp://127.0.0.1:1" for name in pipeline._endpoint_known})  # as if reported
    parsed = {}
    for stage in pipeline.stages():
        args = pipeline.command(stage)
        args = args[args.index("ptychosteer.cli") + 1:]
        command = main.get_command(click.Context(main), args[0])
        with command.make_context(args[0], args[1:]) as ctx:  # raises on unknown options and bad values
            parsed[stage] = ctx.params
    assert parsed["steering"]["keep_ended_scans"] == 3
    assert ("labeler" in parsed) == labeler and set(parsed) >= {"simulator", "ingest", "trainer", "steering"}


def test_the_ingest_never_overwrites_a_recording_unless_asked(tmp_path):
    """``ingest --output`` on an earlier run's recording used to truncate it (h5py mode "w"): a restarted ingest
    with the same command line erased every frame the first one had recorded. It now refuses to start, one clear
    line, and leaves the file as it was; ``--overwrite`` replaces it."""
    import h5py

    rec = tmp_path / "recording.h5"
    rec.write_bytes(b"an earlier run's frames")
    quiet = ["--detector", "tcp://127.0.0.1:1", "--output", str(rec), "--train-endpoint", "", "--live-endpoint", "",
             "--notice-endpoint", "", "--idle-timeout", "0.2"]
    refused = CliRunner().invoke(main, ["ingest", *quiet])
    assert refused.exit_code == 2 and "exists" in refused.output and "--overwrite" in refused.output, refused.output
    assert rec.read_bytes() == b"an earlier run's frames"
    replaced = CliRunner().invoke(main, ["ingest", *quiet, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert h5py.is_hdf5(rec)


def test_ingest_after_an_earlier_recording_is_checked_before_it_starts(tmp_path):
    """``--after`` names the earlier run's recording whose numbering this ingest continues: a file that is no
    recording, or the output file itself, is one clear line and exit status 2; a readable one (here an empty one,
    highest series 0) and ``--first-series`` give the first id the ingest records (reported in its counters)."""
    quiet = ["--detector", "tcp://127.0.0.1:1", "--train-endpoint", "", "--live-endpoint", "",
             "--notice-endpoint", "", "--idle-timeout", "0.2"]
    empty = tmp_path / "empty.h5"
    assert CliRunner().invoke(main, ["ingest", *quiet, "--output", str(empty)]).exit_code == 0
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a recording")
    for args, message in [(["--after", str(junk)], "cannot read its series"),
                          (["--after", str(empty), "--output", str(empty)], "is the --output file itself")]:
        result = CliRunner().invoke(main, ["ingest", *quiet, "--output", str(tmp_path / "new.h5"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, ["ingest", *quiet, "--output", str(tmp_path / "next.h5"), "--after", str(empty),
                                       "--first-series", "7"])
    counters = [line for line in result.output.splitlines() if line.startswith("{")]
    assert result.exit_code == 0 and json.loads(counters[-1])["first_series"] == 7, result.output


def test_launch_refuses_a_workdir_with_an_earlier_recording_unless_told_to_replace_it(tmp_path):
    """launch checks before anything starts; the demo's config replaces its own earlier recording (a second
    ``make demo`` must run), and then the ingest is told so."""
    from ptychosteer.pipeline import Pipeline, PipelineConfig, default_demo_config

    (tmp_path / "recording.h5").write_bytes(b"an earlier run's frames")
    with pytest.raises(ValueError, match="recording.h5 exists.*overwrite_recording"):
        Pipeline(PipelineConfig(workdir=str(tmp_path)))
    assert (tmp_path / "recording.h5").read_bytes() == b"an earlier run's frames"
    pipeline = Pipeline(default_demo_config(str(tmp_path)))
    pipeline.endpoints.update({name: "tcp://127.0.0.1:1" for name in pipeline._endpoint_known})  # as if reported
    assert "--overwrite" in pipeline.command("ingest")
    fresh = Pipeline(PipelineConfig(workdir=str(tmp_path / "new")))
    fresh.endpoints.update({name: "tcp://127.0.0.1:1" for name in fresh._endpoint_known})
    assert "--overwrite" not in fresh.command("ingest")
