"""Stage processes under signals: a stopped simulator closes its series and reports exactly what it sent."""

import json
import signal
import subprocess
import sys
import time

import pytest
import zmq

from streamer.frames import recv_message

pytestmark = pytest.mark.integration


def _wait_for(path, key, proc, timeout_s=60.0):
    """The value of ``key`` in a stage's status file once it is there (polling the file, as launch does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            value = json.loads(path.read_text()).get(key)
        except (OSError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{path} never reported {key!r}; exit status {proc.poll()}")


def test_sigterm_stops_the_simulator_with_its_series_closed_and_an_exact_count(tmp_path):
    status = tmp_path / "simulator.json"
    proc = subprocess.Popen([sys.executable, "-m", "ptychosteer.cli", "simulate", "--endpoint", "tcp://127.0.0.1:0",
                             "--scans", "50", "--frame-size", "32", "--object-size", "64", "--rate-hz", "200",
                             "--status-file", str(status)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(_wait_for(status, "endpoint", proc))
    received, htypes = 0, []
    while received < 20:
        assert pull.poll(30_000), "no frames from the simulator"
        parts = recv_message(pull)
        htype = json.loads(bytes(parts[0]))["htype"]
        htypes.append(htype)
        received += htype == "dimage-1.0"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    while pull.poll(1000):  # what it sent before it stopped
        htype = json.loads(bytes(recv_message(pull)[0]))["htype"]
        htypes.append(htype)
        received += htype == "dimage-1.0"
    pull.close(linger=0)
    ctx.term()
    assert proc.returncode == 0, out
    final = json.loads(status.read_text())
    assert final["done"] and final["frames_sent"] == received, (final, received)
    assert htypes[-1] == "dseries_end-1.0"  # the series in flight was closed, as a disarmed detector does
    assert f"sent {received} frames" in out
