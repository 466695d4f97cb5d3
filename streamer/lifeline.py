"""A stage process notices its supervisor's death (shared by every stage; lives in the streamer because every stage
may import it and it imports nothing of the project).

``ptychosteer launch`` starts each stage in its own session (so that it can stop a stage's whole process group)
and names itself in ``PTYCHOSTEER_SUPERVISOR_PID``. A stage calls :func:`follow_supervisor` first thing: on Linux
the kernel then sends it SIGTERM when the supervisor dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``), and the
stage shuts down as on any SIGTERM (recording closed intact, a final checkpoint). Trainer ranks spawned by a
trainer process do the same towards it (:func:`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)
SUPERVISOR_ENV = "PTYCHOSTEER_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``sig`` when this process's parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def follow_supervisor() -> None:
    """If a supervisor started this process, get SIGTERM when it dies; if it is already gone, SIGTERM now.

    The variable is removed from the environment, so that processes this one starts (trainer ranks, torchrun's
    workers) do not mistake the supervisor for their parent.
    """
    raw = os.environ.pop(SUPERVISOR_ENV, "")
    if not raw.isdigit():
        return
    supervisor = int(raw)
    if os.getppid() == supervisor:
        die_with_parent()
        if os.getppid() == supervisor:  # still there after the request: the kernel will tell us
            return
    try:
        os.kill(supervisor, 0)
        return  # alive, and not our parent (a launcher between us, e.g. torchrun): it is that one's job
    except ProcessLookupError:
        logger.error("the supervisor (pid %d) is gone: stopping", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)
    except PermissionError:
        return
