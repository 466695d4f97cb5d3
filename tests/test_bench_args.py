"""The benchmark scripts' shared helpers (scripts/_args.py)."""

import argparse
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _args import load_note, seed_list  # noqa: E402


def test_seed_list_parses_and_refuses_repeats_and_garbage():
    assert seed_list("0,1,3") == [0, 1, 3]
    for bad in ("0,0", "a,1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)


def test_load_note_warns_only_when_other_work_shares_the_cores(monkeypatch):
    import _args

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.5, 0.5))
    assert "not comparable" not in load_note() and "0.40 (1 min)" in load_note()
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 2.0, 2.0))  # the benchmark's own 2 threads
    assert "not comparable" in load_note() and "not comparable" not in load_note(own=2)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))  # a second benchmark beside it
    assert "other work shares the 2 cores" in load_note(own=2)
    monkeypatch.setattr(_args, "_busy_cores", lambda interval_s: 0.1)  # before a benchmark: the cores now
    assert load_note(now=True) == "0.10 of 2 cores busy now"
    monkeypatch.setattr(_args, "_busy_cores", lambda interval_s: 1.9)
    assert "other work shares" in load_note(now=True)
    monkeypatch.setattr(_args, "_busy_cores", lambda interval_s: None)  # no /proc/stat: the load averages
    assert "load average 4.00" in load_note(now=True)


def test_busy_cores_sees_this_process_spinning():
    import threading
    import time

    import _args

    if _args._busy_cores(0.01) is None:
        pytest.skip("no /proc/stat here")
    stop = time.monotonic() + 0.6

    def spin():
        while time.monotonic() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    busy = _args._busy_cores(0.5)
    spinner.join()
    assert busy >= 0.5  # at least most of one core: the spinning thread


def test_bench_trainer_reports_a_stream_trainer_that_fails_instead_of_dying_in_its_feeder(tmp_path):
    """A trainer that exits at once (here a bad strategy) leaves the feeder blocked on a PUSH socket nobody reads;
    the socket used to be closed under it (libzmq aborted the benchmark: "Assertion failed ... signaler.cpp").
    Now the feeder is stopped first and the trainer's own error is what the user reads."""
    import bench_trainer

    args = argparse.Namespace(nproc=1, frame_size=32, nconv=8, depth=3, b=16, r=16, strategy="bogus",
                              frames=1000, device="cpu")
    with pytest.raises(SystemExit, match="the stream trainer failed") as failed:
        bench_trainer.run_stream(args, tmp_path)
    assert "bogus" in str(failed.value)
