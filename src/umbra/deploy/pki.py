"""Throwaway public-key infrastructure for a local Flower deployment.

A local federation needs three kinds of key material, all made here with `cryptography`
and written into one folder:

* a certificate authority (CA): a self-signed ECDSA P-384 certificate whose private key
  signs exactly one server certificate and is then no longer needed;
* the SuperLink's TLS server certificate for ``localhost`` / ``127.0.0.1``, signed by the
  CA (SuperNodes and the ``flwr`` CLI trust it through the CA certificate alone);
* one authentication key pair per SuperNode: ECDSA P-384 in OpenSSH encoding, which is
  what Flower 1.42 reads (``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register <public key>`` both use OpenSSH key files). The same key is
  the node's identity in the signing secure-aggregation modes (`umbra.secure.identity`):
  `write_roster` lists the public keys by partition id, and a node's ``--node-config``
  names its key file and its roster copy (`IDENTITY_KEY_NODE_CONFIG`,
  `ROSTER_NODE_CONFIG`: paths, never key bytes).

Private keys are written with mode 0600 and never logged. The loaders turn every failure
(missing file, garbage, expired or not-yet-valid certificate, a key that does not belong to
its certificate, a certificate another CA signed) into a one-line `CertificateError`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from umbra.deploy.errors import CertificateError

__all__ = [
    "DEFAULT_VALIDITY",
    "IDENTITY_KEY_NODE_CONFIG",
    "ROSTER_NODE_CONFIG",
    "ServerCredentials",
    "SuperNodeKey",
    "generate_certificate_authority",
    "generate_server_credentials",
    "generate_supernode_key",
    "load_certificate",
    "load_supernode_private_key",
    "verify_server_credentials",
    "write_private_key",
    "write_roster",
]

_CURVE = ec.SECP384R1()
_PRIVATE_MODE = 0o600
#: Node-config keys naming a node's identity files: its private key (the SuperNode
#: authentication key) and its own copy of the roster (`umbra.secure.identity.read_roster`).
IDENTITY_KEY_NODE_CONFIG = "umbra-identity-key"
ROSTER_NODE_CONFIG = "umbra-roster"
#: Validity of the throwaway certificates: long enough for any local run.
DEFAULT_VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class ServerCredentials:
    """Paths of the SuperLink's TLS material (``--ssl-ca-certfile``, ``--ssl-certfile``,
    ``--ssl-keyfile``). Only ``key`` is secret; ``ca_cert`` is what clients trust."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class SuperNodeKey:
    """Paths of one SuperNode's authentication key pair (OpenSSH, ECDSA P-384). The
    SuperNode keeps ``private_key``; the SuperLink operator registers ``public_key``."""

    private_key: Path
    public_key: Path


def write_private_key(path: Path, data: bytes) -> None:
    """Write secret bytes to ``path`` so that only the owner can ever read them (the file
    is created with mode 0600, not chmod-ed after the bytes are on disk)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Umbra local federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate_certificate_authority(
    *,
    not_before: datetime.datetime | None = None,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    common_name: str = "Umbra throwaway CA",
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed CA (ECDSA P-384, path length 0: it signs leaf certificates
    only). The key lives in memory; callers keep it only as long as they sign with it."""
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    key = ec.generate_private_key(_CURVE)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    server_key: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime.datetime,
    validity: datetime.timedelta,
) -> x509.Certificate:
    """A TLS server certificate for the loopback names, signed by the CA."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + validity)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )


def generate_server_credentials(
    folder: Path,
    *,
    not_before: datetime.datetime | None = None,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
) -> ServerCredentials:
    """Make a throwaway CA and a server certificate for ``localhost``/``127.0.0.1``; write
    ``ca.crt``, ``server.crt`` (PEM) and ``server.key`` (PKCS#8 PEM, 0600) into ``folder``.

    The CA's private key is discarded once it has signed: nobody can issue a second
    certificate that the SuperNodes would trust. ``not_before`` and ``validity`` exist so
    tests can build expired or not-yet-valid certificates.
    """
    folder.mkdir(parents=True, exist_ok=True)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key, ca_cert = generate_certificate_authority(not_before=start, validity=validity)
    server_key = ec.generate_private_key(_CURVE)
    cert = _server_certificate(ca_key, ca_cert, server_key, not_before=start, validity=validity)
    del ca_key
    paths = ServerCredentials(
        ca_cert=folder / "ca.crt", cert=folder / "server.crt", key=folder / "server.key"
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(
        paths.key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return paths


def generate_supernode_key(folder: Path, name: str) -> SuperNodeKey:
    """Make one SuperNode authentication key pair (ECDSA P-384) and write
    ``<name>.key`` (OpenSSH private key, 0600) and ``<name>.pub`` (OpenSSH public key)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(_CURVE)
    paths = SuperNodeKey(private_key=folder / f"{name}.key", public_key=folder / f"{name}.pub")
    write_private_key(
        paths.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    paths.public_key.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return paths


def write_roster(path: Path, public_keys: Mapping[int, Path]) -> Path:
    """Write the identity roster ``path``: one line ``<partition id> <OpenSSH public key>``
    per node, from its ``.pub`` file (what the SuperLink registered). Public data: the
    coordinator hands every node and the server a copy out of band."""
    lines = ["# partition id, then the node's public identity key (OpenSSH)"]
    for pid in sorted(public_keys):
        key = _read(public_keys[pid], "SuperNode public key").decode("ascii", "replace")
        fields = key.split()
        if len(fields) < 2:
            raise CertificateError(f"SuperNode public key {public_keys[pid]} is not OpenSSH")
        lines.append(f"{int(pid)} {fields[0]} {fields[1]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertificateError(f"cannot read {what} {path}: {err.strerror}") from None


def load_certificate(
    path: Path, *, what: str = "certificate", at: datetime.datetime | None = None
) -> x509.Certificate:
    """Read a PEM certificate and check that it is valid at ``at`` (default: now)."""
    data = _read(path, what)  # outside the try: CertificateError is a ValueError too
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{what} {path} is not a PEM certificate") from None
    moment = at or datetime.datetime.now(datetime.UTC)
    if moment < cert.not_valid_before_utc:
        raise CertificateError(
            f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if moment > cert.not_valid_after_utc:
        raise CertificateError(
            f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    return cert


def _load_pem_private_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"{what} {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{what} {path} is not an elliptic-curve key")
    return key


def load_supernode_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read a SuperNode authentication key as ``flower-supernode`` does (OpenSSH, EC)."""
    data = _read(path, "SuperNode key")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"SuperNode key {path} is not an OpenSSH private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"SuperNode key {path} is not an elliptic-curve key")
    return key


def verify_server_credentials(
    credentials: ServerCredentials, *, at: datetime.datetime | None = None
) -> None:
    """Check before any process starts that the SuperLink's TLS files are usable: both
    certificates readable and valid now, the server certificate signed by the CA, and the
    private key the one the certificate names."""
    ca = load_certificate(credentials.ca_cert, what="CA certificate", at=at)
    cert = load_certificate(credentials.cert, what="server certificate", at=at)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"server certificate {credentials.cert} is not signed by CA {credentials.ca_cert}"
        ) from None
    key = _load_pem_private_key(credentials.key, "server key")
    if key.public_key() != cert.public_key():
        raise CertificateError(
            f"server key {credentials.key} does not match certificate {credentials.cert}"
        )
