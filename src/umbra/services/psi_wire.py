"""The framing of ``umbra psi serve`` / ``umbra psi join``: length-prefixed messages with
per-type size limits, over one TCP connection.

Every message is an 8-byte header — ``b"UP"``, the protocol version (1), the message type,
the payload length as a big-endian ``uint32`` — then the payload. A reader checks the
magic, version and type against what the protocol expects next, and the length against
that type's limit *before* reading the payload, so a peer can neither make it allocate
without bound nor feed it a message out of order. Pure framing: no sockets here beyond
``read_frame``/``write_frame`` over a file-like stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

from umbra.services.psi_errors import PsiProtocolError

__all__ = [
    "HEADER",
    "PEER_STOPPED",
    "VERSION",
    "Hello",
    "MessageType",
    "error_frame",
    "frame",
    "payload_limit",
    "read_frame",
]

MAGIC = b"UP"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
_HELLO = struct.Struct(">BQ")
_PROTO_OVERHEAD = 3  # protobuf tag + length bytes per 33-byte element, rounded up
_MAX_ERROR = 512
PEER_STOPPED = "the peer stopped"


class MessageType(IntEnum):
    """Message types, in protocol order."""

    HELLO = 1  # client -> server: mode, id policy, whether it shares the result, set size
    SETUP = 2  # server -> client: openmined-psi ServerSetup
    REQUEST = 3  # client -> server: openmined-psi Request
    RESPONSE = 4  # server -> client: openmined-psi Response
    RESULT = 5  # client -> server (only if announced): sorted SHA-256 digests of the result
    ERROR = 15  # either way: one line of UTF-8 saying why the sender stops


@dataclass(frozen=True)
class Hello:
    """The client's opening message: what it asks for and how many ids it will send."""

    cardinality_only: bool
    ignore_case: bool
    share_result: bool
    client_size: int

    def encode(self) -> bytes:
        flags = int(self.cardinality_only) | int(self.ignore_case) << 1
        flags |= int(self.share_result) << 2
        return _HELLO.pack(flags, self.client_size)

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        if len(payload) != _HELLO.size:
            raise PsiProtocolError(f"malformed hello: {len(payload)} bytes, not {_HELLO.size}")
        flags, size = _HELLO.unpack(payload)
        if flags & ~0b111:
            raise PsiProtocolError(f"malformed hello: unknown flags 0x{flags:02x}")
        return cls(bool(flags & 1), bool(flags & 2), bool(flags & 4), size)


def payload_limit(kind: MessageType, max_ids: int) -> int:
    """The largest payload a reader accepts for ``kind`` when sets have at most ``max_ids``."""
    points = (33 + _PROTO_OVERHEAD) * max_ids + 64
    return {
        MessageType.HELLO: _HELLO.size,
        MessageType.SETUP: points,  # raw is the largest: one point per server id
        MessageType.REQUEST: points,
        MessageType.RESPONSE: points,
        MessageType.RESULT: 32 * max_ids,
        MessageType.ERROR: _MAX_ERROR,
    }[kind]


def frame(kind: MessageType, payload: bytes) -> bytes:
    """Header + payload."""
    return HEADER.pack(MAGIC, VERSION, int(kind), len(payload)) + payload


def error_frame(reason: str) -> bytes:
    """An ERROR message: ``reason`` cut to the size limit."""
    return frame(MessageType.ERROR, reason.encode("utf-8")[:_MAX_ERROR])


def read_frame(stream: BinaryIO, expected: MessageType, *, max_ids: int) -> bytes:
    """The payload of the next message, which must be ``expected`` (or ERROR, raised as
    ``PsiProtocolError`` carrying the peer's reason)."""
    header = _read_exactly(stream, HEADER.size, expected)
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise PsiProtocolError("the peer does not speak the umbra psi protocol (bad magic)")
    if version != VERSION:
        raise PsiProtocolError(f"the peer speaks protocol version {version}, not {VERSION}")
    if kind == MessageType.ERROR:
        if length > _MAX_ERROR:
            raise PsiProtocolError(f"{PEER_STOPPED} (its error message is too long to show)")
        reason = _read_exactly(stream, length, MessageType.ERROR).decode("utf-8", "replace")
        raise PsiProtocolError(f"{PEER_STOPPED}: {reason.splitlines()[0] if reason else '?'}")
    if kind != expected:
        name = MessageType(kind).name if kind in MessageType._value2member_map_ else str(kind)
        raise PsiProtocolError(f"expected a {expected.name} message, got {name}")
    limit = payload_limit(expected, max_ids)
    if length > limit:
        raise PsiProtocolError(
            f"{expected.name} message of {length} bytes exceeds the limit of {limit} bytes"
        )
    return _read_exactly(stream, length, expected)


def _read_exactly(stream: BinaryIO, n: int, during: MessageType) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise PsiProtocolError(
                f"the peer closed the connection during the {during.name} message"
            )
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
