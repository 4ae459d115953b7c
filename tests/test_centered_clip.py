"""Centered clipping with momentum (Karimireddy et al. 2021) against hand-computed values
and the weighted mean it reduces to, composed with modality-aware averaging, and its
server state through a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.federation.strategies import (
    CenteredClipState,
    Defence,
    centered_clip,
    modality_centered_clip,
)
from umbra.federation.strategies.centered_clip import clip_radius, momentum_step
from umbra.models import parameter_modality

KEYS = {"encoders.image.w": (3, 2), "encoders.audio.w": (4,), "head.0.weight": (2, 2)}


def test_one_and_two_iterations_by_hand() -> None:
    """Inputs (1, 0), (0, 1), (10, 0) around the origin with τ = 2: the far one is cut to
    (2, 0), so v = (3, 1) / 3; the second iteration recentres at v and clips again."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [10.0, 0.0]])
    w = [1.0, 1.0, 1.0]
    v1 = centered_clip(x, w, np.zeros(2), tau=2.0, iterations=1)
    np.testing.assert_allclose(v1, [1.0, 1.0 / 3.0], rtol=1e-12)
    # from v1: deviations (0, -1/3), (-1, 2/3), (9, -1/3); only the last exceeds τ = 2
    far = np.array([9.0, -1.0 / 3.0])
    far = far * 2.0 / np.sqrt(81.0 + 1.0 / 9.0)
    want = np.array([1.0, 1.0 / 3.0]) + (np.array([-1.0, 1.0 / 3.0]) + far) / 3.0
    v2 = centered_clip(x, w, np.zeros(2), tau=2.0, iterations=2)
    np.testing.assert_allclose(v2, want, rtol=1e-12)


def test_without_clipping_one_iteration_is_the_weighted_mean_from_any_centre() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    w = rng.uniform(1, 5, size=7)
    for center in (np.zeros(5), rng.normal(size=5) * 10):
        got = centered_clip(x, w, center, tau=np.inf, iterations=1)
        np.testing.assert_allclose(got, np.average(x, axis=0, weights=w), rtol=1e-12)


def test_median_radius_bounds_what_an_attacker_can_move() -> None:
    """τ = the median distance: an attacker 1000 away moves the aggregate by at most
    τ · w / Σw, and the aggregate stays within a radius of the honest mean."""
    rng = np.random.default_rng(1)
    honest = rng.normal(size=(8, 20))
    center = np.zeros(20)
    tau = float(np.median(np.linalg.norm(np.vstack([honest, np.full((2, 20), 1e3)]), axis=1)))
    assert clip_radius("median", np.linalg.norm(np.vstack([honest, np.full((2, 20), 1e3)]),
                                                  axis=1)) == pytest.approx(tau)  # fmt: skip
    attacked = np.vstack([honest, np.full((2, 20), 1e3)])
    got = centered_clip(attacked, np.ones(10), center, tau="median", iterations=1)
    clean = centered_clip(honest, np.ones(8), center, tau=tau, iterations=1)
    # the two attackers add at most 2 τ / 10 and the honest part is weighted 8/10
    assert np.linalg.norm(got - 0.8 * clean) <= 2 * tau / 10 + 1e-9
    assert np.linalg.norm(np.mean(attacked, axis=0)) > 100 * np.linalg.norm(got)


def test_bad_parameters_are_refused() -> None:
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="tau"):
        centered_clip(x, [1, 1], np.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="iterations"):
        centered_clip(x, [1, 1], np.zeros(3), tau=1.0, iterations=0)
    with pytest.raises(ValueError, match="weights"):
        centered_clip(x, [0, 0], np.zeros(3), tau=1.0)
    with pytest.raises(ValueError, match="beta"):
        CenteredClipState(beta=1.0)
    with pytest.raises(ValueError, match="centered_clip_tau"):
        Defence(aggregator="centered-clip", centered_clip_tau=-1.0)
    with pytest.raises(ValueError, match="centered_clip_beta"):
        Defence(aggregator="centered-clip", centered_clip_beta=1.0)
    with pytest.raises(ValueError, match="bucket_size > 1 needs a robust aggregator"):
        Defence(bucket_size=2)


def test_momentum_is_the_exponential_average_of_a_clients_updates() -> None:
    u1, u2, u3 = np.array([1.0, 0.0]), np.array([0.0, 2.0]), np.array([4.0, 4.0])
    m = momentum_step(None, u1, 0.9)
    np.testing.assert_array_equal(m, u1)  # the first update is the momentum
    m = momentum_step(momentum_step(m, u2, 0.9), u3, 0.9)
    np.testing.assert_allclose(m, 0.81 * u1 + 0.09 * u2 + 0.1 * u3, rtol=1e-12)
    np.testing.assert_array_equal(momentum_step(m, u3, 0.0), u3)


def _counts(n_image: float, n_audio: float, n: float) -> dict[str, float]:
    return {"num-examples": n, "n-image": n_image, "n-audio": n_audio}


