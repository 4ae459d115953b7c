"""The two PSI roles as separate processes over TCP: ``serve`` (the server role, waits for
one client) and ``join`` (the client role).

One session on one connection, messages framed by ``psi_wire``::

    join (client)                                   serve (server)
    HELLO  mode, id policy, share?, |C|   ───────▶  checks the mode and the id policy
                                                    match its own and |C| <= max_ids
           ◀───────  SETUP     H(y)^s of every server id, as GCS / Bloom filter / raw
    REQUEST  H(x)^c of every client id    ───────▶
           ◀───────  RESPONSE  H(x)^(cs), same order (shuffled if cardinality-only)
    client: the intersection (or its size)
    RESULT  SHA-256 digests of the result ───────▶  (only if the client announced it:
                                                    the server checks each is its own)

Either side that cannot go on sends ERROR with one line and closes. The server learns
``|C|`` (and the result only if the client shares it); the client learns the
intersection (or its size) and, from the setup's size, roughly ``|S|``. Messages are
blinded points and filters: a passive eavesdropper learns the set sizes. The connection
is neither encrypted nor authenticated, so an active attacker could pose as either
party: across machines, run it inside an authenticated channel (TLS, an SSH tunnel).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from umbra.services.psi import PsiClient, PsiConfig, PsiServer
from umbra.services.psi_errors import PsiError, PsiProtocolError
from umbra.services.psi_ids import IdSet
from umbra.services.psi_wire import (
    Hello,
    MessageType,
    error_frame,
    frame,
    read_frame,
)

__all__ = [
    "Channel",
    "JoinResult",
    "ServeResult",
    "accept",
    "connect",
    "join",
    "join_session",
    "listen",
    "receive_result",
    "send_result",
    "serve",
    "serve_session",
]

DEFAULT_TIMEOUT_S = 600.0  # per message: a server blinds 100,000 ids in about a minute
CONNECT_WAIT_S = 60.0  # how long a joining party waits for its peer to start listening
_CONNECT_RETRY_S = 0.2
_DIGEST = 32


@dataclass(frozen=True)
class ServeResult:
    """The server's view: the client's set size and, if the client shared it, the result
    (``positions`` into the server's set in ascending digest order, and those ids)."""

    client_size: int
    size: int | None
    positions: tuple[int, ...] | None
    shared: tuple[str, ...] | None
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class JoinResult:
    """The client's view: the intersection's size and (unless cardinality-only) the
    positions of the shared ids in its set and those ids, in ascending digest order (the
    order the server gets with ``share_result``)."""

    size: int
    positions: tuple[int, ...] | None
    shared: tuple[str, ...] | None
    bytes_sent: int
    bytes_received: int


class Channel:
    """One connection: framed reads and writes, bytes counted, errors made one line."""

    def __init__(self, sock: socket.socket, max_ids: int) -> None:
        self.sock = sock
        self.stream: BinaryIO = sock.makefile("rb")
        self.max_ids = max_ids
        self.sent = 0
        self.received = 0

    def send(self, kind: MessageType, payload: bytes) -> None:
        data = frame(kind, payload)
        try:
            self.sock.sendall(data)
        except OSError as err:
            raise PsiProtocolError(f"sending {kind.name} failed: {_reason(err)}") from None
        self.sent += len(data)

    def receive(self, kind: MessageType) -> bytes:
        try:
            payload = read_frame(self.stream, kind, max_ids=self.max_ids)
        except TimeoutError:
            raise PsiProtocolError(f"timed out waiting for the {kind.name} message") from None
        except OSError as err:
            raise PsiProtocolError(f"receiving {kind.name} failed: {_reason(err)}") from None
        self.received += len(payload) + 8
        return payload

    def refuse(self, reason: str) -> None:
        """Tell the peer why this side stops (best effort: it may be gone already)."""
        with contextlib.suppress(OSError):
            self.sock.sendall(error_frame(reason))

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    @contextlib.contextmanager
    def refusing(self) -> Iterator[Channel]:
        """Closes the connection at the end; on a ``PsiError`` first tells the peer why."""
        try:
            yield self
        except PsiError as err:
            self.refuse(str(err))
            raise
        finally:
            self.close()


def listen(
    host: str, port: int, on_listening: Callable[[str, int], None] | None = None
) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port, passed to ``on_listening``)."""
    try:
        listener = socket.create_server((host, port))
    except OSError as err:
        raise PsiError(f"cannot listen on {host}:{port}: {_reason(err)}") from None
    if on_listening is not None:
        bound_host, bound_port = listener.getsockname()[:2]
        on_listening(bound_host, bound_port)
    return listener


def accept(listener: socket.socket, max_ids: int, timeout_s: float) -> Channel:
    """The first client's connection, waited for at most ``timeout_s``."""
    listener.settimeout(timeout_s)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        raise PsiError(f"no client connected within {timeout_s:g} s") from None
    conn.settimeout(timeout_s)
    return Channel(conn, max_ids)


