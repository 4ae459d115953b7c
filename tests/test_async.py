"""Buffered asynchronous aggregation (FedBuff): the staleness weight against the paper's
formula, the virtual clock against hand-worked schedules, the reduction to FedAvg, and a
buffered secure aggregate against the plaintext buffered rule computed independently.

Reference: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022 (https://arxiv.org/abs/2106.06639), s(τ) = 1 / sqrt(1 + τ).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from umbra.config import FederationConfig
from umbra.data.sources.synthetic import make_synthetic
from umbra.errors import ConfigError
from umbra.federation.buffered import (
    VirtualClock,
    speed_factors,
    staleness_weight,
    stragglers,
    sync_round_time,
)
from umbra.federation.buffered.buffer_round import (
    BufferedPlainRound,
    BufferedSecureRound,
    BufferPlan,
)
from umbra.federation.buffered.client_update import staleness_scaled
from umbra.federation.buffered.staleness import RULE_KEY, STALENESS_KEY
from umbra.federation.client_app import ClientSpec, make_client_app
from umbra.federation.client_data import write_federation_data
from umbra.federation.common import (
    SecureSettings,
    from_record,
    metric_int,
    reply_metrics,
    to_record,
)
from umbra.federation.in_process_grid import InProcessGrid
from umbra.federation.server_app import ServerSpec, initial_arrays, run_rounds
from umbra.federation.strategies import ModalityFedAvg, build_strategy
from umbra.federation.train import TrainSettings
from umbra.models import ModelSpec, parameter_modality
from umbra.secure import transports
from umbra.secure.identity import generate_identities

N_CLIENTS = 4
MODS = ("image", "audio", "text")


# --- the staleness weight -------------------------------------------------------------


@pytest.mark.parametrize(
    ("tau", "want"),
    [(0, 1.0), (1, 0.7071067811865476), (3, 0.5), (8, 1 / 3), (15, 0.25), (99, 0.1)],
)
def test_staleness_weight_is_fedbuffs_inverse_square_root(tau: int, want: float) -> None:
    # golden values of (1 + τ)^(-1/2), worked by hand (1/sqrt(2) = 0.70710678...)
    assert staleness_weight(tau) == pytest.approx(want, rel=1e-15)
    assert staleness_weight(tau, "constant") == 1.0


@pytest.mark.parametrize("tau", [-1, 1.5, True])
def test_staleness_weight_refuses_a_bad_staleness(tau: Any) -> None:
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(tau)


def test_staleness_weight_names_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown staleness rule 'linear'"):
        staleness_weight(1, "linear")


def test_the_client_moves_its_update_back_by_the_weight() -> None:
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4)}
    y = {k: v + rng.normal(size=v.shape).astype(v.dtype) for k, v in x.items()}
    got = staleness_scaled({STALENESS_KEY: 3, RULE_KEY: "sqrt"}, x, y)
    for k in x:  # s(3) = 1/2: halfway between the start model and the trained one
        assert np.allclose(got[k], (x[k] + y[k]) / 2, atol=1e-6)
        assert got[k].dtype == y[k].dtype
    assert staleness_scaled({}, x, y) == y  # a synchronous round's message: unchanged


# --- the virtual clock ----------------------------------------------------------------


def test_speeds_are_equal_without_spread_and_stragglers_are_slowed_tenfold() -> None:
    assert np.array_equal(
        speed_factors(5, sigma=0.0, straggler_fraction=0.0, slowdown=10.0, seed=1), np.ones(5)
    )
    f = speed_factors(10, sigma=0.0, straggler_fraction=0.2, slowdown=10.0, seed=1)
    slow = stragglers(10, 0.2, seed=1)
    assert len(slow) == 2 and sorted(np.flatnonzero(f == 10.0)) == slow
    assert np.count_nonzero(f == 1.0) == 8
    spread = speed_factors(2000, sigma=0.5, straggler_fraction=0.0, slowdown=10.0, seed=3)
    assert np.log(spread).mean() == pytest.approx(0.0, abs=0.05)  # log-normal(0, 0.5)
    assert np.log(spread).std() == pytest.approx(0.5, abs=0.03)


def test_equal_speeds_and_a_full_buffer_are_synchronous_rounds() -> None:
    clock = VirtualClock({p: 2.0 for p in range(3)}, max_staleness=5)
    for release in range(1, 4):
        buf = clock.next_buffer(3)
        assert [t.client for t in buf.tasks] == [0, 1, 2]
        assert buf.staleness() == {0: 0, 1: 0, 2: 0}
        assert buf.released_at == 2.0 * release
        clock.release(buf)
    assert sync_round_time({0: 2.0, 1: 2.0, 2: 2.0}, [0, 1, 2]) == 2.0


def test_a_straggler_arrives_stale_and_a_too_stale_update_is_discarded() -> None:
    # clients 0 and 1 take 1 s, client 2 takes 3.5 s; buffers of 2
    clock = VirtualClock({0: 1.0, 1: 1.0, 2: 3.5}, max_staleness=3)
    want = [  # (clients, staleness, release time), worked by hand
        ([0, 1], {0: 0, 1: 0}, 1.0),
        ([0, 1], {0: 0, 1: 0}, 2.0),
        ([0, 1], {0: 0, 1: 0}, 3.0),
        ([2, 0], {2: 3, 0: 0}, 4.0),  # 2 started on version 0 at t=0, arrives at version 3
    ]
    for clients, staleness, at in want:
        buf = clock.next_buffer(2)
        assert ([t.client for t in buf.tasks], buf.staleness(), buf.released_at) == (
            clients, staleness, at
        )  # fmt: skip
        assert buf.discarded == 0
        clock.release(buf)
    tight = VirtualClock({0: 1.0, 1: 1.0, 2: 3.5}, max_staleness=1)
    for _ in range(3):
        tight.release(tight.next_buffer(2))
    buf = tight.next_buffer(2)  # 2 arrives 3 versions late (> 1): discarded, restarts at 3.5
    assert buf.discarded == 1 and [t.client for t in buf.tasks] == [0, 1]
    assert tight.versions_in_use() == {3}


def test_bad_buffer_sizes_and_staleness_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="buffer size"):
        VirtualClock({0: 1.0}, max_staleness=1).next_buffer(2)
    with pytest.raises(ValueError, match="max_staleness"):
        VirtualClock({0: 1.0}, max_staleness=0)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["federation.buffer_size=9"], "federation.buffer_size = 9 exceeds"),
        (["federation.max_staleness=0"], "federation.max_staleness must be > 0"),
        (["federation.max_staleness=-3"], "federation.max_staleness must be > 0"),
        (["privacy.mode=client", "privacy.client_rate=0.5"], "no amplification"),
        (["compression.method=q8"], "does not support compression"),
    ],
)
def test_bad_async_settings_are_one_config_error(overrides: list[str], needle: str) -> None:
    from umbra.config import resolve_config

    with pytest.raises(ConfigError, match=needle) as err:
        resolve_config(
            "smoke", overrides=["federation.mode=async", "federation.num_clients=8", *overrides]
        )
    assert "\n" not in str(err.value)


def test_the_secure_sum_of_staleness_weighted_updates_is_the_plaintext_weighted_sum() -> None:
    """Each client weights its own update (the server sees only the sum): the SecAgg+ sum
    of the weighted updates equals Σ s(τ_i) Δ_i, including after a dropout."""
    from secagg_sim import run_secagg_round

    rng = np.random.default_rng(7)
    taus = [0, 3, 8, 1, 15]
    starts = [{"w": rng.normal(size=40)} for _ in taus]
    trained = [{"w": x["w"] + rng.normal(scale=0.3, size=40)} for x in starts]
    config = [{STALENESS_KEY: t, RULE_KEY: "sqrt"} for t in taus]
    updates = [
        staleness_scaled(c, x, y)["w"] - x["w"]
        for c, x, y in zip(config, starts, trained, strict=True)
    ]
    for dropped in ((), (2,)):
        total, transcript = run_secagg_round(updates, threshold=3, clip_range=4.0,
                                             dropouts=dropped)  # fmt: skip
        want = sum(
            (trained[i]["w"] - starts[i]["w"]) / np.sqrt(1 + taus[i])
            for i in range(len(taus))
            if i not in dropped
        )
        assert sorted(transcript.survivors) == [i for i in range(5) if i not in dropped]
        np.testing.assert_allclose(total, want, atol=1e-6)


def test_client_level_dp_divides_a_buffer_by_its_fixed_size() -> None:
    """DP-FedAvg over a buffer: (Σ clipped weighted deltas + noise) / K with K the public
    buffer size (not qN of Poisson rounds); σ = 0 leaves the exact mean to compare."""
    from types import SimpleNamespace

    from umbra.federation.buffered.buffer_round import BufferDP

    ctl = SimpleNamespace(cfg=SimpleNamespace(noise="central", client_rate=1.0),
                          client_sigma=0.0, clip_norms=lambda: {"all": 1.0}, num_clients=10)  # fmt: skip
    dp = BufferDP(cast(Any, ctl), {}, buffer_size=3)
    x = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    summed = {"w": np.array([0.3, -0.6])}
    with pytest.warns(UserWarning):  # σ = 0 is flagged as adding no noise
        got = dp.finish(x, summed, received=3, sampled=3)
    np.testing.assert_allclose(got["w"], [1.1, 1.8], rtol=1e-6)
    with pytest.raises(ValueError, match="buffer_size"):
        BufferDP(cast(Any, ctl), {}, buffer_size=0)


def test_cli_refuses_a_buffer_larger_than_the_federation_with_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    args = ["--preset", "smoke", "--set", "federation.mode=async",
            "--set", "federation.buffer_size=5", "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "umbra.cli", "run", *args],
                          capture_output=True, text=True, env={"PYTHONPATH": str(src),
                          "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "federation.buffer_size = 5 exceeds" in lines[0], lines


# --- rounds through the real ClientApp ------------------------------------------------


def _grid(app: Any, num_nodes: int) -> InProcessGrid:
    """The real ClientApp in-process; torch seeded per node, so that two runs of the same
    client train identically."""
    return InProcessGrid(app, [300 + 11 * i for i in range(num_nodes)], seed_torch=True)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fed")
    data = make_synthetic(n=140, num_classes=3, modalities=MODS, seed=5)
    sizes = [20, 30, 25, 25]  # unequal: the example weights matter
    bounds = np.cumsum([0, *sizes])
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(N_CLIENTS)]
    write_federation_data(root / "train", data, parts, [np.ones((len(p), 3), bool) for p in parts])
    test = np.arange(100, 140)
    write_federation_data(root / "test", data, [test], [np.ones((len(test), 3), bool)])
    spec = ModelSpec.from_data(data, hidden=8, embed_dim=8).to_dict()
    return {"root": root, "model_spec": spec}


def _client_spec(
    federation: dict[str, Any], tmp: Path, secure: SecureSettings | None = None, unit: str = "none"
) -> ClientSpec:
    registry = transports()
    return ClientSpec(
        data_dir=str(federation["root"] / "train"),
        state_dir=str(tmp / "state"),
        model_spec=federation["model_spec"],
        settings=TrainSettings(epochs=1, batch_size=10, lr=0.05),
        seed=3,
        transports=(registry.get(secure.aggregation),) if secure is not None else (),
        secure=secure or SecureSettings(),
        privacy_unit=unit,
    )


def test_fedbuff_with_equal_speeds_and_a_full_buffer_is_fedavg(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    app = make_client_app(_client_spec(federation, tmp_path))

    def run(mode: str) -> Any:
        fed = FederationConfig(num_clients=N_CLIENTS, rounds=3, batch_size=10, mode=mode)
        spec = ServerSpec(run_dir=str(tmp_path / mode), test_dir=str(federation["root"] / "test"),
                          model_spec=federation["model_spec"], federation=fed, seed=1)  # fmt: skip
        return run_rounds(spec, _grid(app, N_CLIENTS).as_grid())

    sync, buffered = run("federated"), run("async")
    x0 = initial_arrays(federation["model_spec"], 1)
    assert any(not np.allclose(sync.arrays[k], x0[k]) for k in x0)  # it trained
    for k in sync.arrays:
        np.testing.assert_allclose(buffered.arrays[k], sync.arrays[k], rtol=1e-6, atol=1e-7)
    assert [r["virtual_s"] for r in buffered.history] == [1.0, 2.0, 3.0]
    assert all(r["staleness"] == {str(p): 0 for p in range(N_CLIENTS)} for r in buffered.history)
    assert [r["accuracy"] for r in buffered.history] == pytest.approx(
        [r["accuracy"] for r in sync.history]
    )


def _strategy() -> ModalityFedAvg:
    fed = FederationConfig(num_clients=N_CLIENTS)
    return build_strategy("fedavg", fed, key_modality=parameter_modality, fraction_train=1.0,
                          fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                          min_available_nodes=1)  # fmt: skip


class _OneNode:
    def __init__(self, node: int) -> None:
        self.node = node

    def get_node_ids(self) -> list[int]:
        return [self.node]


def _trained(
    grid: InProcessGrid, node: int, rnd: int, x: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """The client's trained model from ``x`` in round ``rnd`` and its record count, asked
    with a plain synchronous train message (no staleness)."""
    msgs = list(
        _strategy().configure_train(rnd, to_record(x), ConfigRecord(), cast(Grid, _OneNode(node)))
    )
    (reply,) = grid.send_and_receive(msgs)
    return from_record(reply.content.array_records["arrays"]), metric_int(
        reply_metrics(reply), "num-examples"
    )


@pytest.mark.parametrize("secure", [None, "secagg+", "ckks"])
def test_a_buffered_release_is_fedbuffs_staleness_weighted_step(
    federation: dict[str, Any], tmp_path: Path, secure: str | None
) -> None:
    """Three clients on three model versions (τ = 2, 0, 1) fill a buffer: the new model is
    x + Σ n_i s(τ_i)(y_i - x_{v_i}) / Σ n_i, computed here from each client's own plain
    reply; in the clear and as one SecAgg+ (or threshold CKKS) instance among exactly
    those three."""
    identities, roster = generate_identities(range(N_CLIENTS)) if secure == "ckks" else ({}, {})
    settings = None if secure is None else SecureSettings(aggregation=secure, threshold=0.67,
                                                            clip_range=4.0, roster=roster)  # fmt: skip
    spec = replace(_client_spec(federation, tmp_path, settings), identities=identities)
    grid = _grid(make_client_app(spec), N_CLIENTS)
    rng = np.random.default_rng(4)
    v0 = initial_arrays(federation["model_spec"], 1)
    versions = [
        {k: (v + 0.02 * i * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in v0.items()}
        for i in range(3)
    ]
    x = versions[2]  # the current model: version 2
    nodes = grid.node_ids[:3]
    start = dict(zip(nodes, [0, 2, 1], strict=True))  # node -> the version it started from
    plan = BufferPlan(bases={n: versions[v] for n, v in start.items()},
                      staleness={n: 2 - v for n, v in start.items()}, rule="sqrt")  # fmt: skip
    rnd = 5
    want = {k: np.zeros(v.shape) for k, v in x.items()}
    total = 0
    for n, v in start.items():
        y, count = _trained(
            _grid(make_client_app(_client_spec(federation, tmp_path / "ref")), N_CLIENTS),
            n,
            rnd,
            versions[v],
        )
        s = 1.0 / np.sqrt(1.0 + (2 - v))
        for k in want:
            want[k] += count * s * (y[k].astype(np.float64) - versions[v][k])
        total += count
    want = {k: x[k] + want[k] / total for k in x}

    if secure is None:
        train_round: Any = BufferedPlainRound(timeout_s=60.0)
    else:
        assert settings is not None
        train_round = BufferedSecureRound(transports().get(secure).server(settings), timeout_s=60.0)
    train_round.plan = plan
    out = train_round(_strategy(), grid.as_grid(), rnd, x)
    assert out.record is not None, out.note
    # (CKKS's key set-up, in its first round, also hears from the fourth node)
    assert out.clients == 3 and {0, 1, 2} <= set(out.partitions.values())
    got = from_record(out.record)
    tol = 1e-6 if secure is None else 2e-5  # SecAgg+'s fixed-point ring
    for k in x:
        np.testing.assert_allclose(got[k], want[k], atol=tol, rtol=0)
    assert any(not np.allclose(got[k], x[k]) for k in x)


@pytest.mark.parametrize("unit", ["example", "client"])
def test_every_buffer_release_is_charged_in_the_ledger(
    federation: dict[str, Any], tmp_path: Path, unit: str
) -> None:
    """Buffers of 2 of 4 clients with one 10x straggler: example-level DP charges exactly
    the clients of each buffer in its release, client-level DP one server release per
    buffer at sample rate 1 (no amplification claimed)."""
    from umbra.config import PrivacyConfig
    from umbra.privacy.ledger import read_ledger

    app = make_client_app(_client_spec(federation, tmp_path, unit=unit))
    fed = FederationConfig(num_clients=N_CLIENTS, rounds=3, batch_size=10, mode="async",
                           buffer_size=2, straggler_fraction=0.25, speed_sigma=0.2)  # fmt: skip
    privacy = PrivacyConfig.model_validate(
        {"mode": unit, "epsilon": 20.0, "delta": 1e-3, "accountant": "rdp"}
    )
    spec = ServerSpec(run_dir=str(tmp_path / "run"), test_dir=str(federation["root"] / "test"),
                      model_spec=federation["model_spec"], federation=fed, seed=1,
                      privacy=privacy)  # fmt: skip
    result = run_rounds(spec, _grid(app, N_CLIENTS).as_grid())
    assert len(result.history) == 3 and not any(r["aborted"] for r in result.history)
    releases = read_ledger(tmp_path / "run" / "ledger.jsonl").releases
    if unit == "example":
        charged = sorted((r.round, int(r.party)) for r in releases)
        want = sorted((row["round"], p) for row in result.history for p in row["buffer"])
        assert charged == want
        # the straggler (10x slower) never fills a buffer in 3 releases: it is never charged
        assert {p for _, p in charged} == set(range(N_CLIENTS)) - set(stragglers(4, 0.25, seed=1))
    else:
        assert sorted(r.round for r in releases) == [1, 2, 3]
        assert {(r.party, r.sample_rate) for r in releases} == {("server", 1.0)}
    assert all(len(row["buffer"]) == 2 for row in result.history)
