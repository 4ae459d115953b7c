"""Threshold CKKS: key recovery from raw decryptions, Shamir thresholds, flooding, the
collective key's structure, authenticated setup and refusals (references: Python-int
arithmetic, numpy sums, SEAL's own decryption, the Li-Micciancio attack)."""

from __future__ import annotations

import itertools
import math
import pickle
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.secure import identity
from umbra.secure.he import ckks as single_key
from umbra.secure.he import holder
from umbra.secure.he import threshold as th
from umbra.secure.he.aggregator import ThresholdAggregator, decode_sum
from umbra.secure.he.ckks import CiphertextError, CkksKeyring, CkksParams, HeAbort, update_digest
from umbra.secure.he.packing import to_slot_chunks

PARAMS = th.ThresholdParams()
RUN = 77
ROUNDS = 3
CLIP = 1.0
N_HOLDERS = 5
FRACTION = 0.6  # t = 3 of 5


# ---------------------------------------------------------------- the attack (test helper)


def _plaintext(context: Any, poly: np.ndarray, scale: float) -> Any:
    """A SEAL Plaintext at the context's first data level (NTT form)."""
    body = struct.pack("<4Q", *context.first_parms_id()) + struct.pack("<Qd", poly.size, scale)
    path = th._scratch()
    with open(path, "wb") as fh:
        fh.write(th._seal_blob(body + th._dyn_array(poly)))
    pt = sealapi.Plaintext()
    pt.load(context, path)
    return pt


