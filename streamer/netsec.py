"""Where a stage may bind: loopback freely; any other address only when authenticated (CURVE) or explicitly marked
insecure (``--insecure``, config ``insecure = true``), and then with a warning in the log; and the CURVE server and
client setup (pyzmq's ``zmq.auth``) that the decision feed and the model announcements share. Shared by every stage
(it lives in the streamer, which every stage may import, and imports nothing of the project)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

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


def curve_server(sock: "zmq.Socket", context: "zmq.Context", secret: str | Path,
                 authorized: str | Path | None) -> Any:
    """Make ``sock`` (before bind) a CURVE server with the secret certificate ``secret``; only clients whose public
    keys are in the folder ``authorized`` may connect. Returns the authenticator thread (``stop()`` it at close).
    """
    import zmq
    from zmq.auth import load_certificate
    from zmq.auth.thread import ThreadAuthenticator

    public, private = load_certificate(str(secret))
    if private is None:
        raise ValueError(f"{secret} holds no secret key (use the .key_secret file)")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized) if authorized else zmq.auth.CURVE_ALLOW_ANY)
    sock.curve_secretkey, sock.curve_publickey = private, public
    sock.curve_server = True
    return auth


def curve_client(sock: "zmq.Socket", server_key: str | Path, client_cert: str | Path) -> None:
    """Make ``sock`` (before connect) a CURVE client of the server whose public certificate is ``server_key``."""
    from zmq.auth import load_certificate

    sock.curve_serverkey = load_certificate(str(server_key))[0]
    public, private = load_certificate(str(client_cert))
    if private is None:
        raise ValueError(f"{client_cert} holds no secret key (use the client's .key_secret file)")
    sock.curve_publickey, sock.curve_secretkey = public, private
