"""The per-client reputation over rounds: running means against hand computation, the
exclusion rule on hand-computed cases, a persistent sign-flipper found by its history
where one round's screening cannot tell it from honest heterogeneous clients, excluded
updates left out of the aggregate, and the state through a checkpoint's arrays."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.federation.detection import detection_quality, score_updates, screen_updates
from umbra.federation.reputation import (
    ClientReputation,
    Reputation,
    RoundScore,
    observe_round,
    reputation_outliers,
    round_responses,
    round_scores,
)
from umbra.federation.strategies import Defence
from umbra.federation.strategies.modality import modality_weighted_average
from umbra.models import parameter_modality

KEYS = {"encoders.image.w": (40,), "head.0.weight": (60,)}


def _score(pid: int, norm: float, cosine: float) -> RoundScore:
    return RoundScore(pid, norm, cosine)


def test_round_scores_leave_the_client_out_of_its_reference() -> None:
    rng = np.random.default_rng(4)
    deltas = [{k: rng.normal(size=s) for k, s in KEYS.items()} for _ in range(5)]
    flat = np.stack([np.concatenate([d[k] for k in KEYS]) for d in deltas])
    scores = round_scores([7, 8, 9, 10, 11], deltas)
    for i, s in enumerate(scores):
        ref = np.median(np.delete(flat, i, axis=0), axis=0)
        assert s.partition == 7 + i
        assert s.norm == pytest.approx(np.linalg.norm(flat[i]))
        assert s.cosine == pytest.approx(
            flat[i] @ ref / np.linalg.norm(flat[i]) / np.linalg.norm(ref)
        )
    assert round_scores([3], deltas[:1])[0].cosine == 0.0


def test_running_means_match_hand_computation() -> None:
    h = observe_round({}, [_score(0, 1.0, 0.5), _score(1, 4.0, -0.2), _score(2, 2.0, 0.1)])
    # round median norm 2.0: log ratios log(0.5), log(2), 0
    assert h[0] == ClientReputation(1, 0.5, float(np.log(0.5)))
    assert h[1].log_norm == pytest.approx(np.log(2.0))
    h = observe_round(h, [_score(0, 3.0, 0.1), _score(2, 1.0, 0.3)])  # client 1 absent
    # median of (3, 1) = 2: ratios log 1.5, log 0.5
    assert h[0].rounds == 2 and h[0].cosine == pytest.approx(0.3)
    assert h[0].log_norm == pytest.approx((np.log(0.5) + np.log(1.5)) / 2)
    assert h[1].rounds == 1 and h[2].cosine == pytest.approx(0.2)
    assert observe_round(h, []) == h


def _history(cosines: list[float], log_norms: list[float], rounds: int = 5) -> dict:
    return {
        p: ClientReputation(rounds, rounds * c, rounds * g)
        for p, (c, g) in enumerate(zip(cosines, log_norms, strict=True))
    }


def test_outliers_by_hand() -> None:
    # mean cosines: median 0.3, |dev| = (0.1, 0.05, 0, 0.05, 0.1, 0.2, 0) -> MAD 0.05,
    # robust deviation 1.4826 * 0.05 = 0.0741; client 5 at 0.1: z = -2.70 (k = 3 keeps it,
    # k = 2.5 excludes it); min_cosine = 0.1 excludes it as well (mean cosine <= 0.1)
    cos = [0.2, 0.25, 0.3, 0.35, 0.4, 0.1, 0.3]
    norms = [0.0] * 7
    assert reputation_outliers(_history(cos, norms), k=3, min_rounds=1) == ()
    assert reputation_outliers(_history(cos, norms), k=2.5, min_rounds=1) == (5,)
    assert reputation_outliers(_history(cos, norms), k=3, min_rounds=1, min_cosine=0.1) == (5,)
    # log-norms: median 0, floor 0.35 -> a mean ratio of 1.1 (x3.0) is z = 3.14 > 3
    g = [0.0, 0.05, -0.05, 0.02, 1.1, -0.02, 0.9]
    assert reputation_outliers(_history([0.3] * 7, g), k=3, min_rounds=1) == (4,)


def test_the_lowest_f_by_hand() -> None:
    # mean cosines: median 0.05, MAD 0.1 (robust deviation 0.148): no outlier at k = 3;
    # the two lowest are clients 1 (-0.1) and 5 (-0.05)
    cos = [0.1, -0.1, 0.05, 0.0, 0.2, -0.05, 0.15]
    h = _history(cos, [0.0] * 7)
    assert reputation_outliers(h, k=3, min_rounds=1) == ()
    assert reputation_outliers(h, k=3, min_rounds=1, drop_lowest=2) == (1, 5)
    # a scaler is excluded beside the lowest f
    h[4] = ClientReputation(5, 5 * 0.2, 5 * 2.3)
    assert reputation_outliers(h, k=3, min_rounds=1, drop_lowest=1) == (1, 4)
    # the lowest f must stay a minority of the judged clients: 2 of 4 is not
    four = _history(cos[:4], [0.0] * 4)
    assert reputation_outliers(four, k=3, min_rounds=1, drop_lowest=2) == ()
    with pytest.raises(ValueError, match="drop_lowest"):
        reputation_outliers(h, k=3, min_rounds=1, drop_lowest=-1)


def test_warmup_and_too_few_clients_exclude_nobody() -> None:
    cos = [0.3, 0.3, 0.3, -0.5]
    assert reputation_outliers(_history(cos, [0.0] * 4, rounds=2), k=3, min_rounds=3) == ()
    assert reputation_outliers(_history(cos, [0.0] * 4, rounds=3), k=3, min_rounds=3) == (3,)
    assert reputation_outliers(_history([0.3, -0.5], [0.0, 0.0]), k=3, min_rounds=1) == ()
    with pytest.raises(ValueError, match="k must be > 0"):
        reputation_outliers({}, k=0, min_rounds=1)
    with pytest.raises(ValueError, match="warmup"):
        Reputation(warmup=0)


def _round(
    rng: np.random.Generator, n: int, attackers: set[int], common_scale: float = 0.2
) -> list[dict[str, np.ndarray]]:
    """Late-training updates: a weak common direction (0.2) and a persistent direction of
    each client's own (0.1) under large per-round noise (1.0); attackers send the
    sign-flipped update."""
    common = {k: rng.normal(size=s) for k, s in KEYS.items()}
    out = []
    for i in range(n):
        own = np.random.default_rng(1000 + i)  # the same each round
        d = {k: common_scale * v + 0.1 * own.normal(size=v.shape) + rng.normal(size=v.shape)
             for k, v in common.items()}  # fmt: skip
        out.append({k: -v for k, v in d.items()} if i in attackers else d)
    return out


def test_history_finds_sign_flippers_one_round_cannot() -> None:
    rng = np.random.default_rng(0)
    n, attackers = 15, {2, 7, 11}
    rep = Reputation(k=3.0, warmup=5)
    screened, excluded = [], []
    for _ in range(30):
        deltas = _round(rng, n, attackers)
        one_round = screen_updates(score_updates(list(range(n)), deltas, parameter_modality))
        screened.append((one_round.partitions, one_round.flagged))
        excluded.append((one_round.partitions, rep.observe(list(range(n)), deltas)))
    per_round = detection_quality(screened, attackers)
    history = detection_quality(excluded[4:], attackers)  # from the warm-up's end
    assert per_round["recall"] is not None and per_round["recall"] < 0.1
    assert history["precision"] == 1.0
    assert history["recall"] is not None and history["recall"] > 0.8
    assert all(e == tuple(sorted(attackers)) for _, e in excluded[-15:])
    assert all(e == () for _, e in excluded[:4])  # nobody before the warm-up


def test_honest_heterogeneous_clients_are_not_excluded() -> None:
    rng = np.random.default_rng(10)
    rep = Reputation(k=3.0, warmup=5)
    for rnd in range(30):
        excluded = rep.observe(list(range(15)), _round(rng, 15, set()))
        if rnd >= 10:
            assert excluded == ()


def test_the_defence_leaves_excluded_updates_out_of_the_mean() -> None:
    x = {k: np.zeros(s) for k, s in KEYS.items()}
    rng = np.random.default_rng(3)
    counts = [{"num-examples": float(10 + i), "n-image": float(10 + i)} for i in range(8)]
    defence = Defence(reputation=True, reputation_warmup=2, reputation_k=6.0)
    rep = defence.new_reputation()
    assert rep is not None and Defence().new_reputation() is None
    for rnd in range(3):
        arrays = _round(rng, 8, {5}, common_scale=1.0)
        avg, screening = defence.aggregate(
            list(range(8)), arrays, counts, parameter_modality, x, x, rep
        )
        assert screening is not None and screening.flagged == ()  # detect is off
        assert set(screening.reputation) == {str(i) for i in range(8)}
        kept = [i for i in range(8) if i not in screening.excluded]
        ref = modality_weighted_average(
            [arrays[i] for i in kept], [counts[i] for i in kept], parameter_modality, x
        )
        for k in KEYS:
            np.testing.assert_allclose(avg[k], ref[k], rtol=1e-12)
        assert screening.excluded == (() if rnd == 0 else (5,))
        assert screening.reputation["5"]["rounds"] == rnd + 1


def test_state_round_trips_through_arrays() -> None:
    rep = Reputation(k=2.0, warmup=2)
    rng = np.random.default_rng(5)
    rep.observe([3, 9, 4], _round(rng, 3, {1}))
    rep.observe([3, 9], _round(rng, 2, set()))
    assert {p: r.rounds for p, r in rep.history.items()} == {3: 2, 9: 2, 4: 1}
    back = Reputation(k=2.0, warmup=2)
    back.load_arrays({**rep.to_arrays(), "m/other": np.zeros(2)})
    assert back.history == rep.history
    assert Reputation().to_arrays() == {}
    back.load_arrays({})
    assert back.history == {}


def test_defence_validates_its_reputation_settings() -> None:
    with pytest.raises(ValueError, match="reputation_k"):
        Defence(reputation=True, reputation_k=0)
    with pytest.raises(ValueError, match="reputation_min_cosine"):
        Defence(reputation=True, reputation_min_cosine=1.0)
    assert Defence(reputation=True).active and not Defence().active


def test_round_responses_by_hand() -> None:
    """cos(Δ_i(t) − Δ_i(t−1), mean of the others' Δ_j(t−1)): client 3 has no previous
    update, client 4 did not change."""
    last = {1: np.array([1.0, 0.0, 0.0]), 2: np.array([3.0, 0.0, 0.0]),
            4: np.array([0.0, 0.0, 3.0])}  # fmt: skip
    flat = np.array([[0.0, 1.0, 0.0], [5.0, 2.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 3.0]])
    got = round_responses([1, 2, 3, 4], flat, last)
    # client 1: change (-1, 1, 0), others' mean (1.5, 0, 1.5): -1.5 / (√2 · √4.5) = -0.5
    # client 2: change (2, 2, 0), others' mean (0.5, 0, 1.5): 1 / (√8 · √2.5)
    assert got == {1: pytest.approx(-0.5), 2: pytest.approx(1 / np.sqrt(20.0))}
    assert round_responses([1], flat[:1], {1: last[1]}) == {}


def _quadratic_federation(flippers: set[int], rounds: int, seed: int) -> Reputation:
    """Clients with their own quadratic losses ½(x − c_i)ᵀA_i(x − c_i) (heterogeneous
    optima and curvatures), noisy gradient steps Δ_i = −η(A_i(x − c_i) + noise); the
    flippers send −Δ_i; the server applies the mean; the reputation sees every round."""
    rng = np.random.default_rng(seed)
    n, dim, eta = 10, 50, 0.3
    centres = rng.normal(size=(n, dim)) * 2.0
    curv = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        curv.append(q @ np.diag(rng.uniform(0.2, 1.0, size=dim)) @ q.T)
    rep = Reputation(k=1000.0, warmup=1, max_response=1.0)  # scores (1: nobody excluded)
    x = np.zeros(dim)
    for _ in range(rounds):
        deltas = []
        for i in range(n):
            d = -eta * (curv[i] @ (x - centres[i]) + rng.normal(size=dim))
            deltas.append({"head.0.weight": -d if i in flippers else d})
        rep.observe(list(range(n)), deltas)
        x = x + np.mean([d["head.0.weight"] for d in deltas], axis=0)
    return rep


def test_descent_responds_negatively_and_a_sign_flipper_positively() -> None:
    """The theory of the response score on clients whose losses are known: after enough
    rounds every honest client's mean response is below 0, every flipper's above."""
    rep = _quadratic_federation({2, 7}, rounds=30, seed=0)
    responses = {p: r.response for p, r in rep.history.items()}
    assert all(rep.history[p].response_rounds == 29 for p in range(10))
    assert all(responses[p] < 0 for p in range(10) if p not in (2, 7)), responses
    assert responses[2] > 0 and responses[7] > 0, responses
    flagged = reputation_outliers(rep.history, k=1000.0, min_rounds=3, max_response=0.0)
    assert flagged == (2, 7)
    # the cosine outlier rule alone, and switched off
    cosines = {p: r.cosine for p, r in rep.history.items()}
    low = min(cosines, key=lambda p: cosines[p])
    hist = dict(rep.history)
    hist[low] = ClientReputation(30, -30.0, 0.0, 29, -29 * 0.1)  # cosine -1, honest response
    assert low in reputation_outliers(hist, k=3.0, min_rounds=3)
    assert low not in reputation_outliers(hist, k=3.0, min_rounds=3, cosine_outliers=False)
    back = Reputation(k=1000.0, warmup=1, max_response=1.0)
    back.load_arrays(rep.to_arrays())
    assert back.history == rep.history and set(back.last) == set(range(10))
    for p in range(10):
        np.testing.assert_array_equal(back.last[p], rep.last[p])