def connect(host: str, port: int, max_ids: int, timeout_s: float) -> Channel:
    """A connection to a serving party; a refused connection is retried for up to
    ``CONNECT_WAIT_S`` (the peer may not be listening yet), anything else fails at once."""
    deadline = time.monotonic() + min(timeout_s, CONNECT_WAIT_S)
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=timeout_s)
        except ConnectionRefusedError as err:
            if time.monotonic() >= deadline:
                raise PsiError(f"cannot connect to {host}:{port}: {_reason(err)}") from None
            time.sleep(_CONNECT_RETRY_S)
        except OSError as err:
            raise PsiError(f"cannot connect to {host}:{port}: {_reason(err)}") from None
        else:
            return Channel(conn, max_ids)


def serve(
    ids: IdSet,
    config: PsiConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_listening: Callable[[str, int], None] | None = None,
) -> ServeResult:
    """Listen on ``host:port`` (0: any free port, passed to ``on_listening``), run one
    session with the first client that connects, and return the server's view."""
    with listen(host, port, on_listening) as listener:
        channel = accept(listener, config.max_ids, timeout_s)
    with channel.refusing():
        return serve_session(channel, ids, config)


def serve_session(channel: Channel, ids: IdSet, config: PsiConfig) -> ServeResult:
    """The server's side of one session on an open connection."""
    hello = Hello.decode(channel.receive(MessageType.HELLO))
    if hello.cardinality_only != config.cardinality_only:
        mine = "the size only" if config.cardinality_only else "the intersection"
        raise PsiProtocolError(f"mode mismatch: this server reveals {mine}")
    if hello.ignore_case != ids.ignore_case:
        mine = "ignores case" if ids.ignore_case else "is case-sensitive"
        raise PsiProtocolError(f"id policy mismatch: this server {mine}")
    if hello.share_result and hello.cardinality_only:
        raise PsiProtocolError("a cardinality-only session has no result to share")
    server = PsiServer(ids, config)
    channel.send(MessageType.SETUP, server.setup(hello.client_size))
    request = channel.receive(MessageType.REQUEST)
    channel.send(MessageType.RESPONSE, server.respond(request, client_size=hello.client_size))
    if not hello.share_result:
        return ServeResult(hello.client_size, None, None, None, channel.sent, channel.received)
    positions = tuple(ids.positions_of(receive_result(channel)))
    shared = tuple(ids.ids[p] for p in positions)
    return ServeResult(
        hello.client_size, len(positions), positions, shared, channel.sent, channel.received
    )


def join(
    ids: IdSet,
    config: PsiConfig,
    *,
    host: str,
    port: int,
    share_result: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> JoinResult:
    """Connect to a ``serve``-ing party, run one session as the client, return its view;
    ``share_result`` sends the result's digests back so that the server learns it too."""
    if share_result and config.cardinality_only:
        raise PsiError("--share-result needs the intersection, not only its size")
    if len(ids) > config.max_ids:
        raise PsiError(f"this set has {len(ids)} ids, more than max_ids = {config.max_ids}")
    channel = connect(host, port, config.max_ids, timeout_s)
    with channel.refusing():
        size, positions = join_session(channel, ids, config, share_result=share_result)
        if positions is None:
            return JoinResult(size, None, None, channel.sent, channel.received)
        if share_result:
            send_result(channel, [ids.digests[p] for p in positions])
        shared = tuple(ids.ids[p] for p in positions)
        return JoinResult(size, positions, shared, channel.sent, channel.received)


def join_session(
    channel: Channel, ids: IdSet, config: PsiConfig, *, share_result: bool
) -> tuple[int, tuple[int, ...] | None]:
    """The client's side of one session up to its result: the intersection's size and the
    shared ids' positions in ascending digest order (``None`` if cardinality-only). With
    ``share_result`` the server then waits for ``send_result``."""
    client = PsiClient(ids, config)
    hello = Hello(config.cardinality_only, ids.ignore_case, share_result, len(ids))
    channel.send(MessageType.HELLO, hello.encode())
    setup = channel.receive(MessageType.SETUP)
    channel.send(MessageType.REQUEST, client.request())
    response = channel.receive(MessageType.RESPONSE)
    size, positions = client.finish(setup, response)
    return size, None if positions is None else ids.canonical(positions)


def send_result(channel: Channel, digests: list[bytes]) -> None:
    """The RESULT message: ``digests`` sorted."""
    channel.send(MessageType.RESULT, b"".join(sorted(digests)))


def receive_result(channel: Channel) -> list[bytes]:
    """A RESULT message's digests, checked sorted and unique."""
    return _digests(channel.receive(MessageType.RESULT))


def _digests(payload: bytes) -> list[bytes]:
    if len(payload) % _DIGEST:
        raise PsiProtocolError(f"malformed RESULT message: {len(payload)} bytes")
    out = [payload[i : i + _DIGEST] for i in range(0, len(payload), _DIGEST)]
    if any(a >= b for a, b in itertools.pairwise(out)):
        raise PsiProtocolError("malformed RESULT message: digests not sorted and unique")
    return out


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__
