"""The byte format of service requests and replies, shared by client and server.

``b"UMBRASV1"``, a little-endian u32 length and a JSON header (an object of plain numbers
and strings), a u32 count of blobs, then each blob as a u64 length and its bytes.
Ciphertexts and the client's public context travel as blobs (TenSEAL's own serialization:
SEAL's format, zstd-compressed). No pickles: a message is parsed with bounds checks and
nothing in it is executed. Every parse error is one `ServiceError` line.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from umbra.services.errors import ServiceError

__all__ = ["MAGIC", "MAX_HEADER_BYTES", "Message", "decode", "encode"]

MAGIC = b"UMBRASV1"
#: Largest JSON header accepted (it holds a few numbers and, in a reply, item ids).
MAX_HEADER_BYTES = 16 << 20


@dataclass
class Message:
    """A JSON header and a list of byte blobs."""

    header: dict[str, Any]
    blobs: list[bytes] = field(default_factory=list)


def encode(msg: Message) -> bytes:
    head = json.dumps(msg.header, separators=(",", ":")).encode()
    parts = [MAGIC, struct.pack("<I", len(head)), head, struct.pack("<I", len(msg.blobs))]
    for blob in msg.blobs:
        parts += [struct.pack("<Q", len(blob)), bytes(blob)]
    return b"".join(parts)


def decode(data: bytes, *, max_blobs: int) -> Message:
    """Parse ``data``; raises ServiceError naming what is wrong (never echoing the bytes)."""
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise ServiceError("not an Umbra service message (bad magic bytes)")
    pos = len(MAGIC)

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise ServiceError(f"message truncated in its {what}")
        out = view[pos : pos + n]
        pos += n
        return out

    (head_len,) = struct.unpack("<I", take(4, "header length"))
    if head_len > MAX_HEADER_BYTES:
        raise ServiceError(f"message header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(take(head_len, "header")).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ServiceError("message header is not JSON") from None
    if not isinstance(header, dict):
        raise ServiceError("message header must be a JSON object")
    (count,) = struct.unpack("<I", take(4, "blob count"))
    if count > max_blobs:
        raise ServiceError(f"message holds {count} blobs, more than the {max_blobs} accepted")
    blobs = []
    for k in range(count):
        (n,) = struct.unpack("<Q", take(8, f"blob {k} length"))
        blobs.append(bytes(take(n, f"blob {k}")))
    if pos != len(view):
        raise ServiceError(f"message has {len(view) - pos} trailing bytes")
    return Message(header, blobs)
