"""Logging setup and a one-line progress display for long CLI work (stderr; redraws in place on a terminal)."""

from __future__ import annotations

import logging
import sys
import time


def setup_logging(verbose: int = 0) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)


class Ticker:
    """Shows the latest progress line: in place on a TTY, else at most one line every ``interval_s``."""

    def __init__(self, label: str, interval_s: float = 2.0) -> None:
        self.label = label
        self.interval_s = interval_s
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._shown = False

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self._tty:
            sys.stderr.write(f"\r\x1b[2K[{self.label}] {text}")
            sys.stderr.flush()
            self._shown = True
        elif now - self._last >= self.interval_s:
            sys.stderr.write(f"[{self.label}] {text}\n")
            self._last = now

    def done(self) -> None:
        if self._tty and self._shown:
            sys.stderr.write("\n")
            self._shown = False
