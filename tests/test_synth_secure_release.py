"""How the generator's sums travel (umbra.synth.secure_release): the secure sum decodes to the
organisations' sums plus one noise of the planned size, a message or a partial sum alone
tells the coordinator nothing, and each organisation's own noise (local) is the full one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from umbra.privacy.client_dp import shares_needed
from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.quantize import dequantize_sum
from umbra.synth.secure_release import (
    GroupNoise,
    LocalNoise,
    SecureNoise,
    encoding_of,
)


def _sums(rng: np.random.Generator, orgs: int, d: int, records: int, clip: float) -> list:
    """Each organisation's sum of ``records`` per-record terms of norm ≤ ``clip``."""
    out = []
    for _ in range(orgs):
        x = rng.normal(size=(records, d))
        x *= clip / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), clip)
        out.append({"a.teacher": x.sum(0), "a.count": np.array([float(records)] * 2)})
    return out


def test_secure_sum_is_the_sum_plus_one_noise_of_the_planned_size() -> None:
    """Reference: the exact float sum (numpy); the residual's spread is √(n/t) σ Δ / γ,
    within sampling error over 40,000 entries, and the share plan keeps σΔ over t shares."""
    rng = np.random.default_rng(0)
    orgs, d, records = 5, 40_000, 50
    noise = {"a.teacher": GroupNoise(2.0, 0.5), "a.count": GroupNoise(3.0, math.sqrt(2))}
    sums = _sums(rng, orgs, d, records, 0.5)
    t = shares_needed(0.67, orgs)
    assert t == 4
    secure = SecureNoise(orgs, shares=t, records=orgs * records)
    rnd = secure.round(3, noise)
    for i, s in enumerate(sums):
        rnd.add(i, s, SecureRandom.for_testing(10 + i))
    total = rnd.total()
    exact = sum(s["a.teacher"] for s in sums)
    resid = total["a.teacher"] - exact
    want = rnd.noise_std("a.teacher", d)
    spec, plan = encoding_of(noise["a.teacher"], dim=d, records=orgs * records,
                             organisations=orgs, shares=t)  # fmt: skip
    assert plan.share_sigma * math.sqrt(t) == pytest.approx(2.0 * plan.sensitivity)
    # σ Δ / γ: the float noise; the rounding costs √d / γ of sensitivity on top of C
    assert want == pytest.approx(math.sqrt(orgs / t) * 2.0 * (0.5 + math.sqrt(d) / spec.scale))
    assert want < 1.05 * math.sqrt(orgs / t) * 2.0 * 0.5
    assert abs(resid.mean()) < 4 * want / math.sqrt(d)
    assert resid.std() == pytest.approx(want, rel=0.03)
    assert total["a.count"].shape == (2,)


def test_a_message_or_a_partial_sum_is_masked() -> None:
    """One organisation's message is spread over the whole ring (its levels would sit in a
    narrow band around the encoding's centre), and the sum of all but one decodes to
    nothing like the partial sum; a second round masks the same sums afresh."""
    rng = np.random.default_rng(1)
    orgs, d = 4, 20_000
    noise = {"a.teacher": GroupNoise(1.0, 0.5), "a.count": GroupNoise(1.0, math.sqrt(2))}
    sums = _sums(rng, orgs, d, 30, 0.5)
    secure = SecureNoise(orgs, shares=3, records=120)
    rnd = secure.round(1, noise)
    for i, s in enumerate(sums):
        rnd.add(i, s, SecureRandom.for_testing(i))
    shares = rnd._shares["a.teacher"]
    one = shares[0].astype(np.float64) / 2.0**32
    assert one.std() == pytest.approx(math.sqrt(1 / 12), rel=0.03)  # uniform on the ring
    spec, _ = encoding_of(noise["a.teacher"], dim=d, records=120, organisations=orgs, shares=3)
    partial = np.zeros(d, dtype=np.uint32)
    for s in shares[:-1]:
        partial += s
    decoded = dequantize_sum(partial, spec=spec, num_summed=orgs - 1)
    exact = sum(s["a.teacher"] for s in sums[:-1])
    assert np.abs(decoded - exact).mean() > 100 * rnd.noise_std("a.teacher", d)
    again = secure.round(2, noise)
    again.add(0, sums[0], SecureRandom.for_testing(0))
    assert not np.array_equal(again._shares["a.teacher"][0], shares[0])
    with pytest.raises(ValueError, match="1 of 4 organisations sent"):
        again.total()


def test_local_noise_is_each_organisations_full_noise() -> None:
    rng = np.random.default_rng(2)
    noise = {"a.teacher": GroupNoise(2.0, 0.5), "a.count": GroupNoise(1.0, 1.0)}
    sums = _sums(rng, 3, 30_000, 20, 0.5)
    local = LocalNoise(3, noise)
    for i, s in enumerate(sums):
        local.add(i, s, SecureRandom.for_testing(i))
    resid = local.total()["a.teacher"] - sum(s["a.teacher"] for s in sums)
    assert local.noise_std("a.teacher", 30_000) == pytest.approx(math.sqrt(3) * 1.0)
    assert resid.std() == pytest.approx(math.sqrt(3) * 1.0, rel=0.03)


def test_noise_too_large_for_the_ring_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit a 32-bit secure sum"):
        encoding_of(GroupNoise(1e6, 1.0), dim=1_000_000, records=100, organisations=8, shares=6)
    with pytest.raises(TypeError, match="cannot be pickled"):
        import pickle

        pickle.dumps(SecureNoise(2, shares=2, records=10))


def test_colluders_removing_their_own_shares_leave_the_full_noise() -> None:
    """The collusion claim: n − t organisations subtract what they know of the total (their
    own masks, hence their own levels and noise shares); the other t shares still carry
    σΔ, and t − 1 would not."""
    rng = np.random.default_rng(3)
    orgs, d = 5, 30_000
    t = shares_needed(0.67, orgs)  # 4 of 5: one colluder tolerated
    noise = {"a.teacher": GroupNoise(2.0, 0.5), "a.count": GroupNoise(1.0, math.sqrt(2))}
    sums = _sums(rng, orgs, d, 40, 0.5)
    secure = SecureNoise(orgs, shares=t, records=orgs * 40)
    rnd = secure.round(7, noise)
    for i, s in enumerate(sums):
        rnd.add(i, s, SecureRandom.for_testing(20 + i))
    spec, plan = encoding_of(noise["a.teacher"], dim=d, records=orgs * 40,
                             organisations=orgs, shares=t)  # fmt: skip
    full = plan.share_sigma * math.sqrt(t)  # σΔ in integer units
    shares = rnd._shares["a.teacher"]

    def own_noise(i: int) -> np.ndarray:
        """What organisation i knows of its share: unmasked levels minus its encoding."""
        levels = shares[i] - secure._mask(i, 7, "a.teacher", d)  # wraps mod 2^32
        return levels.astype(np.float64) - (sums[i]["a.teacher"] + spec.clip) * spec.scale

    total = (rnd.total()["a.teacher"] - sum(s["a.teacher"] for s in sums)) * spec.scale
    left = total - own_noise(0)  # the one tolerated colluder removes its share
    assert left.std() == pytest.approx(full, rel=0.03)  # t shares: the full σΔ
    fewer = left - own_noise(1)  # a second colluder: beyond the claim
    assert fewer.std() == pytest.approx(full * math.sqrt((t - 1) / t), rel=0.03)
    assert fewer.std() < 0.9 * full
