"""What both sides of SecAgg+ agree on about messages: the message type, the share holders
of a neighbourhood, the labels bound into pair seeds and share ciphertexts, the digest of a
masked vector, and the checks on id lists and byte fields.

Messages are plain dicts of ints, bytes, lists of bytes and numpy arrays (keys in
`constants.Key`), ready to be put into Flower records.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from umbra.secure.secagg.constants import NONCE_BYTES, SHARE_AAD_LABEL, SHARE_PLAINTEXT_BYTES

__all__ = [
    "SHARE_CT_BYTES",
    "Message",
    "id_list",
    "is_bytes",
    "masked_digest",
    "pair_info",
    "share_aad",
    "share_holders",
]

Message = dict[str, Any]
#: An encrypted Shamir share: nonce, plaintext and the Poly1305 tag.
SHARE_CT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + 16


def share_holders(owner: int, graph: Mapping[int, frozenset[int]]) -> list[int]:
    """Share holders of ``owner``'s secrets, in share-index order (index = position + 1)."""
    return sorted(graph[owner] | {owner})


def pair_info(a: int, b: int, round_number: int) -> bytes:
    """HKDF info of the pair seed of clients ``a`` and ``b`` (order-free)."""
    lo, hi = min(a, b), max(a, b)
    return struct.pack("<QQQ", lo, hi, round_number)


def share_aad(owner: int, holder: int, round_number: int) -> bytes:
    """Associated data binding a share ciphertext to its round, owner and holder."""
    return SHARE_AAD_LABEL + struct.pack("<QQQ", round_number, owner, holder)


def masked_digest(masked: np.ndarray) -> bytes:
    """SHA-256 of a masked vector (detects corruption in transit and replays)."""
    return hashlib.sha256(np.ascontiguousarray(masked).tobytes()).digest()


def id_list(value: Any) -> list[int]:
    """A message's id list as ints (ValueError unless a 1-D integer array)."""
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("id list must be a 1-D integer array")
    return [int(v) for v in arr]


def is_bytes(value: Any, length: int) -> bool:
    """``value`` is a byte string of exactly ``length`` bytes."""
    return isinstance(value, bytes | bytearray) and len(value) == length
