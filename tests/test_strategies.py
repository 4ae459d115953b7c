"""Aggregation against independent references: numpy weighted means and Flower's own strategies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.federation.common import from_record, to_record
from umbra.federation.strategies import (
    CONTROL_PREFIX,
    ModalityFedAvg,
    Scaffold,
    UmbraFedAdam,
    UmbraFedAvgM,
    UmbraFedProx,
    modality_weighted_average,
    scaffold_server_update,
)
from umbra.models import parameter_modality

KEYS = {
    "encoders.image.w": (3, 2),
    "encoders.audio.w": (4,),
    "projections.text.b": (2,),
    "head.0.weight": (2, 2),
}


class FakeGrid:
    """The two Grid calls strategies make while configuring a round."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=s).astype(np.float32) for k, s in KEYS.items()}


def _reply(arrays: dict[str, np.ndarray], counts: dict[str, float], pid: int) -> Message:
    metrics = MetricRecord({**counts, "partition-id": pid})
    content = RecordDict({"arrays": to_record(arrays), "metrics": metrics})
    return Message(content=content, dst_node_id=pid + 1, message_type="train")


def _counts(n: int, image: int, audio: int, text: int) -> dict[str, float]:
    return {"num-examples": n, "n-image": image, "n-audio": audio, "n-text": text}


@given(
    n_clients=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=25, deadline=None)
def test_plain_average_equals_flower_fedavg_and_numpy(n_clients: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = [_arrays(rng) for _ in range(n_clients)]
    sizes = rng.integers(1, 500, size=n_clients)
    replies = [
        _reply(a, _counts(int(s), int(s), int(s), int(s)), i)
        for i, (a, s) in enumerate(zip(arrays, sizes, strict=True))
    ]
    ours, _ = ModalityFedAvg().aggregate_train(1, replies)
    flower, _ = FedAvg().aggregate_train(1, replies)
    assert ours is not None and flower is not None
    w = sizes / sizes.sum()
    for k in KEYS:
        ref = sum(wi * a[k].astype(np.float64) for wi, a in zip(w, arrays, strict=True))
        np.testing.assert_allclose(from_record(ours)[k], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            from_record(ours)[k], from_record(flower)[k], rtol=1e-5, atol=1e-6
        )


def test_modality_aware_ignores_clients_without_the_modality() -> None:
    rng = np.random.default_rng(0)
    arrays = [_arrays(rng) for _ in range(3)]
    arrays[2]["encoders.audio.w"][:] = 1e6  # a client without audio must not matter
    counts = [_counts(100, 80, 60, 70), _counts(50, 50, 20, 10), _counts(300, 300, 0, 200)]
    replies = [_reply(a, c, i) for i, (a, c) in enumerate(zip(arrays, counts, strict=True))]
    strategy = ModalityFedAvg()
    strategy.set_modality_map(parameter_modality)
    agg = from_record(strategy.aggregate_train(1, replies)[0])  # type: ignore[arg-type]

    # audio: only clients 0 and 1, weighted 60:20 — exactly what those two make alone
    alone = from_record(
        FedAvg().aggregate_train(
            1, [_reply(arrays[i], {"num-examples": c}, i) for i, c in ((0, 60), (1, 20))]
        )[0]  # type: ignore[arg-type]
    )
    np.testing.assert_allclose(agg["encoders.audio.w"], alone["encoders.audio.w"], rtol=1e-6)
    # image weighted 80:50:300, text 70:10:200, head by num-examples 100:50:300
    for key, col in (("encoders.image.w", "n-image"), ("projections.text.b", "n-text"),
                     ("head.0.weight", "num-examples")):  # fmt: skip
        w = np.array([c[col] for c in counts], dtype=np.float64)
        ref = sum(wi / w.sum() * a[key] for wi, a in zip(w, arrays, strict=True))
        np.testing.assert_allclose(agg[key], ref, rtol=1e-5)


def test_modality_nobody_holds_keeps_previous_global() -> None:
    rng = np.random.default_rng(1)
    prev = _arrays(rng)
    arrays = [_arrays(rng) for _ in range(2)]
    counts = [_counts(10, 10, 0, 10), _counts(5, 5, 0, 5)]
    out = modality_weighted_average(arrays, counts, parameter_modality, prev)
    np.testing.assert_array_equal(out["encoders.audio.w"], prev["encoders.audio.w"])
    with pytest.raises(ValueError, match="no client holds"):
        modality_weighted_average(arrays, counts, parameter_modality, None)


def test_reply_order_does_not_change_the_result_bitwise() -> None:
    rng = np.random.default_rng(2)
    replies = [_reply(_arrays(rng), _counts(i + 1, i + 1, i + 1, i + 1), i) for i in range(5)]
    a = from_record(ModalityFedAvg().aggregate_train(1, replies)[0])  # type: ignore[arg-type]
    b = from_record(ModalityFedAvg().aggregate_train(1, replies[::-1])[0])  # type: ignore[arg-type]
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])


def _same_rounds(
    ours: Any, ref: Any, rng: np.random.Generator, *, rtol: float
) -> dict[str, np.ndarray]:
    """Three rounds of 3 clients through both strategies; their aggregates must agree.
    Returns the last aggregate (the global model after round 3)."""
    glob = _arrays(rng)
    for rnd in (1, 2, 3):
        replies = [_reply(_arrays(rng), _counts(10 * (i + 1), 1, 1, 1), i) for i in range(3)]
        list(ours.configure_train(rnd, to_record(glob), ConfigRecord(), FakeGrid(3)))
        list(ref.configure_train(rnd, to_record(glob), ConfigRecord(), FakeGrid(3)))
        a = from_record(ours.aggregate_train(rnd, replies)[0])
        b = from_record(ref.aggregate_train(rnd, replies)[0])
        for k in KEYS:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-7)
        glob = a
    return glob


