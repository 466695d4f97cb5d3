"""Argument types shared by the benchmark scripts (they run as ``python scripts/NAME.py``, so this folder is on the path)."""

from __future__ import annotations

import argparse


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; anything else, or a repeated seed, is a usage error."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat: {text!r}")
    return seeds


def load_note(own: int = 0) -> str:
    """The machine's load averages beside its core count, with a warning when other work shares the cores (the
    1-minute load beyond ``own``, the benchmark's own busy threads, by more than half the cores): its wall times
    (and ratios of them) are then not comparable with an unloaded run's."""
    import os

    try:
        one, five, _ = os.getloadavg()
    except OSError:  # not available on this platform
        return "load average: unknown"
    cores = os.cpu_count() or 1
    busy = f" - other work shares the {cores} cores: wall times are not comparable" if one > own + cores / 2 else ""
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {cores} cores{busy}"