def recover_secret(
    context: Any,
    primes: Sequence[int],
    c0_ntt: np.ndarray,
    c1_ntt: np.ndarray,
    released: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Li & Micciancio (EUROCRYPT 2021): re-encode the released decoded slot values with the
    same scale, ``d = c0 + c1 s`` exactly, so ``s = (d - c0) c1^-1`` per NTT coefficient."""
    pt = sealapi.Plaintext()
    sealapi.CKKSEncoder(context).encode([complex(z) for z in released], scale, pt)
    k, n = c0_ntt.shape
    d = th.Ring.read(pt, (k, n))
    s = np.empty((k, n), dtype=np.uint64)
    for j, q in enumerate(primes):
        diff = (d[j].astype(object) - c0_ntt[j].astype(object)) % q
        inv = np.array([pow(int(c), -1, q) for c in c1_ntt[j]], dtype=object)
        s[j] = ((diff * inv) % q).astype(np.uint64)
    return s


def decrypt_with(
    context: Any, primes: Sequence[int], c0: np.ndarray, c1: np.ndarray, s: np.ndarray, scale: float
) -> np.ndarray:
    """Decode ``c0 + c1 s`` (all NTT, Python-int products): the reals of the slots."""
    m = np.stack(
        [
            ((c0[j].astype(object) + c1[j].astype(object) * s[j].astype(object)) % q).astype(
                np.uint64
            )
            for j, q in enumerate(primes)
        ]
    )
    z = np.asarray(sealapi.CKKSEncoder(context).decode_complex(_plaintext(context, m, scale)))
    return np.concatenate([z.real, z.imag])


def _old_ciphertext(keyring: CkksKeyring, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    path = single_key._scratch_path()
    ct = single_key._load_ciphertext(keyring._seal, blob, path)
    k = ct.coeff_modulus_size()
    c0, c1 = th.Ring.read(ct, (2, k, ct.poly_modulus_degree()))
    return c0, c1


def test_key_recovery_succeeds_on_a_raw_single_key_decryption() -> None:
    """The old path: one client decrypts the sum and returns the raw approximate decryption."""
    params = CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49))
    keyring = CkksKeyring.generate(params)
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(0, 1, 4096), rng.normal(0, 1, 4096)
    blob1 = keyring.encrypt(x1, num_clients=1)[0]
    released = keyring.decrypt_sum([blob1], length=4096, num_summed=1)  # what the server got
    ctx = keyring._seal
    primes = [int(m.value()) for m in ctx.first_context_data().parms().coeff_modulus()]
    c0, c1 = _old_ciphertext(keyring, blob1)
    slots = to_slot_chunks(released, slots=2048, complex_slots=True)[0]
    s = recover_secret(ctx, primes, c0, c1, slots, 2.0**40)
    # with s the server decrypts a different client's ciphertext
    d0, d1 = _old_ciphertext(keyring, keyring.encrypt(x2, num_clients=1)[0])
    np.testing.assert_allclose(decrypt_with(ctx, primes, d0, d1, s, 2.0**40), x2, atol=1e-6)


# ---------------------------------------------------------------- an in-process federation


class Federation:
    """Holders and a server-side view, run through the real protocol functions."""

    def __init__(self, n: int = N_HOLDERS, *, length: int = 3000, rounds: int = ROUNDS) -> None:
        private, roster = identity.generate_identities(range(n))
        self.roster = roster
        self.cfgs = {
            i: holder.HolderConfig(
                client_id=i,
                identity_key=private[i],
                roster=roster,
                threshold=FRACTION,
                rounds=rounds,
                clip=CLIP,
            )
            for i in range(n)
        }
        self.states: dict[int, dict[str, Any]] = {i: {} for i in range(n)}
        self.seen: list[Any] = []  # everything the server receives or sends
        self.length = length
        ads = {i: holder.advertise(c, self.states[i], run_id=RUN) for i, c in self.cfgs.items()}
        ids = sorted(ads)
        self.ads = {
            "ids": np.asarray(ids, dtype=np.int64),
            "pks": [ads[i]["pk"] for i in ids],
            "commits": [ads[i]["commit"] for i in ids],
            "sigs": [ads[i]["sig"] for i in ids],
        }
        self.seen += [ads, self.ads]
        reveals = {
            i: holder.reveal(self.cfgs[i], self.states[i], self.ads, run_id=RUN) for i in ids
        }
        req = {
            "ids": self.ads["ids"],
            "nonces": [reveals[i]["nonce"] for i in ids],
            "length": length,
        }
        self.seen += [reveals, req]
        kg = {i: holder.keygen(self.cfgs[i], self.states[i], req, run_id=RUN) for i in ids}
        self.seen.append(kg)
        self.fin = {}
        for me in ids:
            request = {
                "ids": self.ads["ids"],
                "bs": [kg[o]["b"] for o in ids],
                "sigs": [kg[o]["sig"] for o in ids],
                "blobs": [kg[o]["blobs"][me] for o in ids],
            }
            self.seen.append(request)
            self.fin[me] = holder.finish(self.cfgs[me], self.states[me], request, run_id=RUN)
        self.seen.append(self.fin)
        self.acks = {"ack_ids": self.ads["ids"], "acks": [self.fin[i]["sig"] for i in ids]}
        for i in ids:
            holder.check_key_acks(self.cfgs[i], self.states[i], self.acks, run_id=RUN)
        self.plan = holder.holder_plan(self.cfgs[0], self.states[0])
        self.ring = th.Ring.of(self.plan.params)

    def encrypt(self, values: dict[int, np.ndarray], rnd: int) -> dict[int, dict[str, Any]]:
        out = {
            i: holder.encrypt_update(self.cfgs[i], self.states[i], v, round_number=rnd)
            for i, v in values.items()
        }
        self.seen.append(out)
        return out

    def shares(self, total: Any, subset: Sequence[int], rnd: int) -> dict[int, list[bytes]]:
        request = {"round": rnd, "T": np.asarray(subset, dtype=np.int64),
                   "c1": total.c1_blobs(self.ring)}  # fmt: skip
        self.seen.append(request)
        out = {
            j: holder.decryption_share(self.cfgs[j], self.states[j], request, round_number=rnd)[
                "shares"
            ]
            for j in subset
        }
        self.seen.append(out)
        return out

    def secret(self) -> np.ndarray:
        """Test-only: s = sum_j lambda_j sigma_j over all holders (Python ints)."""
        ids = sorted(self.states)[: self.plan.threshold]
        k = len(self.ring.data_primes)
        out = np.zeros((k, self.ring.n), dtype=np.uint64)
        for j, q in enumerate(self.ring.data_primes):
            acc = np.zeros(self.ring.n, dtype=object)
            for i in ids:
                sigma = np.frombuffer(self.states[i]["sigma"], dtype="<u8").reshape(k, -1)
                lam = th.lagrange_at_zero([x + 1 for x in ids], i + 1, q)
                acc = (acc + sigma[j].astype(object) * lam) % q
            out[j] = acc.astype(np.uint64)
        return out


@pytest.fixture(scope="module")
def fed() -> Federation:
    return Federation()


def _values(n: int, length: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(-CLIP, CLIP, length) for i in range(n)}


def _aggregate(fed: Federation, rnd: int, seed: int) -> tuple[Any, np.ndarray]:
    values = _values(N_HOLDERS, fed.length, seed)
    agg = ThresholdAggregator(fed.plan, length=fed.length, round_number=rnd)
    total = agg.aggregate(fed.encrypt(values, rnd), min_clients=3)
    return total, np.sum(list(values.values()), axis=0)


def test_plan_is_128_bit_and_threshold_from_own_config(fed: Federation) -> None:
    bits = (*PARAMS.data_bits, PARAMS.special_bits)
    assert sum(bits) <= single_key.HE_STANDARD_MAX_LOG_Q[PARAMS.poly_modulus_degree]
    assert fed.plan.threshold == math.ceil(FRACTION * N_HOLDERS) == 3
    assert fed.plan.max_decryptions == ROUNDS * 1
    # t > N/2 shares per release, at most tau per holder: floor(N tau / t) releases in all
    assert fed.plan.released_bound == N_HOLDERS * ROUNDS // 3 == 5
    assert fed.plan.flood_sigma == pytest.approx(math.sqrt(12 * 5) * 2**15 * fed.plan.noise_bound)
    assert fed.plan.value_bound >= N_HOLDERS * CLIP
    with pytest.raises(ValueError, match="security bound"):
        th.ThresholdParams(data_bits=(48, 48, 48, 48), special_bits=60)


def test_t_shares_recover_the_sum_and_t_minus_1_reveal_nothing(fed: Federation) -> None:
    total, ref = _aggregate(fed, 1, seed=1)
    shares = fed.shares(total, [0, 2, 4], 1)
    out = decode_sum(fed.plan, total, shares, length=fed.length)
    assert np.max(np.abs(out - ref)) < PARAMS.precision
    # t-1 of the same shares: the decoding is noise 100x larger than the values, and
    # uncorrelated with them
    partial = decode_sum(fed.plan, total, {j: shares[j] for j in (0, 2)}, length=fed.length)
    assert np.median(np.abs(partial - ref)) > 100 * np.max(np.abs(ref))
    assert abs(np.corrcoef(partial, ref)[0, 1]) < 0.1


def test_every_t_subset_decrypts(fed: Federation) -> None:
    """Shamir: any t of the N holders decrypt (each subset in its own round)."""
    subsets = list(itertools.combinations(range(N_HOLDERS), fed.plan.threshold))
    assert len(subsets) == 10
    many = Federation(length=1000, rounds=len(subsets))
    for rnd, subset in enumerate(subsets, start=1):
        total, ref = _aggregate(many, rnd, seed=rnd)
        out = decode_sum(many.plan, total, many.shares(total, list(subset), rnd), length=1000)
        assert np.max(np.abs(out - ref)) < PARAMS.precision, subset


def test_key_recovery_fails_on_the_flooded_threshold_decryption(fed: Federation) -> None:
    """The same attack on what the server sees now recovers nothing usable."""
    total, _ = _aggregate(fed, 2, seed=2)
    shares = fed.shares(total, [1, 2, 3], 2)
    released = decode_sum(fed.plan, total, shares, length=fed.length)
    ring = fed.ring
    slots = to_slot_chunks(released, slots=ring.n // 2, complex_slots=True)[0]
    c0 = ring.to_ntt(total.c0[0])
    guess = recover_secret(ring.context, ring.data_primes, c0, total.c1[0], slots, fed.plan.scale)
    assert not np.array_equal(guess, fed.secret())
    # a different ciphertext under the collective key stays opaque with the guess
    x = _values(1, fed.length, 9)[0]
    c0b, c1b = th.unpack_ciphertext(
        ring,
        holder.encrypt_update(fed.cfgs[0], fed.states[0], x, round_number=99)["ciphertexts"][0],
        c0_drop_bits=fed.plan.c0_drop_bits,
    )
    wrong = decrypt_with(ring.context, ring.data_primes, ring.to_ntt(c0b), c1b, guess,
                         fed.plan.scale)[: fed.length]  # fmt: skip
    assert np.median(np.abs(wrong - x)) > 100 * np.max(np.abs(x))
    assert abs(np.corrcoef(wrong, x)[0, 1]) < 0.1
    # control: the true s does decrypt it (the attack's decryption is not the failure)
    right = decrypt_with(ring.context, ring.data_primes, ring.to_ntt(c0b), c1b, fed.secret(),
                         fed.plan.scale)[: fed.length]  # fmt: skip
    assert np.max(np.abs(right - x)) < 1e-3


def test_collective_key_structure_b_equals_minus_a_s_plus_e(fed: Federation) -> None:
    """b + a s (Python-int products mod every key-level prime, 60-bit special prime too) is
    a small error: the sum of the holders' SEAL errors (std 3.2 each)."""
    ring = fed.ring
    k = len(ring.key_primes)
    a = th.common_poly(ring, bytes(fed.states[0]["seed"]))
    b = th.unpack_residues(bytes(fed.states[0]["b"]), ring.key_primes, ring.n)
    # s over all key primes: recombine the holders' s_i from fresh keygens is not possible
    # (only shares exist), so check one holder's share with a fresh keygen_share instead
    s_i, b_i = th.keygen_share(ring, a)
    e_ntt = np.stack(
        [
            ((b_i[j].astype(object) + a[j].astype(object) * s_i[j].astype(object)) % q).astype(
                np.uint64
            )
            for j, q in enumerate(ring.key_primes)
        ]
    )
    # to the coefficient domain at the data level (the first primes), centered
    e = ring.to_coeff(e_ntt[: len(ring.data_primes)])
    q0 = ring.data_primes[0]
    centered = np.where(e[0] > q0 // 2, e[0].astype(np.int64) - q0, e[0].astype(np.int64))
    assert np.max(np.abs(centered)) <= 41 and 2.5 < centered.std() < 4.0  # SEAL: std 3.2, cap 41
    assert k == 3 and b.shape == (k, ring.n)
    # the collective key itself, at the data primes (where s is shared): b + a s = sum e_i,
    # with s = sum_j lambda_j sigma_j reconstructed from t holders' shares (Python ints)
    s = fed.secret()
    kd = len(ring.data_primes)
    e_sum = np.stack(
        [
            ((b[j].astype(object) + a[j].astype(object) * s[j].astype(object)) % q).astype(
                np.uint64
            )
            for j, q in enumerate(ring.data_primes)
        ]
    )
    e_all = ring.to_coeff(e_sum)[0]
    c_all = np.where(e_all > q0 // 2, e_all.astype(np.int64) - q0, e_all.astype(np.int64))
    sd = 3.2 * math.sqrt(N_HOLDERS)
    assert np.max(np.abs(c_all)) <= 41 * N_HOLDERS and 0.8 * sd < c_all.std() < 1.2 * sd
    assert kd == 2
    # the collective key encrypts, and t holders decrypt (the structure's end-to-end check)
    total, ref = _aggregate(fed, 3, seed=3)
    out = decode_sum(fed.plan, total, fed.shares(total, [0, 1, 2], 3), length=fed.length)
    assert np.max(np.abs(out - ref)) < PARAMS.precision


def test_fresh_noise_is_below_the_bound() -> None:
    """Measured noise of a sum of fresh encryptions (unrounded SEAL ciphertexts, decrypted
    with the reconstructed s) stays below B, with a spread near the derivation's std."""
    fed = Federation(length=500)
    ring, plan = fed.ring, fed.plan
    from umbra.secure.he.holder import public_key

    pk = public_key(fed.cfgs[0], fed.states[0])
    s = fed.secret()
    k = len(ring.data_primes)
    rng = np.random.default_rng(5)
    zs = [
        rng.uniform(-1, 1, ring.n // 2) + 1j * rng.uniform(-1, 1, ring.n // 2)
        for _ in range(N_HOLDERS)
    ]
    cts = [th.Ring.read(th.encrypt(ring, pk, z, scale=plan.scale), (2, k, ring.n)) for z in zs]
    c0 = th.add_polys([c[0] for c in cts], ring.data_primes)
    c1 = th.add_polys([c[1] for c in cts], ring.data_primes)
    pts = []
    for z in zs:
        pt = sealapi.Plaintext()
        ring.encoder.encode([complex(v) for v in z], plan.scale, pt)
        pts.append(th.Ring.read(pt, (k, ring.n)))
    m = th.add_polys(pts, ring.data_primes)
    noisy = th._mulmod(c1, s, ring.data_primes)
    noise = ring.to_coeff(th._sub(th.add_polys([c0, noisy], ring.data_primes), m, ring.data_primes))
    q = math.prod(ring.data_primes)
    v = th._compose(noise, ring.data_primes)
    centered = np.array([int(x) - q if x > q // 2 else int(x) for x in v], dtype=np.float64)
    bound = plan.noise_bound
    std = (bound - N_HOLDERS) / PARAMS.tail_sigmas
    assert np.max(np.abs(centered)) <= bound
    assert 0.7 * std < centered.std() < 1.3 * std


def test_flooding_noise_has_the_predicted_std() -> None:
    sigma = 2.0**31.5
    n = 400_000
    e = th.flood_noise(n, sigma).astype(np.float64)
    assert abs(e.mean()) < 5 * sigma / math.sqrt(n)
    # std of the sample std is sigma / sqrt(2n): 5 of those
    assert abs(e.std() - sigma) < 5 * sigma / math.sqrt(2 * n)
    # Gaussian shape: fraction within one sigma (0.6827, binomial std ~7e-4)
    assert abs(np.mean(np.abs(e) < sigma) - 0.6827) < 0.005
    # fresh OS randomness per call
    assert not np.array_equal(th.flood_noise(64, sigma), th.flood_noise(64, sigma))


def test_decrypted_error_has_the_predicted_std(fed: Federation) -> None:
    big = Federation(length=PARAMS.values_per_ciphertext, rounds=1)
    total, ref = _aggregate(big, 1, seed=4)
    out = decode_sum(big.plan, total, big.shares(total, [0, 1, 2], 1), length=big.length)
    err = out - ref
    assert 0.8 * big.plan.value_std < err.std() < 1.2 * big.plan.value_std
    assert np.max(np.abs(err)) < PARAMS.precision


def test_shamir_and_lagrange_against_python_ints() -> None:
    q = th.Ring.of(PARAMS).data_primes[0]
    secret = np.random.default_rng(0).integers(0, q, size=(1, 16), dtype=np.uint64)
    xs = [1, 2, 5, 9]
    shares = th.shamir_shares(secret, threshold=3, xs=xs, primes=[q])
    for subset in itertools.combinations(xs, 3):
        got = [
            sum(int(shares[x][0, c]) * th.lagrange_at_zero(list(subset), x, q) for x in subset) % q
            for c in range(16)
        ]
        assert got == [int(v) for v in secret[0]]
    two = [sum(int(shares[x][0, 0]) * th.lagrange_at_zero([1, 2], x, q) for x in (1, 2)) % q]
    assert two != [int(secret[0, 0])]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 64), st.integers(1, 300), st.integers(0, 2**32))
def test_pack_bits_roundtrip(width: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = (
        rng.integers(0, 2**63, size=count, dtype=np.uint64) >> np.uint64(64 - width)
        if width < 64
        else rng.integers(0, 2**63, size=count, dtype=np.uint64)
    )
    blob = th.pack_bits(v, width)
    assert len(blob) == -(-width * count // 8)
    np.testing.assert_array_equal(th.unpack_bits(blob, width, count), v)


# ---------------------------------------------------------------- authentication, refusals


def test_bad_signature_or_unknown_client_is_refused() -> None:
    fed_ids = range(3)
    private, roster = identity.generate_identities(fed_ids)
    cfgs = [holder.HolderConfig(client_id=i, identity_key=private[i], roster=roster,
                                threshold=0.67, rounds=1, clip=1.0) for i in fed_ids]  # fmt: skip
    states: list[dict[str, Any]] = [{} for _ in fed_ids]
    ads = [holder.advertise(c, s, run_id=RUN) for c, s in zip(cfgs, states, strict=True)]
    good = {
        "ids": np.arange(3),
        "pks": [a["pk"] for a in ads],
        "commits": [a["commit"] for a in ads],
        "sigs": [a["sig"] for a in ads],
    }
    # an active server swaps client 2's X25519 key for its own: signature fails, named
    swapped = {**good, "pks": [*good["pks"][:2], bytes(32)]}
    with pytest.raises(identity.IdentityError, match="client 2: bad signature"):
        holder.reveal(cfgs[0], dict(states[0]), swapped, run_id=RUN)
    # a replay from another run
    with pytest.raises(identity.IdentityError, match="client 0: bad signature"):
        holder.reveal(cfgs[0], {**states[0], "run": RUN + 1}, good, run_id=RUN + 1)
    # a client not in the roster (the server invents client 7)
    outsider_priv, _ = identity.generate_identities([7])
    fake = holder.advertise(
        holder.HolderConfig(client_id=7, identity_key=outsider_priv[7], roster=roster,
                            threshold=0.67, rounds=1, clip=1.0), {}, run_id=RUN)  # fmt: skip
    added = {
        "ids": np.arange(4) * np.array([1, 1, 1, 0]) + np.array([0, 0, 0, 7]),
        "pks": [*good["pks"], fake["pk"]],
        "commits": [*good["commits"], fake["commit"]],
        "sigs": [*good["sigs"], fake["sig"]],
    }
    with pytest.raises(identity.IdentityError, match="client 7: not in the identity roster"):
        holder.reveal(cfgs[0], dict(states[0]), added, run_id=RUN)
    # the honest list passes
    holder.reveal(cfgs[0], states[0], good, run_id=RUN)


def test_decryption_refusals(fed: Federation) -> None:
    fresh = Federation(length=1000, rounds=2)
    total, _ = _aggregate(fresh, 1, seed=6)
    c1 = total.c1_blobs(fresh.ring)
    cfg, state = fresh.cfgs[0], fresh.states[0]
    with pytest.raises(
        holder.DecryptionRefused, match="client 0: decryption set of 2 < threshold 3"
    ):
        holder.decryption_share(cfg, state, {"T": np.array([0, 1]), "c1": c1}, round_number=1)
    with pytest.raises(holder.DecryptionRefused, match="not a set of key holders"):
        holder.decryption_share(cfg, state, {"T": np.array([1, 2, 3]), "c1": c1}, round_number=1)
    with pytest.raises(holder.DecryptionRefused, match="client 0: 2 ciphertexts to decrypt"):
        holder.decryption_share(
            cfg, state, {"T": np.array([0, 1, 2]), "c1": c1 * 2}, round_number=1
        )
    holder.decryption_share(cfg, state, {"T": np.array([0, 1, 2]), "c1": c1}, round_number=1)
    with pytest.raises(holder.DecryptionRefused, match="second decryption request in round 1"):
        holder.decryption_share(cfg, state, {"T": np.array([0, 1, 3]), "c1": c1}, round_number=1)
    holder.decryption_share(cfg, state, {"T": np.array([0, 1, 2]), "c1": c1}, round_number=2)
    with pytest.raises(holder.DecryptionRefused, match="decryption budget of 2 ciphertexts spent"):
        holder.decryption_share(cfg, state, {"T": np.array([0, 1, 2]), "c1": c1}, round_number=3)


def test_garbled_replayed_and_wrong_ciphertexts_name_the_client(fed: Federation) -> None:
    values = _values(N_HOLDERS, fed.length, 7)
    enc = fed.encrypt(values, 5)
    agg = ThresholdAggregator(fed.plan, length=fed.length, round_number=5)
    blob = enc[1]["ciphertexts"][0]
    garbled = [blob[:100] + bytes(b ^ 0xFF for b in blob[100:116]) + blob[116:]]
    with pytest.raises(CiphertextError, match="client 1: update garbled in transit"):
        agg.load(1, {**enc[1], "ciphertexts": garbled})
    # garbled by the client itself (digest recomputed): residues out of range
    high = [blob[: len(blob) - 8] + b"\xff" * 8]
    with pytest.raises(CiphertextError, match="client 1: ciphertext 0: ciphertext is garbled"):
        agg.load(1, {**enc[1], "ciphertexts": high,
                     "digest": update_digest(high, client_id=1, round_number=5)})  # fmt: skip
    short = [blob[:-1]]
    with pytest.raises(CiphertextError, match="client 2: ciphertext 0: ciphertext has"):
        agg.load(2, {**enc[2], "ciphertexts": short,
                     "digest": update_digest(short, client_id=2, round_number=5)})  # fmt: skip
    with pytest.raises(CiphertextError, match="client 3: update for round"):
        agg.load(3, {**enc[3], "round": 4})
    with pytest.raises(CiphertextError, match="client 0: expected 1 ciphertexts, got 2"):
        agg.load(0, {**enc[0], "ciphertexts": enc[0]["ciphertexts"] * 2})
    total = agg.aggregate(enc, min_clients=3)
    assert total.included == (0, 1, 2, 3, 4)
    again = ThresholdAggregator(fed.plan, length=fed.length, round_number=5,
                                seen_digests=agg.seen_digests)  # fmt: skip
    with pytest.raises(HeAbort, match="0 valid updates < 3"):
        again.aggregate(enc, min_clients=3)
    assert all("replayed" in r for r in again.excluded.values())


def test_values_outside_the_range_are_refused(fed: Federation) -> None:
    x = np.zeros(fed.length)
    x[3] = 1.5 * CLIP
    with pytest.raises(ValueError, match=r"values must lie in \[-1, 1\]"):
        holder.encrypt_update(fed.cfgs[0], fed.states[0], x, round_number=1)
    x[3] = np.nan
    with pytest.raises(ValueError, match="client 0: update has non-finite values"):
        holder.encrypt_update(fed.cfgs[0], fed.states[0], x, round_number=1)
    with pytest.raises(ValueError, match="update has 10 values"):
        holder.encrypt_update(fed.cfgs[0], fed.states[0], np.zeros(10), round_number=1)
    with pytest.raises(ValueError, match="exceeds the decodable range"):
        holder.make_plan(PARAMS, holders=5, threshold=0.6, rounds=1, length=10, clip=1e12)


def test_server_side_objects_never_contain_a_secret(fed: Federation) -> None:
    """Nothing the server sent or received, nor its aggregation objects, holds a holder's
    key share, X25519 key or nonce before reveal, or a secret-key share in the clear."""
    total, _ = _aggregate(fed, 8, seed=8)
    fed.shares(total, [0, 3, 4], 8)
    view = pickle.dumps((fed.seen, total.c0, total.c1, fed.plan))
    for state in fed.states.values():
        sigma = bytes(state["sigma"])
        for off in range(0, len(sigma) - 32, len(sigma) // 7):
            assert sigma[off : off + 32] not in view
        assert "x25519" not in state and "own" not in state  # dropped after setup
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(fed.cfgs[0])
    assert "identity" not in repr(fed.cfgs[0]) and fed.cfgs[0].identity_key.hex() not in repr(
        fed.cfgs[0]
    )
    # no Shamir evaluation of any holder appears either (only AEAD ciphertexts of them)
    assert fed.plan.__dict__.keys() >= {"params", "holders", "threshold"}
    assert not any(
        isinstance(v, bytes) and len(v) == 2 * 8 * fed.ring.n for v in fed.plan.__dict__.values()
    )


def test_uint64_modular_arithmetic_matches_python_ints() -> None:
    """The overflow-free uint64 paths (products of 45-bit residues, 90-bit CRT, rounding)
    against exact Python-int arithmetic."""
    ring = th.Ring.of(PARAMS)
    rng = np.random.default_rng(11)
    q0, q1 = ring.data_primes
    for q in (q0, q1, (1 << 47) - 115):
        a = rng.integers(0, q, 4096, dtype=np.uint64)
        b = rng.integers(0, q, 4096, dtype=np.uint64)
        a[:2], b[:2] = q - 1, q - 1
        want = [int(x) * int(y) % q for x, y in zip(a, b, strict=True)]
        assert th.mulmod_u64(a, b, q).tolist() == want
    poly = np.stack([rng.integers(0, q, 4096, dtype=np.uint64) for q in (q0, q1)])
    poly[:, 0] = [q0 - 1, q1 - 1]
    exact = th._compose(poly, [q0, q1])
    lo, hi = th._compose2(poly, [q0, q1])
    assert [int(x) + (int(y) << 64) for x, y in zip(lo, hi, strict=True)] == list(exact)
    for drop in (1, 20, 30, 63):
        r_lo, r_hi = th._round_shift(lo, hi, drop)
        want = [(int(v) + (1 << (drop - 1))) >> drop for v in exact]
        assert [int(x) + (int(y) << 64) for x, y in zip(r_lo, r_hi, strict=True)] == want
        blob = th._pack_rounded(poly, [q0, q1], drop)
        back = th._unpack_rounded(blob, [q0, q1], drop, 4096)
        q = q0 * q1
        for j, p in enumerate((q0, q1)):
            assert back[j].tolist() == [(w << drop) % q % p for w in want]


def test_a_key_not_confirmed_by_t_holders_is_refused() -> None:
    """An active server that gives holders different key sets cannot collect t
    confirmations of the same key: encryption is refused before any update is encrypted."""
    fed = Federation(n=4, length=500, rounds=1)
    state = {k: v for k, v in fed.states[0].items() if k != "acked"}
    cfg = fed.cfgs[0]
    with pytest.raises(holder.SetupError, match="no confirmed collective key"):
        holder.encrypt_update(cfg, state, np.zeros(500), round_number=1)
    # a confirmation over a different key (here: another holder's signature on another b)
    bad = {**fed.acks, "acks": [*fed.acks["acks"][:3], fed.acks["acks"][0]]}
    with pytest.raises(identity.IdentityError, match="client 3: bad signature on its finish"):
        holder.check_key_acks(cfg, dict(state), bad, run_id=RUN)
    few = {"ack_ids": np.array([0, 1]), "acks": fed.acks["acks"][:2]}
    with pytest.raises(
        holder.SetupError, match="2 key holders confirmed the collective key < threshold 3"
    ):
        holder.check_key_acks(cfg, dict(state), few, run_id=RUN)
    holder.check_key_acks(cfg, state, fed.acks, run_id=RUN)
    holder.encrypt_update(cfg, state, np.zeros(500), round_number=1)
