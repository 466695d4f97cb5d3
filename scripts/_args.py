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