def test_fedadam_matches_flower_fedadam_when_not_modality_aware() -> None:
    rng = np.random.default_rng(3)
    ours = UmbraFedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    ref = FedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    _same_rounds(ours, ref, rng, rtol=1e-5)
    # state round-trips through checkpoints
    state = ours.state_arrays()
    fresh = UmbraFedAdam(eta=0.05)
    fresh.load_state_arrays(state)
    for k, v in (ours.m_t or {}).items():
        np.testing.assert_array_equal(fresh.m_t[k], v)  # type: ignore[index]


def test_fedprox_sends_mu_like_flower() -> None:
    glob = _arrays(np.random.default_rng(4))
    msgs = list(UmbraFedProx(proximal_mu=0.3).configure_train(
        2, to_record(glob), ConfigRecord(), FakeGrid(2)))  # type: ignore[arg-type]  # fmt: skip
    ref = list(FedProx(proximal_mu=0.3).configure_train(
        2, to_record(glob), ConfigRecord(), FakeGrid(2)))  # type: ignore[arg-type]  # fmt: skip
    assert [m.content["config"]["proximal-mu"] for m in msgs] == [0.3, 0.3]
    assert msgs[0].content["config"]["proximal-mu"] == ref[0].content["config"]["proximal-mu"]


def test_scaffold_server_update_against_numpy() -> None:
    rng = np.random.default_rng(5)
    x, c, y, dc = (_arrays(rng) for _ in range(4))
    nx, nc = scaffold_server_update(x, c, y, dc, server_lr=0.5, participation=0.25)
    for k in KEYS:
        np.testing.assert_allclose(nx[k], x[k] + 0.5 * (y[k] - x[k]), rtol=1e-6)
        np.testing.assert_allclose(nc[k], c[k] + 0.25 * dc[k], rtol=1e-6)
    with pytest.raises(ValueError, match="participation"):
        scaffold_server_update(x, c, y, dc, server_lr=1.0, participation=0.0)


def test_scaffold_round_sends_control_and_updates_it() -> None:
    rng = np.random.default_rng(6)
    glob = _arrays(rng)
    s = Scaffold(server_lr=1.0)
    msgs = list(s.configure_train(1, to_record(glob), ConfigRecord(), FakeGrid(4)))  # type: ignore[arg-type]
    sent = from_record(msgs[0].content["arrays"])
    assert {CONTROL_PREFIX + k for k in KEYS} <= set(sent)
    assert all(not sent[CONTROL_PREFIX + k].any() for k in KEYS)  # c starts at zero
    ys = [_arrays(rng) for _ in range(2)]
    dcs = [_arrays(rng) for _ in range(2)]
    replies = [
        _reply({**y, **{CONTROL_PREFIX + k: v for k, v in d.items()}}, _counts(10, 10, 10, 10), i)
        for i, (y, d) in enumerate(zip(ys, dcs, strict=True))
    ]
    new = from_record(s.aggregate_train(1, replies)[0])  # type: ignore[arg-type]
    assert set(new) == set(KEYS)
    for k in KEYS:
        np.testing.assert_allclose(new[k], (ys[0][k] + ys[1][k]) / 2, rtol=1e-5)
        # 2 of 4 clients took part: c = 0 + 2/4 * mean(Δc)
        np.testing.assert_allclose(s.control[k], 0.5 * (dcs[0][k] + dcs[1][k]) / 2, rtol=1e-5)  # type: ignore[index]


def test_fedavgm_matches_flower_fedavgm_when_not_modality_aware() -> None:
    rng = np.random.default_rng(8)
    ours = UmbraFedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    ref = FedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    glob = _same_rounds(ours, ref, rng, rtol=1e-6)
    # momentum round-trips through a checkpoint (by name) into a fresh strategy
    fresh = UmbraFedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    fresh.load_state_arrays(dict(reversed(list(ours.state_arrays().items()))))
    replies = [_reply(_arrays(rng), _counts(5, 1, 1, 1), i) for i in range(2)]
    for s in (ours, fresh):
        list(s.configure_train(4, to_record(glob), ConfigRecord(), FakeGrid(2)))  # type: ignore[arg-type]
    a = from_record(ours.aggregate_train(4, replies)[0])  # type: ignore[arg-type]
    b = from_record(fresh.aggregate_train(4, replies)[0])  # type: ignore[arg-type]
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])


def test_fedavgm_without_momentum_is_the_modality_aware_average() -> None:
    rng = np.random.default_rng(9)
    glob = _arrays(rng)
    replies = [
        _reply(_arrays(rng), _counts(10, 10, 0, 5), 0),
        _reply(_arrays(rng), _counts(20, 4, 20, 0), 1),
    ]
    m = UmbraFedAvgM(server_learning_rate=1.0, server_momentum=0.0)
    m.set_modality_map(parameter_modality)
    plain = ModalityFedAvg()
    plain.set_modality_map(parameter_modality)
    for s in (m, plain):
        list(s.configure_train(1, to_record(glob), ConfigRecord(), FakeGrid(2)))  # type: ignore[arg-type]
    a = from_record(m.aggregate_train(1, replies)[0])  # type: ignore[arg-type]
    b = from_record(plain.aggregate_train(1, replies)[0])  # type: ignore[arg-type]
    for k in KEYS:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
