"""t-of-n Shamir secret sharing of 16- or 32-byte secrets, wrapping pycryptodome.

pycryptodome's `Crypto.Protocol.SecretSharing.Shamir` shares 16-byte secrets over
GF(2^128) with share indices 1..n; a 32-byte secret is split into two 16-byte blocks, each
shared with an independent polynomial, and the block shares of one index are concatenated
(a share has the secret's length). pycryptodome's interpolation is pure Python (about
10-30 ms per 16-byte block for thresholds around 10): the dominant server cost of SecAgg+.
Below the threshold, `combine_shares` returns a value unrelated to the secret (Shamir
sharing is not self-verifying: callers check reconstructions against a commitment).
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

__all__ = ["MAX_SHARES", "combine_shares", "split_secret"]

MAX_SHARES = 65535  # protocol limit (ids travel as u32; neighbourhoods are O(log n))
_BLOCK = 16
_LENGTHS = (16, 32)


def split_secret(secret: bytes, *, threshold: int, num_shares: int) -> list[tuple[int, bytes]]:
    """Split a 16- or 32-byte ``secret`` into ``num_shares`` shares (index 1..n, same length).

    Any ``threshold`` shares reconstruct it; fewer reveal nothing about it.
    """
    if len(secret) not in _LENGTHS:
        raise ValueError(f"secret must be 16 or 32 bytes, got {len(secret)}")
    if not 1 <= num_shares <= MAX_SHARES:
        raise ValueError(f"num_shares must be in [1, {MAX_SHARES}], got {num_shares}")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold must be in [1, num_shares={num_shares}], got {threshold}")
    blocks = [
        Shamir.split(threshold, num_shares, secret[k : k + _BLOCK], ssss=False)
        for k in range(0, len(secret), _BLOCK)
    ]
    return [(i + 1, b"".join(block[i][1] for block in blocks)) for i in range(num_shares)]


def combine_shares(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """Reconstruct a secret from shares ``(index, 16 or 32 bytes)``.

    Pass exactly ``threshold`` shares with distinct indices (pycryptodome's contract).
    """
    if not shares:
        raise ValueError("shares must not be empty")
    for index, share in shares:
        if not 1 <= index <= MAX_SHARES:
            raise ValueError(f"share index must be in [1, {MAX_SHARES}], got {index}")
        if len(share) not in _LENGTHS or len(share) != len(shares[0][1]):
            raise ValueError(f"shares must all be 16 or 32 bytes, got {len(share)}")
    length = len(shares[0][1])
    return b"".join(
        bytes(Shamir.combine([(i, s[k : k + _BLOCK]) for i, s in shares], ssss=False))
        for k in range(0, length, _BLOCK)
    )
