"""Long-term node identities: the keys that authenticate protocol keys, and the roster.

Each node holds a private identity key; the *roster* (partition id -> public key) is
distributed out of band, before the run. Every ephemeral key or key-generation message a
client sends through the server is signed over (run id, stage, client id, SHA-256 of the
payload), so a server that substitutes a key, replays a message from another run, stage
or client, or invents a client is detected by the receivers (Bell et al., CCS 2020,
malicious-server variant of SecAgg; the same PKI assumption as Mouchet et al., PoPETs
2021).

Two key types, dispatched on the key itself:

* **Ed25519** (RFC 8032), raw 32-byte keys: what the simulation generates per run;
* **ECDSA P-384** with SHA-384: the SuperNode authentication key of a deployment (the
  private key as `umbra.deploy.pki` writes it, OpenSSH or PEM, unencrypted; the public key
  as the OpenSSH line registered with the SuperLink, ``ecdsa-sha2-nistp384 AAAA...``), so
  a node's protocol identity is the key the SuperLink already authenticates it by.

A roster entry is the raw 32-byte Ed25519 key or an OpenSSH public-key line (Ed25519 or
ECDSA P-384). A roster file (`read_roster`) has one line per node, ``<partition id>
<OpenSSH public key>`` (`umbra.deploy.pki.write_roster` writes one). Signatures from
`cryptography`; keys from the OS CSPRNG. A bad key is a one-line `IdentityError` naming
the client or the file.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from umbra.errors import UmbraError

__all__ = [
    "IdentityError",
    "PrivateIdentity",
    "PublicIdentity",
    "check_own_key",
    "generate_identities",
    "load_private_key",
    "load_public_key",
    "public_identity",
    "read_identity_key",
    "read_roster",
    "run_key",
    "sign",
    "signed_message",
    "verify",
]

_LABEL = b"umbra/identity/v1"
_ED25519_BYTES = 32
_ED25519_SIGNATURE_BYTES = 64
#: A DER-encoded ECDSA P-384 signature is at most 104 bytes.
_MAX_SIGNATURE_BYTES = 128
_CURVE = ec.SECP384R1

PrivateIdentity = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicIdentity = Ed25519PublicKey | ec.EllipticCurvePublicKey


class IdentityError(UmbraError, ValueError):
    """A signature does not verify, the signer is not in the roster, or a key or roster
    cannot be used (one line naming the client or the file)."""


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_identities(ids: range | list[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Fresh Ed25519 identity keys for ``ids``: (id -> raw private key, id -> raw public
    key). The private keys go to their owners only; the second dict is the public roster."""
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


