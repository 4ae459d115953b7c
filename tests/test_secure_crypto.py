"""SecAgg+ primitives against independent references (pycryptodome ChaCha20, hmac HKDF)."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import struct

import numpy as np
import pytest
from Crypto.Cipher import ChaCha20 as RefChaCha20

from umbra.secure.secagg import crypto


def _hkdf_reference(secret: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(bytes(32), secret, hashlib.sha256).digest()  # RFC 5869: empty salt = zeros
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_prg_matches_independent_chacha20_and_hkdf() -> None:
    seed = os.urandom(32)
    out = crypto.prg_uint32(seed, length=1000, round_number=7, purpose=b"p")
    key = _hkdf_reference(seed, b"p" + struct.pack("<Q", 7))
    stream = RefChaCha20.new(key=key, nonce=bytes(12)).encrypt(bytes(4000))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, np.frombuffer(stream, dtype="<u4"))


def test_prg_differs_across_rounds_purposes_and_seeds() -> None:
    seed, other = os.urandom(32), os.urandom(32)
    base = crypto.prg_uint32(seed, length=256, round_number=1, purpose=b"mask")
    variants = [
        crypto.prg_uint32(seed, length=256, round_number=2, purpose=b"mask"),
        crypto.prg_uint32(seed, length=256, round_number=1, purpose=b"self"),
        crypto.prg_uint32(other, length=256, round_number=1, purpose=b"mask"),
    ]
    np.testing.assert_array_equal(
        base, crypto.prg_uint32(seed, length=256, round_number=1, purpose=b"mask")
    )
    for v in variants:
        # independent uniform streams agree on a position with probability 2^-32
        assert np.count_nonzero(base == v) == 0


def test_prg_output_is_uniform() -> None:
    x = crypto.prg_uint32(os.urandom(32), length=200_000, round_number=0, purpose=b"u")
    std_of_mean = 2.0**32 / np.sqrt(12 * x.size)
    assert abs(x.astype(np.float64).mean() - 2.0**31) < 5 * std_of_mean
    counts = np.bincount(x >> 28, minlength=16)
    expected = x.size / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # 15 dof: P(chi2 > 50) < 1e-5


def test_agreement_is_symmetric_and_domain_separated() -> None:
    a, b = crypto.generate_keypair(), crypto.generate_keypair()
    k_ab = crypto.agree(a.private, b.public, info=b"x")
    assert k_ab == crypto.agree(b.private, a.public, info=b"x")
    assert k_ab != crypto.agree(a.private, b.public, info=b"y")
    c = crypto.generate_keypair()
    assert k_ab != crypto.agree(a.private, c.public, info=b"x")


def test_bad_public_keys_are_rejected() -> None:
    a = crypto.generate_keypair()
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.agree(a.private, b"\x01" * 31, info=b"x")
    with pytest.raises(ValueError):
        crypto.agree(a.private, bytes(32), info=b"x")  # low-order point


def test_aead_roundtrip_and_tampering() -> None:
    key = os.urandom(32)
    blob = crypto.aead_encrypt(key, b"share", aad=b"ctx")
    assert crypto.aead_decrypt(key, blob, aad=b"ctx") == b"share"
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    for bad_blob, aad, k in [
        (bytes(flipped), b"ctx", key),
        (blob, b"other", key),
        (blob, b"ctx", os.urandom(32)),
        (blob[:10], b"ctx", key),
    ]:
        with pytest.raises(crypto.AuthenticationError):
            crypto.aead_decrypt(k, bad_blob, aad=aad)


def test_private_key_round_trip_and_no_leak() -> None:
    pair = crypto.generate_keypair()
    raw = crypto.private_bytes(pair.private)
    assert crypto.public_from_private_bytes(raw) == pair.public
    assert raw.hex() not in repr(pair)
    with pytest.raises(TypeError):
        pickle.dumps(pair)


def test_commitment_binds_seed_client_and_round() -> None:
    seed = os.urandom(32)
    c = crypto.commit_seed(seed, client_id=1, round_number=2)
    assert (
        c
        == hashlib.sha256(
            b"umbra/secagg+/v1/self-seed-commitment" + struct.pack("<QQ", 1, 2) + seed
        ).digest()
    )
    assert c != crypto.commit_seed(seed, client_id=2, round_number=2)
    assert c != crypto.commit_seed(seed, client_id=1, round_number=3)
