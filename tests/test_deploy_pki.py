"""Throwaway PKI for a local deployment: the chain verifies with an independent TLS stack,
private keys are 0600, Flower's own loaders accept the SuperNode keys, and bad files are
refused with one line naming the file and the problem."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from umbra.deploy.errors import CertificateError
from umbra.deploy.pki import (
    ServerCredentials,
    generate_server_credentials,
    generate_supernode_key,
    load_certificate,
    load_supernode_private_key,
    verify_server_credentials,
)
from umbra.errors import DataError

UTC = datetime.UTC


def _handshake(creds: ServerCredentials, trusted_ca: Path, hostname: str) -> str:
    """A TLS handshake over a socket pair, verified by OpenSSL (Python's ssl module) the
    way a SuperNode verifies the SuperLink; returns the negotiated protocol."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(creds.cert, creds.key)
    client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
    left, right = socket.socketpair()
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(right, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            server_error.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(left, server_hostname=hostname) as tls:
            version = tls.version() or ""
            tls.sendall(b"x")
    finally:
        thread.join(timeout=10)
    return version


def test_server_certificate_chain_verifies_with_openssl(tmp_path: Path) -> None:
    creds = generate_server_credentials(tmp_path)
    verify_server_credentials(creds)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # cryptography's own check
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # OpenSSL accepts the chain for both names a SuperNode may dial ...
    assert _handshake(creds, creds.ca_cert, "localhost").startswith("TLS")
    assert _handshake(creds, creds.ca_cert, "127.0.0.1").startswith("TLS")


def test_certificate_from_another_ca_fails_the_handshake(tmp_path: Path) -> None:
    creds = generate_server_credentials(tmp_path / "a")
    other = generate_server_credentials(tmp_path / "b")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(creds, other.ca_cert, "localhost")
    # ... and a certificate for localhost does not cover another host name
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(creds, creds.ca_cert, "example.org")


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    creds = generate_server_credentials(tmp_path)
    node = generate_supernode_key(tmp_path, "supernode-0")
    for secret in (creds.key, node.private_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert b"PRIVATE KEY" not in creds.ca_cert.read_bytes() + creds.cert.read_bytes()
    assert b"PRIVATE" not in node.public_key.read_bytes()
    # the CA key is not written anywhere: nobody can mint a second trusted certificate
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.crt",
        "server.crt",
        "server.key",
        "supernode-0.key",
        "supernode-0.pub",
    ]


def test_supernode_key_is_what_flower_loads(tmp_path: Path) -> None:
    node = generate_supernode_key(tmp_path, "n")
    private = load_supernode_private_key(node.private_key)
    # `flwr supernode register` parses the public key file with Flower's own loader
    registered = try_load_public_key(node.public_key)
    assert registered == public_key_to_bytes(private.public_key())
    assert private.curve.name == "secp384r1"
    # and `flower-supernode --auth-supernode-private-key` reads OpenSSH private keys
    loaded = serialization.load_ssh_private_key(node.private_key.read_bytes(), None)
    assert loaded.public_key() == private.public_key()


def test_two_nodes_get_different_keys(tmp_path: Path) -> None:
    a = generate_supernode_key(tmp_path, "a")
    b = generate_supernode_key(tmp_path, "b")
    assert a.public_key.read_bytes() != b.public_key.read_bytes()


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=10)
    creds = generate_server_credentials(
        tmp_path, not_before=past, validity=datetime.timedelta(days=1)
    )
    with pytest.raises(CertificateError, match=r"expired on \d{4}-\d\d-\d\d") as info:
        verify_server_credentials(creds)
    assert str(creds.ca_cert) in str(info.value) or str(creds.cert) in str(info.value)
    assert "\n" not in str(info.value)


def test_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    future = datetime.datetime.now(UTC) + datetime.timedelta(days=2)
    creds = generate_server_credentials(tmp_path, not_before=future)
    with pytest.raises(CertificateError, match="is not valid before"):
        load_certificate(creds.cert)
    # the same file is accepted at a moment inside its validity period
    load_certificate(creds.cert, at=future + datetime.timedelta(hours=1))


def test_unreadable_and_garbled_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"cannot read certificate .*missing\.crt"):
        load_certificate(tmp_path / "missing.crt")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(CertificateError, match=r"garbage\.crt is not a PEM certificate"):
        load_certificate(garbage)
    with pytest.raises(CertificateError, match="is not an OpenSSH private key"):
        load_supernode_private_key(garbage)


def test_mismatched_key_and_foreign_certificate_are_refused(tmp_path: Path) -> None:
    a = generate_server_credentials(tmp_path / "a")
    b = generate_server_credentials(tmp_path / "b")
    with pytest.raises(CertificateError, match="does not match certificate"):
        verify_server_credentials(ServerCredentials(a.ca_cert, a.cert, b.key))
    with pytest.raises(CertificateError, match="is not signed by CA"):
        verify_server_credentials(ServerCredentials(b.ca_cert, a.cert, a.key))


def test_regenerating_into_a_folder_replaces_keys_owner_only(tmp_path: Path) -> None:
    first = generate_server_credentials(tmp_path)
    old_key = first.key.read_bytes()
    first.key.chmod(0o644)  # even a loosened old file is replaced by a 0600 one
    second = generate_server_credentials(tmp_path)
    assert second.key.read_bytes() != old_key
    assert stat.S_IMODE(second.key.stat().st_mode) == 0o600
    shutil.rmtree(tmp_path)


def test_local_federation_names_each_nodes_key_and_own_roster_copy(tmp_path: Path) -> None:
    """With node identities the SuperNode keys become the roster (server's copy plus one in
    each node's own folder) and each node config names its key and its copy, as paths."""
    from umbra.deploy.local_federation import LocalFederation
    from umbra.deploy.pki import IDENTITY_KEY_NODE_CONFIG, ROSTER_NODE_CONFIG
    from umbra.secure.identity import check_own_key, read_identity_key, read_roster

    fed = LocalFederation(tmp_path / "deploy", nodes=3, node_identities=True)
    try:
        fed._make_keys()
        assert fed.roster_file is not None and fed.key_dir is not None
        roster = read_roster(fed.roster_file)
        assert sorted(roster) == [0, 1, 2]
        for i, node in enumerate(fed.nodes):
            assert node.key is not None
            key_path = Path(str(node.node_config[IDENTITY_KEY_NODE_CONFIG]))
            own = Path(str(node.node_config[ROSTER_NODE_CONFIG]))
            assert key_path == node.key.private_key and own.parent == fed.key_dir / node.name
            assert stat.S_IMODE(own.parent.stat().st_mode) == 0o700
            assert read_roster(own) == roster
            assert roster[i] == node.key.public_key.read_bytes().strip()
            check_own_key(roster, i, read_identity_key(key_path))
        key_dir = fed.key_dir
    finally:
        fed.stop()
    assert not key_dir.exists() and fed.roster_file is None
    insecure = LocalFederation(tmp_path / "plain", nodes=2, insecure=True, node_identities=True)
    assert not insecure.node_identities  # no node keys, nothing to sign with
    with pytest.raises(DataError, match="umbra-roster=/nope is not a file"):
        LocalFederation(
            tmp_path / "d", nodes=1, node_configs=[{"umbra-roster": "/nope"}]
        )._check_inputs()
