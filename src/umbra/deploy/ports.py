"""Loopback ports: pick a free one, or check that a chosen one is free.

Every deployment process binds to 127.0.0.1 only. A port is checked by binding it the way
the servers will (with ``SO_REUSEADDR``, as uvicorn does), so a socket lingering in
TIME_WAIT does not count as taken, but a listening program does.
"""

from __future__ import annotations

import socket

from umbra.deploy.errors import PortInUseError

__all__ = ["LOOPBACK", "check_port_free", "free_port", "free_udp_port"]

LOOPBACK = "127.0.0.1"


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def check_port_free(port: int, *, purpose: str = "deployment") -> None:
    """Raise `PortInUseError` naming ``port`` when something already listens on it."""
    if not 0 < port < 65536:
        raise PortInUseError(f"{purpose} port {port} is not a TCP port (1-65535)")
    try:
        _bind(port).close()
    except OSError:
        raise PortInUseError(
            f"{purpose} port {LOOPBACK}:{port} is already in use; stop the program "
            "listening there or choose another port"
        ) from None


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (the kernel's choice).
    Another program may take it before the caller binds it; `check_port_free` just
    before starting a server narrows that window and names the port if it happens."""
    with _bind(0) as sock:
        port: int = sock.getsockname()[1]
    return port


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing has bound right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port