def test_groups_are_clipped_over_their_holders_with_their_own_radius() -> None:
    rng = np.random.default_rng(2)
    inputs = [{k: rng.normal(size=s) for k, s in KEYS.items()} for _ in range(5)]
    counts = [_counts(0.0 if i < 2 else 3.0 + i, 2.0 + i, 5.0 + i) for i in range(5)]
    centers = {k: rng.normal(size=s) for k, s in KEYS.items()}
    got = modality_centered_clip(
        inputs, counts, parameter_modality, centers, tau="median", iterations=2
    )
    for key, holders, wkey in (
        ("encoders.image.w", [2, 3, 4], "n-image"),
        ("encoders.audio.w", range(5), "n-audio"),
        ("head.0.weight", range(5), "num-examples"),
    ):
        flat = np.stack([np.ravel(inputs[i][key]) for i in holders])
        w = [counts[i][wkey] for i in holders]
        want = centered_clip(flat, w, np.ravel(centers[key]), tau="median", iterations=2)
        np.testing.assert_allclose(got[key], want.reshape(KEYS[key]), rtol=1e-12)
    # nobody holds audio: its group is left out (the model keeps it, the centre stays)
    no_audio = [{**c, "n-audio": 0.0} for c in counts]
    got = modality_centered_clip(inputs, no_audio, parameter_modality, centers, tau=1.0)
    assert set(got) == {"encoders.image.w", "head.0.weight"}


def test_a_group_nobody_holds_keeps_its_value_and_its_centre() -> None:
    rng = np.random.default_rng(4)
    x = {k: rng.normal(size=s) for k, s in KEYS.items()}
    arrays = [{k: x[k] + rng.normal(size=s) for k, s in KEYS.items()} for _ in range(4)]
    counts = [_counts(3.0, 0.0, 5.0) for _ in range(4)]  # no audio this round
    defence = Defence(aggregator="centered-clip")
    state = defence.new_centered_clip()
    assert state is not None
    state.center = {"encoders.audio.w": np.full(4, 7.0)}
    got, _ = defence.aggregate(list(range(4)), arrays, counts, parameter_modality, x, x,
                               centered=state)  # fmt: skip
    np.testing.assert_allclose(got["encoders.audio.w"], x["encoders.audio.w"], rtol=1e-12)
    np.testing.assert_array_equal(state.center["encoders.audio.w"], np.full(4, 7.0))
    assert set(state.center) == set(KEYS)


def test_the_defence_clips_momenta_around_the_previous_aggregate() -> None:
    """Two rounds by hand: round 1 clips the updates around 0 (the momenta are the first
    updates); round 2 clips 0.5·Δ¹ + 0.5·Δ² around round 1's aggregate update."""
    rng = np.random.default_rng(3)
    x = {"head.0.weight": rng.normal(size=(2, 2)).astype(np.float32)}
    counts = [{"num-examples": 10.0 + i} for i in range(5)]
    w = [c["num-examples"] for c in counts]
    defence = Defence(aggregator="centered-clip", centered_clip_beta=0.5, centered_clip_tau=0.8)
    state = defence.new_centered_clip()
    assert state is not None and Defence(aggregator="median").new_centered_clip() is None
    d1 = [rng.normal(size=(2, 2)) for _ in range(5)]
    d2 = [rng.normal(size=(2, 2)) for _ in range(5)]
    arrays1 = [{"head.0.weight": (x["head.0.weight"] + d).astype(np.float32)} for d in d1]
    got1, _ = defence.aggregate(list(range(5)), arrays1, counts, parameter_modality, x, x,
                                centered=state, server_round=1)  # fmt: skip
    sent1 = np.stack([np.ravel(a["head.0.weight"] - x["head.0.weight"].astype(np.float64))
                      for a in arrays1])  # fmt: skip
    v1 = centered_clip(sent1, w, np.zeros(4), tau=0.8)
    np.testing.assert_allclose(got1["head.0.weight"], x["head.0.weight"] + v1.reshape(2, 2),
                               rtol=1e-5)  # fmt: skip
    arrays2 = [{"head.0.weight": (x["head.0.weight"] + d).astype(np.float32)} for d in d2]
    got2, _ = defence.aggregate(list(range(5)), arrays2, counts, parameter_modality, x, x,
                                centered=state, server_round=2)  # fmt: skip
    sent2 = np.stack([np.ravel(a["head.0.weight"] - x["head.0.weight"].astype(np.float64))
                      for a in arrays2])  # fmt: skip
    v2 = centered_clip(0.5 * sent1 + 0.5 * sent2, w, v1, tau=0.8)
    np.testing.assert_allclose(got2["head.0.weight"], x["head.0.weight"] + v2.reshape(2, 2),
                               rtol=1e-5)  # fmt: skip
    back = CenteredClipState(beta=0.5)
    back.load_arrays({**state.to_arrays(), "reputation/partitions": np.arange(2)})
    assert set(back.momenta) == set(range(5))
    for p in range(5):
        np.testing.assert_array_equal(back.momenta[p]["head.0.weight"],
                                      state.momenta[p]["head.0.weight"])  # fmt: skip
    np.testing.assert_array_equal(back.center["head.0.weight"], v2.reshape(2, 2))
