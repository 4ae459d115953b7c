"""How the generator's sums travel (umbra.synth.secure_release): the secure sum decodes to the
organisations' sums plus one noise of the planned size, a message or a partial sum alone
tells the coordinator nothing, and each organisation's own noise (local) is the full one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.quantize import dequantize_sum
from umbra.synth.secure_release import (
    GroupNoise,
    LocalNoise,
    SecureNoise,
    encoding_of,
    shares_for,
)


def _sums(rng: np.random.Generator, orgs: int, d: int, records: int, clip: float) -> list:
    """Each organisation's sum of ``records`` per-record terms of norm ≤ ``clip``."""
    out = []
    for _ in range(orgs):
        x = rng.normal(size=(records, d))
        x *= clip / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), clip)
        out.append({"a.teacher": x.sum(0), "a.count": np.array([float(records)] * 2)})
    return out


def test_shares_follow_the_threshold() -> None:
    assert shares_for(8, 0.67) == 6 and shares_for(3, 1.0) == 3 and shares_for(1, 0.5) == 1
    assert shares_for(100, 0.67) == 67
    with pytest.raises(ValueError):
        shares_for(8, 0.0)


def test_secure_sum_is_the_sum_plus_one_noise_of_the_planned_size() -> None:
    """Reference: the exact float sum (numpy); the residual's spread is √(n/t) σ Δ / γ,
    within sampling error over 40,000 entries, and the share plan keeps σΔ over t shares."""
    rng = np.random.default_rng(0)
    orgs, d, records = 5, 40_000, 50
    noise = {"a.teacher": GroupNoise(2.0, 0.5), "a.count": GroupNoise(3.0, math.sqrt(2))}
    sums = _sums(rng, orgs, d, records, 0.5)
    t = shares_for(orgs, 0.67)
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
