"""Helpers shared by the benchmark scripts (they run as ``python scripts/NAME.py``, so this folder is on the path):
argument types, and a note of the machine's load (is other work sharing the cores?)."""

from __future__ import annotations

import argparse
import os
import time


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; anything else, or a repeated seed, is a usage error."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat: {text!r}")
    return seeds


def _busy_cores(interval_s: float) -> float | None:
    """Cores busy over the next ``interval_s`` (from /proc/stat; None where there is none)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
        return sum(ticks) - idle, sum(ticks)

    try:
        busy0, total0 = sample()
        time.sleep(interval_s)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def load_note(own: int = 0, now: bool = False) -> str:
    """The machine's load beside its core count, with a warning when other work shares the cores (more than half
    of them busy beyond ``own``, the benchmark's own busy threads): its wall times (and ratios of them) are then not
    comparable with an unloaded run's. ``now`` (before a benchmark starts): the cores busy over the next half
    second, which the load averages (minutes long) would still blur with the work that just ended."""
    cores = os.cpu_count() or 1
    busy = _busy_cores(0.5) if now else None
    if busy is not None:
        load, text = busy, f"{busy:.2f} of {cores} cores busy now"
    else:
        try:
            one, five, _ = os.getloadavg()
        except OSError:  # not available on this platform
            return "load average: unknown"
        load, text = one, f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {cores} cores"
    shared = f" - other work shares the {cores} cores: wall times are not comparable" if load > own + cores / 2 else ""
    return text + shared