def _check_curve(key: PrivateIdentity | PublicIdentity, who: str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and not (
        isinstance(key.curve, _CURVE)
    ):
        raise IdentityError(f"{who}: an ECDSA identity key must be on P-384, not {key.curve.name}")


def load_private_key(data: bytes, *, who: str = "identity key") -> PrivateIdentity:
    """A private identity key from raw Ed25519 bytes (32) or an unencrypted OpenSSH / PEM
    file's bytes (Ed25519 or ECDSA P-384); `IdentityError` naming ``who`` otherwise."""
    data = bytes(data)
    if len(data) == _ED25519_BYTES:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key: object
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(
            f"{who} is not a raw Ed25519 key or an unencrypted OpenSSH/PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{who} is neither an Ed25519 nor an ECDSA P-384 key")
    _check_curve(key, who)
    return key


@functools.lru_cache(maxsize=1024)
def load_public_key(data: bytes, *, who: str = "identity key") -> PublicIdentity:
    """A public identity key from raw Ed25519 bytes (32) or an OpenSSH public-key line
    (``ssh-ed25519 ...`` or ``ecdsa-sha2-nistp384 ...``); `IdentityError` naming ``who``."""
    data = bytes(data)
    if len(data) == _ED25519_BYTES:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key: object = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(
            f"{who} is not a raw Ed25519 key or an OpenSSH public-key line"
        ) from None
    if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise IdentityError(f"{who} is neither an Ed25519 nor an ECDSA P-384 key")
    _check_curve(key, who)
    return key


def _public_bytes(key: PublicIdentity) -> bytes:
    """A roster entry: raw bytes for Ed25519, the OpenSSH line for ECDSA."""
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def public_identity(private: bytes) -> bytes:
    """The roster entry of a private identity key: the raw public key of an Ed25519 key,
    the OpenSSH public-key line of an ECDSA P-384 key."""
    return _public_bytes(load_private_key(private).public_key())


def check_own_key(roster: Mapping[int, bytes], client_id: int, private: bytes) -> None:
    """`IdentityError` unless the roster lists ``client_id`` with the public half of
    ``private`` (a node refuses to run with a roster that does not name it correctly)."""
    if client_id not in roster:
        raise IdentityError(f"client {client_id}: not in its own identity roster")
    own = load_private_key(private, who=f"client {client_id}: identity key").public_key()
    listed = load_public_key(bytes(roster[client_id]), who=f"client {client_id}: roster key")
    if type(own) is not type(listed) or _public_bytes(own) != _public_bytes(listed):
        raise IdentityError(f"client {client_id}: its identity key does not match its roster entry")


def run_key(run_id: int) -> int:
    """The run id as signed and stored (63 bits, fits a Flower ConfigRecord int)."""
    return int(run_id) & (2**63 - 1)


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
    """The signature of `signed_message` with ``private`` (Ed25519, or ECDSA P-384 with
    SHA-384, DER-encoded), whichever key type it is."""
    key = load_private_key(private, who=f"client {client_id}: identity key")
    message = signed_message(run_id=run_id, stage=stage, client_id=client_id, payload=payload)
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA384()))


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
    client if it is unknown, its roster key is unusable or the signature does not verify
    (a signature of another key type never does)."""
    if client_id not in roster:
        raise IdentityError(f"client {client_id}: not in the identity roster")
    key = load_public_key(bytes(roster[client_id]), who=f"client {client_id}: roster key")
    if not isinstance(signature, bytes | bytearray) or not (
        len(signature) == _ED25519_SIGNATURE_BYTES
        if isinstance(key, Ed25519PublicKey)
        else 0 < len(signature) <= _MAX_SIGNATURE_BYTES
    ):
        raise IdentityError(f"client {client_id}: malformed signature")
    message = signed_message(run_id=run_id, stage=stage, client_id=client_id, payload=payload)
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(bytes(signature), message)
        else:
            key.verify(bytes(signature), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as err:
        raise IdentityError(f"client {client_id}: bad signature on its {stage} message") from err


# ---------------------------------------------------------------- files


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise IdentityError(f"cannot read {what} {path}: {err.strerror}") from None


def read_identity_key(path: Path) -> bytes:
    """A node's private identity key file (its SuperNode authentication key: OpenSSH or
    PEM, ECDSA P-384 or Ed25519), checked to load; the bytes stay in memory only."""
    data = _read(path, "identity key")
    load_private_key(data, who=f"identity key {path}")
    return data


def read_roster(path: Path) -> dict[int, bytes]:
    """The roster file ``path``: one line per node, ``<partition id> <OpenSSH public
    key>`` (blank lines and ``#`` comments skipped). `IdentityError` naming the file and
    line for a bad id, a repeated id, an unusable key, or an empty roster."""
    text = _read(path, "roster").decode("utf-8", errors="replace")
    roster: dict[int, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, key = line.partition(" ")
        where = f"roster {path} line {number}"
        try:
            pid = int(head)
        except ValueError:
            raise IdentityError(f"{where}: expected '<partition id> <public key>'") from None
        if pid in roster:
            raise IdentityError(f"{where}: partition {pid} is listed twice")
        entry = key.strip().encode()
        load_public_key(entry, who=f"{where} (partition {pid})")
        roster[pid] = entry
    if not roster:
        raise IdentityError(f"roster {path} lists no node")
    return roster
