"""Batched and in-place paths of threshold CKKS against independent references: SEAL's own
serialization and evaluator, Python-int arithmetic, per-ciphertext functions."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.secure.he import threshold as th
from umbra.secure.he.aggregator import ThresholdAggregator
from umbra.secure.he.ckks import CiphertextError, update_digest

PARAMS = th.ThresholdParams(data_bits=(38, 37))


@pytest.fixture(scope="module")
def ring() -> th.Ring:
    return th.Ring.of(PARAMS)


@pytest.fixture(scope="module")
def public_key(ring: th.Ring) -> object:
    pk = sealapi.PublicKey()
    sealapi.KeyGenerator(ring.context).create_public_key(pk)
    return pk


def _slots(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, n // 2) + 1j * rng.uniform(-1, 1, n // 2)


def _fresh(ring: th.Ring, pk: object, seed: int) -> object:
    return th.encrypt(ring, pk, _slots(seed, ring.n), scale=2.0**40)


def _reference_bits(values: np.ndarray, width: int) -> bytes:
    """Little-endian bit concatenation through one Python int."""
    acc = 0
    for i, v in enumerate(values.tolist()):
        acc |= int(v) << (i * width)
    return acc.to_bytes(-(-width * len(values) // 8), "little")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.integers(0, 40), st.integers(0, 2**32))
def test_pack_bits_matches_python_int_bit_concatenation(width: int, groups: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = 8 * groups + seed % 3 * (seed % 2)  # mostly whole groups of 8, some not
    v = rng.integers(0, 2**63, size=count, dtype=np.uint64) >> np.uint64(64 - width) if (
        width < 64) else rng.integers(0, 2**63, size=count, dtype=np.uint64) * np.uint64(2)  # fmt: skip
    if count:
        v[-1] = np.uint64((1 << width) - 1)
    blob = th.pack_bits(v, width)
    assert blob == _reference_bits(v, width)
    np.testing.assert_array_equal(th.unpack_bits(blob, width, count), v)


def test_pack_bits_refuses_values_wider_than_the_width() -> None:
    with pytest.raises(ValueError, match="exceed"):
        th.pack_bits(np.full(8, 1 << 20, dtype=np.uint64), 20)


def test_direct_read_equals_seal_serialization(ring: th.Ring, public_key: object) -> None:
    ct = _fresh(ring, public_key, 1)
    count = 2 * len(ring.data_primes) * ring.n
    direct = th._read_direct(ct, count)
    assert direct is not None
    np.testing.assert_array_equal(direct, th._read_serialized(ct, count))
    ring.evaluator.transform_from_ntt_inplace(ct)  # a changed object is read anew
    np.testing.assert_array_equal(th._read_direct(ct, count), th._read_serialized(ct, count))
    assert th._read_direct(ct, count - 1) is None  # a size that is not the object's
    pt = sealapi.Plaintext()
    ring.encoder.encode(_slots(2, ring.n).tolist(), 2.0**40, pt)
    assert th._read_direct(pt, pt.coeff_count()) is None  # only ciphertexts are read in place


def test_batched_transforms_equal_seal_one_polynomial_at_a_time(ring: th.Ring) -> None:
    rng = np.random.default_rng(3)
    m, k = 2 * th._BATCH + 3, len(ring.data_primes)  # crosses batch boundaries
    polys = np.stack([rng.integers(0, q, (m, ring.n), dtype=np.uint64)
                      for q in ring.data_primes], axis=1)  # fmt: skip
    coeff = ring.to_coeff_many(polys)
    for i in (0, th._BATCH - 1, th._BATCH, m - 1):
        ct = ring.ciphertext(np.stack([polys[i], np.ones((k, ring.n), dtype=np.uint64)]),
                             ntt=True, scale=1.0)  # fmt: skip
        ring.evaluator.transform_from_ntt_inplace(ct)
        want = th._read_serialized(ct, 2 * k * ring.n).reshape(2, k, ring.n)[0]
        np.testing.assert_array_equal(coeff[i], want)
    np.testing.assert_array_equal(ring.to_ntt_many(coeff), polys)


def test_numpy_sum_equals_seal_add_many(ring: th.Ring, public_key: object) -> None:
    cts = [_fresh(ring, public_key, s) for s in range(5)]
    shape = (2, len(ring.data_primes), ring.n)
    ours = th.sum_residues(np.stack([th.Ring.read(c, shape) for c in cts]), ring.data_primes)
    total = sealapi.Ciphertext()
    ring.evaluator.add_many(cts, total)
    np.testing.assert_array_equal(ours, th._read_serialized(total, ours.size).reshape(shape))


def test_aggregator_sum_equals_per_ciphertext_residue_sum(
    ring: th.Ring, public_key: object
) -> None:
    """The server adds the clients' rounded ``c0`` as integers and maps the sum to
    residues once: the same as adding each ciphertext's residues modulo each prime."""
    plan = th.ThresholdPlan(PARAMS, holders=4, threshold=3, max_decryptions=4, clip=1.0)
    drop, m = plan.c0_drop_bits, 3
    messages, c0_ref, c1_ref = {}, [], []
    for cid in range(4):
        blobs = [th.pack_ciphertext(ring, _fresh(ring, public_key, 10 * cid + j), c0_drop_bits=drop)
                 for j in range(m)]  # fmt: skip
        each = [th.unpack_ciphertext(ring, b, c0_drop_bits=drop) for b in blobs]
        c0_ref.append(np.stack([e[0] for e in each]))
        c1_ref.append(np.stack([e[1] for e in each]))
        messages[cid] = {"round": 1, "client_id": cid, "ciphertexts": blobs,
                         "digest": update_digest(blobs, client_id=cid, round_number=1)}  # fmt: skip
    agg = ThresholdAggregator(plan, length=m * ring.n, round_number=1)
    total = agg.aggregate(messages, min_clients=3)
    for got, parts in ((total.c0, c0_ref), (total.c1, c1_ref)):
        for j, q in enumerate(ring.data_primes):
            want = sum(p[:, j].astype(object) for p in parts) % q
            np.testing.assert_array_equal(got[:, j].astype(object), want)
    c0, c1 = th.unpack_ciphertexts(ring, messages[2]["ciphertexts"], c0_drop_bits=drop)
    np.testing.assert_array_equal(c0, c0_ref[2])
    np.testing.assert_array_equal(c1, c1_ref[2])
    garbled = list(messages[2]["ciphertexts"])
    garbled[1] = garbled[1][:-1]
    with pytest.raises(CiphertextError, match="ciphertext 1"):
        th.unpack_ciphertexts(ring, garbled, c0_drop_bits=drop)


