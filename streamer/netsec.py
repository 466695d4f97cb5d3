"""Where a stage may bind: loopback freely; any other address only when authenticated (CURVE) or explicitly marked
insecure (``--insecure``, config ``insecure = true``), and then with a warning in the log. Shared by every stage
(it lives in the streamer, which every stage may import, and imports nothing of the project)."""

from __future__ import annotations

import ipaddress
import logging

logger = logging.getLogger(__name__)


def is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address (127.0.0.0/8, ::1, localhost)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from elsewhere
        return False


def check_bind(endpoint: str, what: str, *, authenticated: bool = False, insecure: bool = False) -> None:
    """Raise ValueError for a non-local ``endpoint`` that is neither authenticated nor marked insecure."""
    if not endpoint or is_local(endpoint) or authenticated:
        return
    if not insecure:
        raise ValueError(f"{what} {endpoint} is reachable from the network without authentication: bind "
                         f"127.0.0.1, use CURVE where the stage offers it, or pass --insecure (config "
                         f"insecure = true) on a network you trust")
    logger.warning("INSECURE: %s %s is reachable from the network without authentication (--insecure)", what,
                   endpoint)
