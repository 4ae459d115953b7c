"""Node identities (`umbra.secure.identity`): Ed25519 (simulation) and ECDSA P-384 (the
SuperNode authentication keys `umbra.deploy.pki` writes) sign and verify the same
domain-separated message; a signature never verifies under another key, key type, run,
stage or client; bad keys and roster files are one-line errors naming the client or file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from umbra.deploy.pki import generate_supernode_key, write_private_key, write_roster
from umbra.secure import identity
from umbra.secure.identity import IdentityError

MSG = {"run_id": 7, "stage": "advertise", "client_id": 1, "payload": b"keys"}


@pytest.fixture(scope="module")
def ecdsa_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[bytes, bytes]]:
    """Partition id -> (private key file bytes, OpenSSH public line), as pki writes them."""
    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for i in range(3):
        key = generate_supernode_key(folder, f"supernode-{i}")
        out[i] = (key.private_key.read_bytes(), key.public_key.read_bytes().strip())
    return out


def test_ed25519_signature_verifies_against_the_raw_public_key() -> None:
    private, roster = identity.generate_identities(range(3))
    sig = identity.sign(private[1], **MSG)  # type: ignore[arg-type]
    identity.verify(roster, sig, **MSG)  # type: ignore[arg-type]
    # independent reference: cryptography's own Ed25519 over the documented message
    Ed25519PublicKey.from_public_bytes(roster[1]).verify(sig, identity.signed_message(**MSG))  # type: ignore[arg-type]
    assert identity.public_identity(private[1]) == roster[1]


def test_ecdsa_p384_supernode_key_signs_and_verifies(
    ecdsa_keys: dict[int, tuple[bytes, bytes]],
) -> None:
    roster = {i: pub for i, (_, pub) in ecdsa_keys.items()}
    sig = identity.sign(ecdsa_keys[1][0], **MSG)  # type: ignore[arg-type]
    identity.verify(roster, sig, **MSG)  # type: ignore[arg-type]
    # independent reference: the public key as the SuperLink registered it, ECDSA-SHA384
    pub = serialization.load_ssh_public_key(roster[1])
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
    pub.verify(sig, identity.signed_message(**MSG), ec.ECDSA(hashes.SHA384()))  # type: ignore[arg-type]
    assert identity.public_identity(ecdsa_keys[1][0]) == roster[1]
    # the same key as PEM (PKCS#8) signs the same way
    key = serialization.load_ssh_private_key(ecdsa_keys[1][0], password=None)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    identity.verify(roster, identity.sign(pem, **MSG), **MSG)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["run_id", "stage", "client_id", "payload"])
def test_a_signature_is_bound_to_run_stage_client_and_payload(
    ecdsa_keys: dict[int, tuple[bytes, bytes]], field: str
) -> None:
    roster = {i: pub for i, (_, pub) in ecdsa_keys.items()}
    sig = identity.sign(ecdsa_keys[1][0], **MSG)  # type: ignore[arg-type]
    other = dict(MSG)
    other[field] = {"run_id": 8, "stage": "keygen", "client_id": 2, "payload": b"keyz"}[field]
    with pytest.raises(IdentityError, match="bad signature") as err:
        identity.verify(roster, sig, **other)  # type: ignore[arg-type]
    assert f"client {other['client_id']}" in str(err.value)


def test_wrong_key_and_cross_type_signatures_fail(
    ecdsa_keys: dict[int, tuple[bytes, bytes]],
) -> None:
    ed_private, ed_roster = identity.generate_identities([1])
    ec_roster = {1: ecdsa_keys[1][1]}
    ec_sig = identity.sign(ecdsa_keys[1][0], **MSG)  # type: ignore[arg-type]
    ed_sig = identity.sign(ed_private[1], **MSG)  # type: ignore[arg-type]
    # another node's ECDSA key, another Ed25519 key
    with pytest.raises(IdentityError, match="client 1: bad signature"):
        identity.verify(ec_roster, identity.sign(ecdsa_keys[2][0], **MSG), **MSG)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="client 1: bad signature"):
        identity.verify(ed_roster, identity.sign(identity.generate_identities([1])[0][1], **MSG),
                        **MSG)  # type: ignore[arg-type]  # fmt: skip
    # an ECDSA signature under an Ed25519 roster entry and the other way round
    with pytest.raises(IdentityError, match="client 1: malformed signature"):
        identity.verify(ed_roster, ec_sig, **MSG)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="client 1: bad signature"):
        identity.verify(ec_roster, ed_sig, **MSG)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="client 1: not in the identity roster"):
        identity.verify({2: ecdsa_keys[2][1]}, ec_sig, **MSG)  # type: ignore[arg-type]


def test_bad_keys_are_one_line_errors_naming_the_client(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="client 4: identity key is not a raw Ed25519"):
        identity.sign(b"not a key at all", run_id=1, stage="s", client_id=4, payload=b"")
    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip
    with pytest.raises(IdentityError, match="must be on P-384, not secp256r1"):
        identity.sign(pem, run_id=1, stage="s", client_id=4, payload=b"")
    with pytest.raises(IdentityError, match="client 3: roster key is not"):
        identity.verify({3: b"ecdsa-sha2-nistp384 garbage"}, b"x" * 90, run_id=1, stage="s",
                        client_id=3, payload=b"")  # fmt: skip


def test_key_and_roster_files(tmp_path: Path, ecdsa_keys: dict[int, tuple[bytes, bytes]]) -> None:
    keys = {i: generate_supernode_key(tmp_path, f"n{i}") for i in range(3)}
    roster_path = write_roster(tmp_path / "roster.txt", {i: k.public_key for i, k in keys.items()})
    roster = identity.read_roster(roster_path)
    assert sorted(roster) == [0, 1, 2]
    for i, k in keys.items():
        private = identity.read_identity_key(k.private_key)
        assert identity.public_identity(private) == k.public_key.read_bytes().strip()
        identity.check_own_key(roster, i, private)
    with pytest.raises(IdentityError, match="client 0: its identity key does not match"):
        identity.check_own_key(roster, 0, identity.read_identity_key(keys[1].private_key))
    with pytest.raises(IdentityError, match="client 5: not in its own identity roster"):
        identity.check_own_key(roster, 5, identity.read_identity_key(keys[1].private_key))
    missing = tmp_path / "nope.key"
    with pytest.raises(IdentityError, match=f"cannot read identity key {missing}"):
        identity.read_identity_key(missing)
    garbage = tmp_path / "garbage.key"
    write_private_key(garbage, b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    with pytest.raises(IdentityError, match=f"identity key {garbage} is not"):
        identity.read_identity_key(garbage)
    line = keys[0].public_key.read_text().split()
    for text, needle in [
        ("", "lists no node"),
        ("x " + " ".join(line[:2]), "line 1: expected '<partition id> <public key>'"),
        (
            "0 " + " ".join(line[:2]) + "\n0 " + " ".join(line[:2]),
            "line 2: partition 0 is listed twice",
        ),
        ("# c\n1 ssh-rsa AAAA", r"line 2 \(partition 1\) is not"),
    ]:
        bad = tmp_path / "bad-roster.txt"
        bad.write_text(text)
        with pytest.raises(IdentityError, match=needle) as err:
            identity.read_roster(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(IdentityError, match="cannot read roster"):
        identity.read_roster(tmp_path / "absent.txt")