def test_batched_partial_decryption_equals_python_int_reference(ring: th.Ring) -> None:
    rng = np.random.default_rng(5)
    m, k = 4, len(ring.data_primes)
    c1 = np.stack([rng.integers(0, q, (m, ring.n), dtype=np.uint64)
                   for q in ring.data_primes], axis=1)  # fmt: skip
    share = np.stack([rng.integers(0, q, ring.n, dtype=np.uint64) for q in ring.data_primes])
    lam = [int(rng.integers(1, q)) for q in ring.data_primes]
    noise = rng.integers(-(2**40), 2**40, (m, ring.n), dtype=np.int64)
    got = th.partial_decrypt_many(ring, c1, share, lagrange=lam, noise=noise)
    for i in range(m):
        product = np.stack([
            (c1[i, j].astype(object) * (share[j].astype(object) * lam[j] % q) % q).astype(np.uint64)
            for j, q in enumerate(ring.data_primes)
        ])  # fmt: skip
        coeff = ring.to_coeff(product)
        for j, q in enumerate(ring.data_primes):
            want = (coeff[j].astype(object) + noise[i].astype(object)) % q
            np.testing.assert_array_equal(got[i, j].astype(object), want)
    assert got.shape == (m, k, ring.n)


def test_share_integers_sum_to_the_residue_sum(ring: th.Ring) -> None:
    """Decoding adds the shares' rounded integers and maps the sum to residues once."""
    drop = 30  # 45-bit integers: the form a server sums
    rng = np.random.default_rng(6)
    shares = [np.stack([rng.integers(0, q, (3, ring.n), dtype=np.uint64)
                        for q in ring.data_primes], axis=1) for _ in range(4)]  # fmt: skip
    blobs = [[th.pack_share(ring, s[i], drop_bits=drop) for i in range(3)] for s in shares]
    ints = [th.unpack_shares_rounded(ring, b, drop_bits=drop) for b in blobs]
    assert all(x is not None for x in ints)
    summed = th.rounded_to_residues(sum(ints), ring.data_primes, drop)  # type: ignore[arg-type]
    per_share = [th.unpack_shares(ring, b, drop_bits=drop) for b in blobs]
    for j, q in enumerate(ring.data_primes):
        want = sum(p[:, j].astype(object) for p in per_share) % q
        np.testing.assert_array_equal(summed[:, j].astype(object), want)
    with pytest.raises(ValueError, match="share 0"):
        th.unpack_shares_rounded(ring, [blobs[0][0][:-1]], drop_bits=drop)


def test_batched_share_packing_and_residue_unpacking_equal_per_blob(ring: th.Ring) -> None:
    rng = np.random.default_rng(7)
    m, drop = 5, 30
    h = np.stack([rng.integers(0, q, (m, ring.n), dtype=np.uint64)
                  for q in ring.data_primes], axis=1)  # fmt: skip
    assert th.pack_shares(ring, h, drop_bits=drop) == [
        th.pack_share(ring, row, drop_bits=drop) for row in h
    ]
    blobs = [th.pack_residues(row, ring.data_primes) for row in h]
    got = th.unpack_residue_blobs(blobs, ring.data_primes, ring.n)
    want = np.stack([th.unpack_residues(b, ring.data_primes, ring.n) for b in blobs])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, h)
    out_of_range = h.copy()
    out_of_range[3, 0, 5] = ring.data_primes[0]  # fits the width, not the prime
    bad = [th.pack_residues(row, ring.data_primes) for row in out_of_range]
    with pytest.raises(ValueError, match="blob 3: residue out of range"):
        th.unpack_residue_blobs(bad, ring.data_primes, ring.n)
    with pytest.raises(ValueError, match="blob 1"):
        th.unpack_residue_blobs([blobs[0], blobs[1][:-1]], ring.data_primes, ring.n)
