"""The secure-round skeleton and the transport registry, with a stub transport whose sums
are known exactly: the skeleton turns sums into the modality-aware average, keeps the
transport's bytes on an abort, and carries the weight scale from one round to the next;
the registry refuses duplicate names; the secure package reaches the federation only
through its common module."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from umbra.config import FederationConfig
from umbra.errors import ConfigError
from umbra.federation.common import (
    SecureRound,
    SecureSettings,
    SecureSum,
    SecureTransport,
    config_bytes,
    config_int,
    config_list,
    from_record,
)
from umbra.federation.secure_round import SecureTrainRound
from umbra.federation.strategies import build_strategy
from umbra.models import parameter_modality
from umbra.secure import TransportRegistry, identity, transports
from umbra.secure.contribution import DEFAULT_WEIGHT_SCALE, int_template, make_contribution

NODES = [21, 22, 23]
X = {"encoders.image.w": np.zeros(3, np.float32), "head.w": np.ones(2, np.float32)}


class _Grid:
    def get_node_ids(self) -> list[int]:
        return list(NODES)


class _SumTransport:
    """Sums given plaintext contributions as a secure transport would (or aborts)."""

    name = "stub"
    client_action = "stub"

    def __init__(self, replies: list[tuple[dict[str, np.ndarray], dict[str, Any]]]) -> None:
        self.replies = replies
        self.rounds: list[SecureRound] = []
        self.abort: str | None = None

    def aggregate(self, round: SecureRound) -> SecureSum:
        self.rounds.append(round)
        out = SecureSum({}, {}, clients=0, bytes_up=300, bytes_down=600,
                        per_client={i: {"up": 100, "down": 200} for i in range(3)})  # fmt: skip
        if self.abort is not None:
            out.note = self.abort
            return out
        parts = [
            make_contribution(X, y, m, key_modality=parameter_modality,
                              weight_scale=round.weight_scale)
            for y, m in self.replies
        ]  # fmt: skip
        out.float_sums = {k: sum(p.floats[k] for p in parts) for k in parts[0].floats}
        out.int_sums = {k: sum(p.ints[k] for p in parts) for k in int_template()}
        out.clients = len(parts)
        return out


def _strategy() -> Any:
    fed = FederationConfig.model_validate({"strategy": "fedavg", "num_clients": len(NODES)})
    return build_strategy("fedavg", fed, key_modality=parameter_modality, fraction_train=1.0,
                          fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                          min_available_nodes=1)  # fmt: skip


def _replies() -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    # client 0 holds no image records: the image encoder averages over clients 1 and 2 only
    return [
        ({"encoders.image.w": np.full(3, 9.0), "head.w": np.full(2, 2.0)},
         {"num-examples": 10, "n-image": 0, "train-total": 1.0}),
        ({"encoders.image.w": np.full(3, 1.0), "head.w": np.full(2, 4.0)},
         {"num-examples": 30, "n-image": 30, "train-total": 2.0}),
        ({"encoders.image.w": np.full(3, 3.0), "head.w": np.full(2, 0.0)},
         {"num-examples": 10, "n-image": 10, "train-total": 3.0}),
    ]  # fmt: skip


def test_skeleton_returns_the_modality_aware_average_and_carries_the_weight_scale() -> None:
    transport = _SumTransport(_replies())
    train_round = SecureTrainRound(transport, timeout_s=5.0)
    out = train_round(_strategy(), cast(Grid, _Grid()), 1, X)
    assert out.record is not None and out.note is None
    got = from_record(out.record)
    # the plaintext rule by hand: image over the 40 image records, head over all 50
    np.testing.assert_allclose(got["encoders.image.w"], (30 * 1.0 + 10 * 3.0) / 40, rtol=1e-6)
    np.testing.assert_allclose(got["head.w"], (10 * 2.0 + 30 * 4.0 + 10 * 0.0) / 50, rtol=1e-6)
    assert (out.clients, out.bytes_up, out.bytes_down) == (3, 300, 600)
    assert out.per_client[2] == {"up": 100, "down": 200}
    first = transport.rounds[0]
    assert sorted(first.messages) == NODES and first.weight_scale == DEFAULT_WEIGHT_SCALE
    assert first.public_config() == {"weight-scale": DEFAULT_WEIGHT_SCALE, "modality-aware": True}
    train_round(_strategy(), cast(Grid, _Grid()), 2, X)
    assert transport.rounds[1].weight_scale == pytest.approx(50 / 3)  # examples per client


def test_an_aborted_transport_keeps_the_model_and_reports_its_bytes() -> None:
    transport = _SumTransport(_replies())
    transport.abort = "2 survivors < threshold 3"
    out = SecureTrainRound(transport)(_strategy(), cast(Grid, _Grid()), 1, X)
    assert out.record is None and out.metrics is None
    assert out.note == "2 survivors < threshold 3"
    assert (out.clients, out.bytes_up, out.bytes_down) == (0, 300, 600)


def test_a_mixed_dp_aggregate_aborts_with_the_reason() -> None:
    replies = _replies()
    replies[1][1]["dp-unweighted"] = 1  # one DP contribution among weighted ones
    out = SecureTrainRound(_SumTransport(replies))(_strategy(), cast(Grid, _Grid()), 1, X)
    assert out.record is None and "cannot mix them" in (out.note or "")
    assert out.bytes_up == 300


def test_registry_names_the_built_in_transports_and_refuses_duplicates() -> None:
    registry = transports()
    assert registry.names() == ["ckks", "secagg+"]
    secagg = registry.get("secagg+")
    # SecAgg+ signs its advertisements when the run has identities; CKKS cannot run without
    assert (secagg.client_action, secagg.integer_noise) == ("secagg", True)
    assert (secagg.signed, secagg.identity_required) == (True, False)
    assert registry.get("ckks").signed and registry.get("ckks").identity_required
    with pytest.raises(ValueError, match="already registered"):
        registry.register(secagg)
    with pytest.raises(ConfigError, match=r"unknown round transport 'none'.*ckks"):
        registry.get("none")
    # a fresh registry holds only what is registered into it: nothing on import
    assert TransportRegistry().names() == []
    server = secagg.server(SecureSettings(aggregation="secagg+"))
    assert (server.name, server.client_action) == ("secagg+", "secagg")
    assert server is not secagg.server(SecureSettings())  # one per run


def test_record_accessors_name_the_bad_value() -> None:
    rec = ConfigRecord({"n": 3, "b": b"\x01", "ids": [1, 2], "s": "x"})
    assert config_int(rec, "n") == 3 and config_int(rec, "missing", 7) == 7
    assert config_bytes(rec, "b") == b"\x01" and config_list(rec, "ids") == [1, 2]
    assert config_list(rec, "missing") == []
    with pytest.raises(ValueError, match="'s' is not a number"):
        config_int(rec, "s")
    with pytest.raises(ValueError, match="'n' is not bytes"):
        config_bytes(rec, "n")
    with pytest.raises(KeyError):
        config_int(rec, "missing")


def test_secure_package_imports_only_the_common_module_of_the_federation() -> None:
    root = Path(__file__).resolve().parents[1] / "src" / "umbra" / "secure"
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n for n in names if n.startswith("umbra.federation")}
    assert found == {"umbra.federation.common"}


def test_specs_built_from_a_config_are_typed_and_picklable(tmp_path: Path) -> None:
    """Flower's simulation ships the ClientApp's spec to its workers; the server spec is
    built from the config in one place (``ServerSpec.from_config``)."""
    import pickle

    from umbra.config import load_config
    from umbra.federation.client_app import ClientSpec
    from umbra.federation.server_app import ServerSpec
    from umbra.federation.train import TrainSettings
    from umbra.run.simulation import secure_setup

    cfg = load_config("smoke", overrides=["secure.aggregation=ckks"])
    transport, secure, identities = secure_setup(cfg)
    assert transport is not None and transport.name == "ckks"
    assert sorted(identities) == sorted(secure.roster) == list(range(cfg.federation.num_clients))
    assert secure.rounds == cfg.federation.rounds and secure.threshold == cfg.secure.threshold
    server = ServerSpec.from_config(cfg, run_dir=str(tmp_path), test_dir=str(tmp_path),
                                    model_spec={}, secure=secure, transport=transport)  # fmt: skip
    assert server.privacy is None and server.federation is cfg.federation
    client = ClientSpec(data_dir="d", state_dir="s", model_spec={}, settings=TrainSettings(),
                        seed=0, transports=(transport,), secure=secure, identities=identities)  # fmt: skip
    assert pickle.loads(pickle.dumps(server)).transport == transport
    again = pickle.loads(pickle.dumps(client))
    assert again.action_spec().identities == identities
    assert all(key.hex() not in repr(client) for key in identities.values())
    plain = secure_setup(load_config("smoke"))
    assert plain[0] is None and plain[2] == {} and plain[1].roster == {}
    # simulated SecAgg+ signs its advertisements too, with fresh keys per run
    _, sa, sa_keys = secure_setup(load_config("smoke", overrides=["secure.aggregation=secagg+"]))
    assert sorted(sa_keys) == sorted(sa.roster) == list(range(cfg.federation.num_clients))
    assert all(identity.public_identity(sa_keys[i]) == sa.roster[i] for i in sa_keys)
    assert not set(sa_keys.values()) & set(identities.values())


def test_secure_transport_entry_is_picklable() -> None:
    """Flower's simulation ships the ClientApp's spec, transport entries included."""
    import pickle

    entry = transports().get("ckks")
    again = pickle.loads(pickle.dumps(entry))
    assert isinstance(again, SecureTransport) and again.client_mod is entry.client_mod
