"""CKKS aggregation with TenSEAL: sums vs numpy, key provisioning, bad ciphertexts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.secure.he import (
    HE_STANDARD_MAX_LOG_Q,
    PRESETS,
    CiphertextError,
    CkksAggregator,
    CkksKeyring,
    CkksParams,
    HeAbort,
    flatten_arrays,
    unflatten_arrays,
)
from umbra.secure.he.ckks import update_digest
from umbra.secure.he.packing import from_slot_chunks, pack_digits, to_slot_chunks, unpack_digits

SMALL = CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49))


@pytest.fixture(scope="module")
def keyring() -> CkksKeyring:
    return CkksKeyring.generate(SMALL)


def _updates(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, size) for _ in range(n)]


@pytest.mark.parametrize("preset", ["umbra", "umbra-digits", "tenseal-default"])
def test_encrypted_sum_matches_plaintext_sum(preset: str) -> None:
    params = PRESETS[preset]
    dealer = CkksKeyring.generate(params)
    other = CkksKeyring.from_shared(dealer.shared_bytes(), params)  # a second client
    n, size = 4, 5000
    updates = _updates(n, size)
    encrypted = {
        i: (dealer if i % 2 else other).encrypt_update(
            u, client_id=i, round_number=0, num_clients=n, clip=1.0
        )
        for i, u in enumerate(updates)
    }
    server = CkksAggregator(dealer.server_context(), params, length=size)
    total, included = server.aggregate(encrypted)
    assert included == (0, 1, 2, 3)
    out = other.decrypt_sum(total, length=size, num_summed=n, clip=1.0, num_clients=n)
    ref = np.sum(updates, axis=0)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4


def test_server_context_cannot_decrypt(keyring: CkksKeyring) -> None:
    server_bytes = keyring.server_context()
    ctx = ts.context_from(server_bytes)
    assert not ctx.has_secret_key() and not ctx.has_public_key()
    with pytest.raises(ValueError):
        ctx.secret_key()
    with pytest.raises(ValueError, match="secret key"):
        CkksKeyring.from_shared(server_bytes, SMALL)
    # a TenSEAL vector linked to the server's context cannot be decrypted either
    client_ctx = ts.context_from(keyring.shared_bytes())
    client_ctx.global_scale = 2.0**40
    vec = ts.ckks_vector(client_ctx, [1.0, 2.0]) if client_ctx.has_public_key() else None
    if vec is None:  # symmetric keyring: build a public context to exercise TenSEAL's path
        pub = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[60, 49])
        pub.global_scale = 2.0**40
        vec = ts.ckks_vector(pub, [1.0, 2.0])
        server_bytes = pub.serialize(save_secret_key=False)
    remote = ts.ckks_vector_from(ts.context_from(server_bytes), vec.serialize())
    with pytest.raises(ValueError):
        remote.decrypt()


def test_another_key_does_not_decrypt(keyring: CkksKeyring) -> None:
    x = _updates(1, 3000)[0]
    blobs = keyring.encrypt(x, num_clients=1)
    stranger = CkksKeyring.generate(SMALL)
    wrong = stranger.decrypt_sum(blobs, length=3000, num_summed=1)
    assert np.linalg.norm(wrong - x) > 1e3 * np.linalg.norm(x)
    right = keyring.decrypt_sum(blobs, length=3000, num_summed=1)
    np.testing.assert_allclose(right, x, atol=1e-6)


def test_ciphertexts_are_seeded_and_small(keyring: CkksKeyring) -> None:
    size = 3 * SMALL.values_per_ciphertext
    blobs = keyring.encrypt(_updates(1, size)[0], num_clients=10)
    assert len(blobs) == 3
    per_value = sum(map(len, blobs)) / size
    assert per_value < 8.5  # vs TenSEAL default ~81 bytes per value
    assert SMALL.values_per_ciphertext == 4096


def test_garbled_and_wrong_length_ciphertexts_name_the_client(keyring: CkksKeyring) -> None:
    n, size = 5, 5000
    updates = _updates(n, size)
    enc = {
        i: keyring.encrypt_update(u, client_id=i, round_number=2, num_clients=n)
        for i, u in enumerate(updates)
    }
    server = CkksAggregator(keyring.server_context(), SMALL, length=size, round_number=2)
    # garbled in transit, tail bytes (SEAL alone would accept these): digest catches it
    tail = list(enc[1]["ciphertexts"])
    tail[0] = tail[0][:-20] + bytes(16) + tail[0][-4:]
    garbled_tail = {**enc[1], "ciphertexts": tail}
    with pytest.raises(CiphertextError, match="client 1: update garbled"):
        server.load(1, garbled_tail)
    # garbled by a client that recomputed the digest: SEAL's own checks catch it
    mid = list(enc[4]["ciphertexts"])
    half = len(mid[0]) // 2
    mid[0] = mid[0][:half] + bytes(b ^ 0xFF for b in mid[0][half : half + 16]) + mid[0][half + 16 :]
    garbled_mid = {
        **enc[4],
        "ciphertexts": mid,
        "digest": update_digest(mid, client_id=4, round_number=2),
    }
    with pytest.raises(CiphertextError, match="client 4: ciphertext 0 is garbled"):
        server.load(4, garbled_mid)
    short = {**enc[2], "ciphertexts": enc[2]["ciphertexts"][:1]}
    with pytest.raises(CiphertextError, match=r"client 2: expected 2 ciphertexts, got 1"):
        server.load(2, short)
    junk = [b"\x00" * 10, b"junk"]
    with pytest.raises(CiphertextError, match="client 3: ciphertext 0 is garbled"):
        server.load(
            3,
            {
                **enc[3],
                "ciphertexts": junk,
                "digest": update_digest(junk, client_id=3, round_number=2),
            },
        )
    with pytest.raises(CiphertextError, match="client 3: update for round"):
        server.load(3, {**enc[3], "round": 1})
    foreign_ring = CkksKeyring.generate(PRESETS["tenseal-default"])
    foreign = foreign_ring.encrypt(updates[0][:4096], num_clients=1) * 2
    with pytest.raises(
        CiphertextError, match=r"client 0: ciphertext 0 (is garbled|has the wrong parameters)"
    ):
        server.load(
            0,
            {
                "round": 2,
                "client_id": 0,
                "ciphertexts": foreign,
                "digest": update_digest(foreign, client_id=0, round_number=2),
            },
        )
    total, included = server.aggregate({**enc, 1: garbled_tail, 2: short, 4: garbled_mid})
    assert included == (0, 3)
    assert set(server.excluded) == {1, 2, 4}
    out = keyring.decrypt_sum(total, length=size, num_summed=2)
    ref = updates[0] + updates[3]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    # the same updates replayed in a later aggregation are rejected
    again = CkksAggregator(
        keyring.server_context(),
        SMALL,
        length=size,
        round_number=2,
        seen_digests=server.seen_digests,
    )
    with pytest.raises(HeAbort):
        again.aggregate({0: enc[0], 3: enc[3]}, min_clients=1)
    assert "replayed" in again.excluded[0]


def test_keys_stay_out_of_repr_and_pickles(keyring: CkksKeyring) -> None:
    assert "secret" not in repr(keyring).lower()
    with pytest.raises(TypeError):
        pickle.dumps(keyring)
    with pytest.raises(ValueError, match="must not hold the secret key"):
        CkksAggregator(keyring.shared_bytes(), SMALL, length=10)


def test_values_beyond_headroom_are_rejected(keyring: CkksKeyring) -> None:
    with pytest.raises(ValueError, match="values must lie in"):
        keyring.encrypt(np.array([1e6]), num_clients=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coeff_mod_bit_sizes": (60, 50)}, "128-bit security bound"),
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree"),
        ({"coeff_mod_bit_sizes": (60,)}, ">= 2 primes"),
        ({"scale_bits": 59}, "scale_bits"),
        ({"digits_per_real": 3, "digit_bits": 22}, "digit_bits"),
    ],
)
def test_parameter_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CkksParams(**kwargs)


def test_presets_are_128_bit_secure() -> None:
    for p in PRESETS.values():
        assert p.log_q <= HE_STANDARD_MAX_LOG_Q[p.poly_modulus_degree]


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 300), slots=st.integers(1, 16), cplx=st.booleans())
def test_slot_chunks_roundtrip(size: int, slots: int, cplx: bool) -> None:
    x = np.random.default_rng(size).normal(size=size)
    chunks = to_slot_chunks(x, slots=slots, complex_slots=cplx)
    assert chunks.shape[1] == slots
    np.testing.assert_array_equal(from_slot_chunks(chunks, length=size, complex_slots=cplx), x)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 200), bits=st.integers(1, 24), per=st.integers(1, 2))
def test_digits_roundtrip_and_sum_without_carries(size: int, bits: int, per: int) -> None:
    rng = np.random.default_rng(size)
    n = 3
    limit = ((1 << bits) - 1) // n
    if limit < 1:
        return
    levels = [rng.integers(0, limit + 1, size, dtype=np.uint64) for _ in range(n)]
    packed = sum(pack_digits(lv, bits=bits, per_real=per) for lv in levels)
    noisy = np.asarray(packed) + rng.uniform(-0.4, 0.4, np.shape(packed))
    out = unpack_digits(noisy, bits=bits, per_real=per, length=size)
    np.testing.assert_array_equal(out, np.sum(levels, axis=0).astype(np.uint64))


def test_flatten_unflatten() -> None:
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([7.0])}
    vec, spec = flatten_arrays(arrays)
    back = unflatten_arrays(vec, spec)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
