"""Long-term client identities: Ed25519 keys that authenticate protocol keys.

Each client holds an Ed25519 identity key; the *roster* (client id -> raw 32-byte public
key) is distributed out of band, before the run. Every ephemeral key or key-generation
message a client sends through the server is signed over (run id, stage, client id,
SHA-256 of the payload), so a server that substitutes a key, replays a message from another
run, stage or client, or invents a client is detected by the receivers (Bell et al.,
CCS 2020, malicious-server variant of SecAgg; the same PKI assumption as Mouchet et al.,
PoPETs 2021). Signatures from `cryptography` (RFC 8032); keys from the OS CSPRNG.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from umbra.errors import UmbraError

__all__ = [
    "IdentityError",
    "generate_identities",
    "public_identity",
    "sign",
    "signed_message",
    "verify",
]

_LABEL = b"umbra/identity/v1"


class IdentityError(UmbraError, ValueError):
    """A signature does not verify, or the signer is not in the roster."""


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_identities(ids: range | list[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Fresh identity keys for ``ids``: (id -> raw private key, id -> raw public key).

    The private keys go to their owners only; the second dict is the public roster."""
    private = {}
    roster = {}
    for i in ids:
        key = Ed25519PrivateKey.generate()
        private[int(i)] = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        roster[int(i)] = _raw_public(key)
    return private, roster


def public_identity(private: bytes) -> bytes:
    """The raw public key of a raw 32-byte Ed25519 private key."""
    return _raw_public(Ed25519PrivateKey.from_private_bytes(bytes(private)))


def signed_message(*, run_id: int, stage: str, client_id: int, payload: bytes) -> bytes:
    """The bytes a signature covers: label, run id, stage, client id, SHA-256(payload)."""
    tag = stage.encode()
    return (
        _LABEL
        + struct.pack("<QQH", run_id & (2**64 - 1), client_id, len(tag))
        + tag
        + hashlib.sha256(payload).digest()
    )


def sign(private: bytes, *, run_id: int, stage: str, client_id: int, payload: bytes) -> bytes:
    """Ed25519 signature of `signed_message`."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(private))
    return key.sign(
        signed_message(run_id=run_id, stage=stage, client_id=client_id, payload=payload)
    )


def verify(
    roster: Mapping[int, bytes],
    signature: object,
    *,
    run_id: int,
    stage: str,
    client_id: int,
    payload: bytes,
) -> None:
    """Check ``signature`` of ``client_id`` against the roster; IdentityError naming the
    client if it is unknown or the signature does not verify."""
    if client_id not in roster:
        raise IdentityError(f"client {client_id}: not in the identity roster")
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        raise IdentityError(f"client {client_id}: malformed signature")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(roster[client_id])).verify(
            bytes(signature),
            signed_message(run_id=run_id, stage=stage, client_id=client_id, payload=payload),
        )
    except InvalidSignature as err:
        raise IdentityError(f"client {client_id}: bad signature on its {stage} message") from err
