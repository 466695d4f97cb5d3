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
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.5, 0.5))
    assert "not comparable" not in load_note() and "0.40 (1 min)" in load_note()
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 2.0, 2.0))  # the benchmark's own 2 threads
    assert "not comparable" in load_note() and "not comparable" not in load_note(own=2)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))  # a second benchmark beside it
    assert "other work shares the 2 cores" in load_note(own=2)
