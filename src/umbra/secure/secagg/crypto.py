"""Cryptographic primitives for SecAgg+, thin typed wrappers over `cryptography`.

* X25519 key pairs and Diffie-Hellman agreement, with HKDF-SHA256 key derivation;
* a PRG expanding a 32-byte seed into a uint32 (or uint16) vector with ChaCha20 (RFC 8439
  stream);
  the round number and a purpose label are bound in through HKDF, so masks differ per
  round and per use;
* ChaCha20-Poly1305 authenticated encryption of the share messages relayed by the server;
* a SHA-256 commitment to the self-mask seed (lets the server check reconstructions), and
  one to the client's graph randomness (commit-reveal of the graph seed).

Randomness comes from the OS CSPRNG only (``os.urandom`` inside `cryptography`).
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from umbra.secure.secagg.constants import (
    COMMIT_LABEL,
    GRAPH_COMMIT_LABEL,
    KEY_BYTES,
    NONCE_BYTES,
    RING_BITS,
    RING_WIDTHS,
)

__all__ = [
    "AuthenticationError",
    "KeyPair",
    "aead_decrypt",
    "aead_encrypt",
    "agree",
    "commit_graph_randomness",
    "commit_seed",
    "generate_keypair",
    "hkdf",
    "keypair_from",
    "load_public_key",
    "new_seed",
    "prg_ring",
    "prg_uint32",
    "private_bytes",
    "public_from_private_bytes",
    "ring_dtype",
]


class AuthenticationError(ValueError):
    """An authenticated ciphertext did not verify (garbled, forged or wrong key/context)."""


class KeyPair:
    """An X25519 key pair. ``repr`` shows the public key only; it cannot be pickled."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def private(self) -> X25519PrivateKey:
        return self._private

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]}…)"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("KeyPair holds a secret key and cannot be pickled")


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the OS CSPRNG."""
    return KeyPair(X25519PrivateKey.generate())


def keypair_from(raw: bytes) -> KeyPair:
    """The key pair of a raw 32-byte X25519 private key (e.g. stored by `private_bytes`)."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes")
    return KeyPair(X25519PrivateKey.from_private_bytes(bytes(raw)))


def new_seed(length: int = KEY_BYTES) -> bytes:
    """``length`` random bytes from the OS CSPRNG."""
    return os.urandom(length)


def private_bytes(private: X25519PrivateKey) -> bytes:
    """Raw 32-byte encoding of an X25519 private key (for Shamir sharing only)."""
    return private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_from_private_bytes(raw: bytes) -> bytes:
    """The raw public key belonging to a raw 32-byte X25519 private key."""
    return (
        X25519PrivateKey.from_private_bytes(raw)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def load_public_key(raw: object) -> X25519PublicKey:
    """Parse a raw 32-byte X25519 public key; ValueError if it is not 32 bytes."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise ValueError(f"public key must be {KEY_BYTES} bytes")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def hkdf(secret: bytes, *, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def agree(private: X25519PrivateKey, peer_public: bytes, *, info: bytes) -> bytes:
    """X25519 agreement followed by HKDF-SHA256 with ``info``: a 32-byte shared key.

    Raises ValueError for a malformed or low-order peer key (all-zero shared secret).
    """
    shared = private.exchange(load_public_key(peer_public))
    return hkdf(shared, info=info)


def prg_uint32(seed: bytes, *, length: int, round_number: int, purpose: bytes) -> np.ndarray:
    """Expand ``seed`` (16 or 32 bytes) into ``length`` uniform elements of Z_{2^32} (dtype uint32).

    The ChaCha20 key is HKDF(seed, purpose || round), so one seed yields independent
    streams per round and purpose; the stream starts at block 0 with a zero nonce, which
    is safe because every derived key is used for one stream only.
    """
    return prg_ring(seed, length=length, round_number=round_number, purpose=purpose)


def prg_ring(
    seed: bytes, *, length: int, round_number: int, purpose: bytes, bits: int = RING_BITS
) -> np.ndarray:
    """``length`` uniform elements of Z_{2^bits} (``bits`` in `RING_WIDTHS`: dtype uint16
    or uint32) from the stream of :func:`prg_uint32` (``bits / 8`` bytes each)."""
    if len(seed) not in (16, KEY_BYTES):
        raise ValueError(f"seed must be 16 or {KEY_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if round_number < 0:
        raise ValueError(f"round_number must be >= 0, got {round_number}")
    dtype = ring_dtype(bits)
    key = hkdf(seed, info=purpose + struct.pack("<Q", round_number))
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(dtype.itemsize * length))
    return np.frombuffer(stream, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def ring_dtype(bits: int) -> np.dtype[Any]:
    """The numpy dtype of Z_{2^bits} (uint16 or uint32: numpy's wrap-around is the ring's
    arithmetic). Raises ValueError for a width not in `RING_WIDTHS`."""
    if bits not in RING_WIDTHS:
        raise ValueError(f"ring width must be one of {RING_WIDTHS} bits, got {bits}")
    return np.dtype(np.uint16 if bits == 16 else np.uint32)


def aead_encrypt(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 encryption: random 12-byte nonce || ciphertext || 16-byte tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Inverse of `aead_encrypt`; AuthenticationError if the blob does not verify."""
    if not isinstance(blob, bytes | bytearray) or len(blob) < NONCE_BYTES + 16:
        raise AuthenticationError("ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(
            bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), aad
        )
    except InvalidTag as err:
        raise AuthenticationError("ciphertext failed authentication") from err


def commit_seed(seed: bytes, *, client_id: int, round_number: int) -> bytes:
    """SHA-256 commitment to a random seed (hiding: the seed has >= 128 bits of entropy)."""
    header = COMMIT_LABEL + struct.pack("<QQ", client_id, round_number)
    return hashlib.sha256(header + seed).digest()


def commit_graph_randomness(randomness: bytes, *, client_id: int, round_number: int) -> bytes:
    """SHA-256 commitment to a client's 32-byte graph randomness ``r_i`` (hiding and binding:
    the server learns nothing of ``r_i`` from it and the client cannot change it later)."""
    if len(randomness) != KEY_BYTES:
        raise ValueError(f"graph randomness must be {KEY_BYTES} bytes, got {len(randomness)}")
    header = GRAPH_COMMIT_LABEL + struct.pack("<QQ", client_id, round_number)
    return hashlib.sha256(header + randomness).digest()
