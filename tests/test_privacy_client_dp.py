"""Client-level DP: flat clipping against numpy, noise spread checked statistically."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.privacy.client_dp import (
    central_noise,
    clip_update,
    noise_share,
    noise_shares_like,
    noised_mean_update,
    update_norm,
)
from umbra.privacy.randomness import SecureRandom


def _update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(5,))}


def test_clip_update_matches_numpy():
    rng = np.random.default_rng(0)
    upd = _update(rng)
    flat = np.concatenate([a.ravel().astype(np.float64) for a in upd.values()])
    ref_norm = float(np.linalg.norm(flat))
    assert update_norm(upd) == pytest.approx(ref_norm, rel=1e-12)
    clipped, norm = clip_update(upd, clip_norm=1.0)
    assert norm == pytest.approx(ref_norm, rel=1e-12)
    assert update_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    for k, a in upd.items():
        assert clipped[k].dtype == a.dtype
        np.testing.assert_allclose(clipped[k], a * (1.0 / ref_norm), rtol=1e-6)
    # Below the bound the update is unchanged (and a new array).
    same, _ = clip_update(upd, clip_norm=ref_norm * 2)
    for k, a in upd.items():
        np.testing.assert_array_equal(same[k], a)
        assert same[k] is not a


def test_central_noise_spread():
    sigma, c = 1.3, 0.7
    total = {"w": np.full((300, 300), 5.0)}
    out = central_noise(total, noise_multiplier=sigma, clip_norm=c, rng=SecureRandom.for_testing(1))
    noise = out["w"] - 5.0
    # 90,000 draws: the sample std is within ~0.5 % of σC, the mean within a few σC/300.
    assert noise.std() == pytest.approx(sigma * c, rel=0.015)
    assert abs(noise.mean()) < 4 * sigma * c / 300


def test_sum_of_shares_carries_the_full_noise():
    sigma, c, n = 1.1, 2.0, 8
    g = SecureRandom.for_testing(2)
    shares = [
        noise_share((200, 200), noise_multiplier=sigma, clip_norm=c, num_clients=n, generator=g)
        for _ in range(n)
    ]
    one = shares[0]
    assert one.std() == pytest.approx(sigma * c / np.sqrt(n), rel=0.02)
    total = np.sum(shares, axis=0)
    assert total.std() == pytest.approx(sigma * c, rel=0.02)
    assert abs(total.mean()) < 4 * sigma * c / 200
    # Independent shares: the sum's spread is √n times a share's, not n times.
    assert total.std() / one.std() == pytest.approx(np.sqrt(n), rel=0.03)


def test_noise_shares_like_keeps_shapes_and_dtypes():
    upd = _update(np.random.default_rng(3))
    out = noise_shares_like(
        upd,
        noise_multiplier=1.0,
        clip_norm=1.0,
        num_clients=4,
        generator=SecureRandom.for_testing(4),
    )
    for k, a in upd.items():
        assert out[k].shape == a.shape and out[k].dtype == a.dtype
        assert not np.array_equal(out[k], a)


def test_noise_is_secret_but_a_test_key_reproduces_it():
    def share(generator: SecureRandom | None) -> np.ndarray:
        return noise_share((10,), noise_multiplier=1.0, clip_norm=1.0, num_clients=3,
                           generator=generator)  # fmt: skip

    np.testing.assert_array_equal(
        share(SecureRandom.for_testing(7)), share(SecureRandom.for_testing(7))
    )
    assert not np.array_equal(share(None), share(None))  # production: fresh OS-keyed stream
    summed = {"w": np.zeros(1000)}
    a = central_noise(summed, noise_multiplier=1.0, clip_norm=1.0)["w"]
    b = central_noise(summed, noise_multiplier=1.0, clip_norm=1.0)["w"]
    assert not np.array_equal(a, b)


def test_t_shares_need_no_top_up():
    """Shares sized for t: the mean update from the t-share sum is noised at σC/(qN) with
    ``noise_already_added = 1`` (nothing added by the server); central mode adds all of it."""
    sigma, c, t, qn = 1.2, 0.5, 6, 3.0
    g = SecureRandom.for_testing(11)
    shares = sum(
        noise_share((300, 300), noise_multiplier=sigma, clip_norm=c, num_clients=t, generator=g)
        for _ in range(t)
    )
    out = noised_mean_update({"w": shares}, noise_multiplier=sigma, clip_norm=c,
                             expected_clients=qn, noise_already_added=1.0)["w"]  # fmt: skip
    np.testing.assert_allclose(out, (shares / qn).astype(np.float32))  # no top-up
    assert float(np.std(out.astype(np.float64))) == pytest.approx(sigma * c / qn, rel=0.01)
    central = noised_mean_update({"w": np.zeros((300, 300))}, noise_multiplier=sigma,
                                 clip_norm=c, expected_clients=qn, noise_already_added=0.0,
                                 rng=g)["w"]  # fmt: skip
    assert float(np.std(central.astype(np.float64))) == pytest.approx(sigma * c / qn, rel=0.01)


def test_parameter_validation():
    with pytest.warns(UserWarning, match="not differentially private"):
        out = central_noise(
            {"w": np.ones(3)}, noise_multiplier=0.0, clip_norm=1.0, rng=SecureRandom.for_testing(0)
        )
    np.testing.assert_array_equal(out["w"], np.ones(3))
    with pytest.raises(ValueError, match="noise_multiplier"):
        noise_share((3,), noise_multiplier=-0.1, clip_norm=1.0, num_clients=2)
    with pytest.raises(ValueError, match="clip_norm"):
        clip_update({"w": np.ones(3)}, clip_norm=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        central_noise({"w": np.ones(3)}, noise_multiplier=1.0, clip_norm=-1.0)
    with pytest.raises(ValueError, match="num_clients"):
        noise_share((3,), noise_multiplier=1.0, clip_norm=1.0, num_clients=0)


def test_shares_are_sized_for_the_smallest_accepted_aggregate() -> None:
    from umbra.privacy.client_dp import share_multiplier, shares_needed
    from umbra.secure.secagg.workflow import round_threshold

    for n in range(1, 30):
        for frac in (0.51, 0.67, 0.8, 1.0):
            t = shares_needed(frac, n)
            assert t == round_threshold(frac, n)  # the very t SecAgg+ and CKKS enforce
            assert t >= frac * n - 1e-9 and t - 1 < frac * n and 1 <= t <= n
    assert shares_needed(0.67, 8) == 6
    # t shares of multiplier σ/√t sum to σ: the smallest accepted aggregate is fully noised
    rng = np.random.default_rng(7)
    sigma, t = 1.7, 6
    total = rng.normal(0.0, share_multiplier(sigma, t), size=(t, 200_000)).sum(axis=0)
    assert np.std(total) == pytest.approx(sigma, rel=0.01)
    for bad in (0.5, 0.0, 1.01):
        with pytest.raises(ValueError, match="threshold"):
            shares_needed(bad, 8)
    with pytest.raises(ValueError, match="shares"):
        share_multiplier(1.0, 0)
