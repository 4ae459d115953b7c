"""Wake-ups between a SuperNode and its ClientApp host, instead of polls.

On Flower 1.42 two waits inside one organisation's node are polls:

1. The SuperExec (here `umbra.deploy.clientapp_host`) asks its SuperNode's Runtime API
   for a task (``AcquireTask``) at a fixed interval. With 8 nodes on one machine at 0.1 s
   that is 80 HTTP requests a second, handled by both processes whether or not a round is
   running (about a quarter of a core measured idle), and still up to 0.1 s late.
2. The SuperNode's loop checks for the ClientApp's reply, and for the reply's objects,
   every 0.5 s (`umbra.deploy.flower_timing` caps it at the idle poll).

In the processes Umbra starts, the SuperNode says when there is something to do:

* when a received message and all its objects are stored, `install_supernode_wakeups`
  sends one datagram to the host's loopback UDP port (`WakeListener`), which asks for the
  task at once and otherwise waits, asking again only every `FALLBACK_POLL_S` (a lost or
  spoofed datagram costs one request; no data travels in it);
* a message or object stored in the node (the ClientApp's reply arriving over the
  Runtime API) ends the loop's current `CappedSleep` at once.

Each patch point is checked; a Flower release that moved one makes the launcher refuse to
start (RuntimeError), as for `umbra.deploy.flower_timing`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import select
import socket
from collections.abc import Callable
from typing import Any

from umbra.deploy.flower_timing import CappedSleep
from umbra.deploy.ports import LOOPBACK

__all__ = ["FALLBACK_POLL_S", "WAKE_DATAGRAM", "WakeListener", "install_supernode_wakeups",
           "send_wakeup"]  # fmt: skip

#: What the SuperNode sends; anything else arriving on the port is read and ignored.
WAKE_DATAGRAM = b"umbra: task ready"
#: How often a host with a wake-up port still asks for a task (a missed datagram, a node
#: restarted before its host). Flower's own SuperExec asks every 1 s; with wake-ups that
#: would be 8 of a node's 30-odd Runtime API requests in a deployed `baseline` round.
FALLBACK_POLL_S = 5.0

_LOOP = "flwr.supernode.start_client_internal"
_PULL_AND_STORE = "_pull_and_store_message"
_STORES = (
    ("flwr.supernode.nodestate.in_memory_nodestate", "InMemoryNodeState", "store_message"),
    ("flwr.supercore.object_store.in_memory_object_store", "InMemoryObjectStore", "put"),
)


def send_wakeup(port: int) -> None:
    """One datagram to 127.0.0.1:``port``; never raises (the host's fallback poll covers a
    host that is not listening)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(WAKE_DATAGRAM, (LOOPBACK, port))


class WakeListener:
    """The host's end: a UDP socket bound to 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"wake-up port must be 1-65535, got {port}")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((LOOPBACK, port))
        except OSError as err:
            self.sock.close()
            raise ValueError(f"wake-up port {LOOPBACK}:{port} is not free: {err}") from None
        self.sock.setblocking(False)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a wake-up; whether one came. Reads every datagram
        waiting, so a burst wakes once."""
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        woken = False
        while ready:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                break
            woken = woken or data == WAKE_DATAGRAM
        return woken

    def close(self) -> None:
        self.sock.close()


def _attribute(module_name: str, name: str) -> tuple[Any, Any]:
    module = importlib.import_module(module_name)
    value = getattr(module, name, None)
    if not callable(value):
        raise RuntimeError(
            f"{module_name} has no {name} to add wake-ups to; this Flower release is not "
            "the one Umbra pins"
        )
    return module, value


def _after(fn: Callable[..., Any], then: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        then(result)
        return result

    wrapper.__umbra_wakeup__ = True  # type: ignore[attr-defined]
    return wrapper


def install_supernode_wakeups(sleeper: CappedSleep, host_port: int | None) -> None:
    """In a SuperNode process: end ``sleeper``'s sleeps whenever a message or object is
    stored, and, with ``host_port``, send the host a datagram whenever a received message
    is complete. Idempotent; RuntimeError if a patch point moved."""
    for module_name, class_name, method in _STORES:
        _, cls = _attribute(module_name, class_name)
        original = getattr(cls, method, None)
        if not callable(original):
            raise RuntimeError(
                f"{module_name}.{class_name} has no {method}; this Flower release is not "
                "the one Umbra pins"
            )
        if not getattr(original, "__umbra_wakeup__", False):
            setattr(cls, method, _after(original, lambda _r: sleeper.wake()))
    loop, pull_and_store = _attribute(_LOOP, _PULL_AND_STORE)
    if host_port is not None and not getattr(pull_and_store, "__umbra_wakeup__", False):
        port = host_port

        def tell_host(run_id: Any) -> None:
            if run_id is not None:  # a message and all its objects are in the store
                send_wakeup(port)

        setattr(loop, _PULL_AND_STORE, _after(pull_and_store, tell_host))
