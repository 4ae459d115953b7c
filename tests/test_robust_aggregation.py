"""Robust aggregation rules against Flower's own strategies and hand-computed numpy
references (np.median, scipy.stats.trim_mean, Krum scores by hand), alone and composed
with modality-aware averaging and the FedAvgM/FedAdam server steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from scipy.stats import trim_mean

from umbra.config import FederationConfig
from umbra.federation.common import from_record, to_record
from umbra.federation.strategies import (
    Defence,
    ModalityFedAvg,
    build_strategy,
    clip_update,
    max_byzantine,
    modality_robust_aggregate,
    robust_aggregate,
)
from umbra.federation.strategies.defence import median_norm
from umbra.models import parameter_modality

KEYS = {"encoders.image.w": (3, 2), "encoders.audio.w": (4,), "head.0.weight": (2, 2)}


def _clients(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s) for k, s in KEYS.items()} for _ in range(n)]


def _flat(a: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a[k]) for k in KEYS])


def _flower(strategy: Any, arrays: list[dict[str, np.ndarray]], w: list[float]) -> dict:
    msgs = [
        Message(
            content=RecordDict(
                {"arrays": to_record(a), "metrics": MetricRecord({"num-examples": x})}
            ),
            dst_node_id=0,
            message_type="train",
        )
        for a, x in zip(arrays, w, strict=True)
    ]
    record, _ = strategy.aggregate_train(1, msgs)
    return from_record(record)


def _krum_scores(arrays: list[dict[str, np.ndarray]], f: int) -> np.ndarray:
    """Blanchard et al.: sum of squared distances to the n - f - 2 nearest others."""
    flat = [_flat(a) for a in arrays]
    n = len(flat)
    m = max(1, n - f - 2)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:m]))
    return np.array(scores)


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9)


N = 9
WEIGHTS = [float(w) for w in range(1, N + 1)]


def test_median_equals_flower_and_numpy() -> None:
    arrays = _clients(N)
    got = robust_aggregate("median", arrays, WEIGHTS)
    _close(got, _flower(FedMedian(), arrays, WEIGHTS))
    _close(got, {k: np.median(np.stack([a[k] for a in arrays]), axis=0) for k in KEYS})


@pytest.mark.parametrize("trim", [0.0, 0.1, 0.2, 0.34])
def test_trimmed_mean_equals_flower_and_scipy(trim: float) -> None:
    arrays = _clients(N, seed=1)
    got = robust_aggregate("trimmed-mean", arrays, WEIGHTS, trim_fraction=trim)
    _close(got, _flower(FedTrimmedAvg(beta=trim), arrays, WEIGHTS))
    _close(got, {k: trim_mean(np.stack([a[k] for a in arrays]), trim, axis=0) for k in KEYS})


@pytest.mark.parametrize("f", [0, 1, 3])
def test_krum_picks_the_lowest_hand_computed_score(f: int) -> None:
    arrays = _clients(N, seed=2)
    arrays[4] = {k: v * 50 for k, v in arrays[4].items()}  # an outlier never wins
    got = robust_aggregate("krum", arrays, WEIGHTS, byzantine=f)
    _close(got, _flower(Krum(num_malicious_nodes=f), arrays, WEIGHTS))
    best = int(np.argmin(_krum_scores(arrays, f)))
    assert best != 4
    _close(got, arrays[best])


@pytest.mark.parametrize("f", [1, 2])
def test_multi_krum_is_the_weighted_mean_of_the_n_minus_f_best(f: int) -> None:
    arrays = _clients(N, seed=3)
    got = robust_aggregate("multi-krum", arrays, WEIGHTS, byzantine=f)
    _close(got, _flower(MultiKrum(num_malicious_nodes=f, num_nodes_to_select=N - f), arrays,
                        WEIGHTS))  # fmt: skip
    chosen = np.argsort(_krum_scores(arrays, f))[: N - f]
    w = np.array([WEIGHTS[i] for i in chosen])
    want = {k: sum(arrays[i][k] * wi for i, wi in zip(chosen, w, strict=True)) / w.sum()
            for k in KEYS}  # fmt: skip
    _close(got, want)


def test_bulyan_equals_flower_and_a_hand_computed_reference() -> None:
    f = 1
    n = 4 * f + 3
    arrays = _clients(n, seed=4)
    arrays[0] = {k: v + 30 for k, v in arrays[0].items()}
    got = robust_aggregate("bulyan", arrays, WEIGHTS[:n], byzantine=f)
    _close(got, _flower(Bulyan(num_malicious_nodes=f), arrays, WEIGHTS[:n]))
    # Bulyan: theta = n - 2f by Multi-Krum, then per coordinate the mean of the
    # beta = theta - 2f values closest to the selected set's median
    theta, beta = n - 2 * f, n - 4 * f
    selected = [arrays[i] for i in np.argsort(_krum_scores(arrays, f))[:theta]]
    for k in KEYS:
        stack = np.stack([a[k] for a in selected])
        med = np.median(stack, axis=0)
        order = np.argsort(np.abs(stack - med), axis=0, kind="stable")[:beta]
        want = np.take_along_axis(stack, order, axis=0).mean(axis=0)
        np.testing.assert_allclose(got[k], want, rtol=1e-6)
        assert np.all(np.abs(got[k]) < 10)  # the shifted client is out


def test_f_beyond_what_a_rule_tolerates_is_refused() -> None:
    assert max_byzantine("krum", 7) == 2 and max_byzantine("bulyan", 7) == 1
    with pytest.raises(ValueError, match="cannot tolerate byzantine = 2 with 7"):
        robust_aggregate("bulyan", _clients(7), WEIGHTS[:7], byzantine=2)
    with pytest.raises(ValueError, match="unknown robust rule"):
        robust_aggregate("mode", _clients(3), [1.0] * 3)


def _counts(n: int, image: int, audio: int) -> dict[str, float]:
    return {"num-examples": n, "n-image": image, "n-audio": audio}


def test_rules_compose_with_modality_groups() -> None:
    """Each modality over its holders, shared over all, a group nobody holds unchanged."""
    arrays = _clients(5, seed=5)
    counts = [_counts(10, 10, 0), _counts(8, 0, 8), _counts(9, 9, 9), _counts(7, 7, 7),
              _counts(6, 6, 0)]  # fmt: skip
    got = modality_robust_aggregate("median", arrays, counts, parameter_modality)
    img = [0, 2, 3, 4]
    aud = [1, 2, 3]
    np.testing.assert_allclose(
        got["encoders.image.w"], np.median([arrays[i]["encoders.image.w"] for i in img], axis=0)
    )
    np.testing.assert_allclose(
        got["encoders.audio.w"], np.median([arrays[i]["encoders.audio.w"] for i in aud], axis=0)
    )
    np.testing.assert_allclose(
        got["head.0.weight"], np.median([a["head.0.weight"] for a in arrays], axis=0)
    )
    nobody = [dict(c, **{"n-audio": 0}) for c in counts]
    previous = {k: np.full(s, 7.0) for k, s in KEYS.items()}
    kept = modality_robust_aggregate("median", arrays, nobody, parameter_modality, previous)
    np.testing.assert_array_equal(kept["encoders.audio.w"], previous["encoders.audio.w"])


def test_a_group_with_too_few_holders_lowers_f(caplog: pytest.LogCaptureFixture) -> None:
    arrays = _clients(7, seed=6)
    counts = [_counts(5, 5, 5 if i < 3 else 0) for i in range(7)]
    got = modality_robust_aggregate("bulyan", arrays, counts, parameter_modality, byzantine=1)
    audio = [a["encoders.audio.w"] for a in arrays[:3]]
    ref = robust_aggregate("bulyan", [{"a": a} for a in audio], [5.0] * 3, byzantine=0)
    np.testing.assert_allclose(got["encoders.audio.w"], ref["a"])
    assert "only 3 client(s) hold audio" in caplog.text


def test_clip_update_bounds_the_delta_norm() -> None:
    x = {"w": np.zeros(4), "b": np.ones(2)}
    y = {"w": np.array([3.0, 0, 0, 0]), "b": np.array([1.0, 5.0])}  # ‖Δ‖ = 5
    out = clip_update(x, y, 1.0)
    np.testing.assert_allclose(out["w"], [0.6, 0, 0, 0])
    np.testing.assert_allclose(out["b"], [1.0, 1.8])
    same = clip_update(x, y, 10.0)
    np.testing.assert_allclose(same["w"], y["w"])


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4, 5]


def _reply(arrays: dict[str, np.ndarray], counts: dict[str, float], pid: int) -> Message:
    metrics = MetricRecord({**counts, "partition-id": pid})
    content = RecordDict({"arrays": to_record(arrays), "metrics": metrics})
    return Message(content=content, dst_node_id=pid + 1, message_type="train")


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam"])
def test_server_steps_take_the_robust_aggregate(name: str) -> None:
    """The strategy with aggregator = median equals the same strategy fed the median as
    its single reply: the aggregate replaces the weighted mean as the step's input."""
    fed = FederationConfig(strategy=name, num_clients=5, aggregator="median")
    kw: dict[str, Any] = {"key_modality": parameter_modality, "min_available_nodes": 1,
                          "min_train_nodes": 1}  # fmt: skip
    robust = build_strategy(name, fed, **kw)
    plain = build_strategy(name, FederationConfig(strategy=name, num_clients=5), **kw)
    assert robust.defence is not None and plain.defence is None
    x = {k: np.zeros(s, dtype=np.float32) for k, s in KEYS.items()}
    arrays = [{k: v.astype(np.float32) for k, v in a.items()} for a in _clients(5, seed=7)]
    counts = [_counts(5 + i, 5, 5) for i in range(5)]
    median = modality_robust_aggregate("median", arrays, counts, parameter_modality)
    for s in (robust, plain):
        list(s.configure_train(1, to_record(x), ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    got, _ = robust.aggregate_train(1, [_reply(a, c, i) for i, (a, c) in
                                        enumerate(zip(arrays, counts, strict=True))])  # fmt: skip
    want, _ = plain.aggregate_train(1, [_reply(median, _counts(1, 1, 1), 0)])
    assert got is not None and want is not None
    _close(from_record(got), from_record(want))


def test_defence_validates_its_parameters() -> None:
    with pytest.raises(ValueError, match="unknown aggregator 'mode'"):
        Defence(aggregator="mode")
    with pytest.raises(ValueError, match="trim_fraction"):
        Defence(aggregator="trimmed-mean", trim_fraction=0.5)
    assert not Defence().active and Defence(detect=True).active
    assert isinstance(build_strategy("fedavg", FederationConfig(), key_modality=parameter_modality),
                      ModalityFedAvg)  # fmt: skip


def test_krum_is_computed_on_the_updates_where_float32_models_lose_the_distances() -> None:
    """Krum's ‖a‖² + ‖b‖² − 2a·b on float32 models far from the origin loses the small
    distances between them; on the float64 updates it picks the hand-computed winner."""
    rng = np.random.default_rng(0)
    n, f = 7, 1
    x = {"head.0.weight": (rng.normal(size=2000) * 100).astype(np.float32)}
    deltas = [rng.normal(size=2000) * 1e-3 for _ in range(n)]
    deltas[0] *= 0.2  # the update closest to all others: Krum's choice
    arrays = [{"head.0.weight": (x["head.0.weight"] + d).astype(np.float32)} for d in deltas]
    sent = [{k: v.astype(np.float64) - x[k] for k, v in a.items()} for a in arrays]
    best = int(np.argmin(_krum_scores_of([s["head.0.weight"] for s in sent], f)))
    assert best == 0
    on_models = robust_aggregate("krum", arrays, [1.0] * n, byzantine=f)
    assert not np.array_equal(on_models["head.0.weight"], arrays[0]["head.0.weight"])
    counts = [{"num-examples": 1.0}] * n
    got, _ = Defence(aggregator="krum", byzantine=f).aggregate(
        list(range(n)), arrays, counts, parameter_modality, x, x
    )
    assert got["head.0.weight"].dtype == np.float32
    np.testing.assert_allclose(got["head.0.weight"], arrays[0]["head.0.weight"], rtol=0, atol=1e-3)


def _krum_scores_of(flat: list[np.ndarray], f: int) -> np.ndarray:
    m = max(1, len(flat) - f - 2)
    return np.array([
        sum(sorted(float(np.sum((a - b) ** 2)) for j, b in enumerate(flat) if j != i)[:m])
        for i, a in enumerate(flat)
    ])  # fmt: skip


def test_with_f_zero_multi_krum_and_trimmed_mean_are_the_mean() -> None:
    """Multi-Krum keeping all n is FedAvg's weighted mean; trimming nothing is the plain
    mean: the rules only differ from the mean by what they drop."""
    x = {k: np.zeros(s, dtype=np.float32) for k, s in KEYS.items()}
    arrays = [{k: v.astype(np.float32) for k, v in a.items()} for a in _clients(6, seed=11)]
    counts = [_counts(3 + i, 3 + i, 3 + i) for i in range(6)]
    pids = list(range(6))
    mk, _ = Defence(aggregator="multi-krum").aggregate(pids, arrays, counts, parameter_modality,
                                                      x, x)  # fmt: skip
    w = np.array([3.0 + i for i in range(6)])
    for k in KEYS:
        want = sum(a[k].astype(np.float64) * wi for a, wi in zip(arrays, w, strict=True)) / w.sum()
        np.testing.assert_allclose(mk[k], want, rtol=1e-5)
    tm, _ = Defence(aggregator="trimmed-mean", trim_fraction=0.0).aggregate(
        pids, arrays, counts, parameter_modality, x, x
    )
    for k in KEYS:
        np.testing.assert_allclose(tm[k], np.mean([a[k] for a in arrays], axis=0), rtol=1e-5)


def test_median_clipping_bounds_every_update_by_the_rounds_median_norm() -> None:
    """Sun et al. 2019: C = median ‖Δ_i‖; updates under it pass unchanged, a scaled one is
    cut to norm C, then the mean as usual."""
    x = {k: np.ones(s) for k, s in KEYS.items()}
    rng = np.random.default_rng(12)
    sizes = [1.0, 2.0, 3.0, 4.0, 50.0]
    deltas = []
    for size in sizes:
        d = {k: rng.normal(size=s) for k, s in KEYS.items()}
        norm = np.sqrt(sum(float(np.sum(v**2)) for v in d.values()))
        deltas.append({k: v * size / norm for k, v in d.items()})
    arrays = [{k: x[k] + d[k] for k in KEYS} for d in deltas]
    counts = [{"num-examples": 10.0, "n-image": 10.0, "n-audio": 10.0}] * 5
    assert median_norm(x, arrays) == pytest.approx(3.0)
    got, _ = Defence(clip_updates="median").aggregate(
        list(range(5)), arrays, counts, parameter_modality, x, x
    )
    factors = [min(1.0, 3.0 / s) for s in sizes]
    for k in KEYS:
        want = x[k] + np.mean([d[k] * c for d, c in zip(deltas, factors, strict=True)], axis=0)
        np.testing.assert_allclose(got[k], want, rtol=1e-9)


def test_clip_updates_accepts_a_bound_or_median_only() -> None:
    assert FederationConfig(clip_updates="median").clip_updates == "median"
    assert FederationConfig(clip_updates=2).clip_updates == 2.0
    for bad in ("mean", -1.0, 0.0):
        with pytest.raises(ValueError, match="clip_updates"):
            FederationConfig(clip_updates=bad)
    with pytest.raises(ValueError, match="clip_updates must be > 0 or 'median'"):
        Defence(clip_updates="mean")
