"""The Flower ServerApp: the round loop, central evaluation and checkpoints.

One method per concern, Flower's strategies for configure/aggregate: each round the
strategy builds the train messages, the Grid delivers them, the strategy aggregates the
replies; the server then evaluates the global model on the held-out test set, writes a
checkpoint (so a killed run loses at most the round in flight) and reports the round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from umbra.errors import UmbraError
from umbra.federation.checkpoint import load_latest, save_checkpoint
from umbra.federation.client_data import load_client_data
from umbra.federation.records import from_record, message_bytes, to_record
from umbra.federation.strategies import build_strategy
from umbra.federation.train import Batchable, evaluate, get_arrays, set_arrays
from umbra.models import ModelSpec, MultimodalNet, parameter_modality

__all__ = ["RoundReport", "ServerSpec", "initial_arrays", "make_server_app"]

log = logging.getLogger("umbra")

RoundReport = dict[str, Any]


@dataclass
class ServerSpec:
    """What the ServerApp needs: where to write, what to build, how long to run."""

    run_dir: str
    test_dir: str
    model_spec: dict[str, Any]
    federation: Any  # FederationConfig
    seed: int
    eval_every: int = 1
    node_timeout_s: float = 600.0
    on_round: Callable[[RoundReport], None] | None = None
    on_finish: Callable[[dict[str, np.ndarray], list[RoundReport]], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def initial_arrays(model_spec: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The seeded initial global model."""
    torch.manual_seed(seed)
    return get_arrays(MultimodalNet(ModelSpec.from_dict(model_spec)))


def _wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise UmbraError(f"only {len(list(grid.get_node_ids()))} of {n} clients connected")
        time.sleep(0.05)


def run_rounds(spec: ServerSpec, grid: Grid) -> tuple[dict[str, np.ndarray], list[RoundReport]]:
    """Run (or resume) the federated rounds; returns the final arrays and the history."""
    fed = spec.federation
    run_dir = Path(spec.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    strategy = build_strategy(
        fed.strategy,
        fed,
        key_modality=parameter_modality,
        fraction_train=fed.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=max(1, round(fed.fraction_train * fed.num_clients)),
        min_evaluate_nodes=0,
        min_available_nodes=fed.num_clients,
    )
    latest = load_latest(ckpt_dir)
    if latest is None:
        arrays, history, start = initial_arrays(spec.model_spec, spec.seed), [], 0
    else:
        arrays, history, start = latest.arrays, list(latest.state["history"]), latest.round
        strategy.load_state_arrays(latest.strategy)
        log.info("resuming after round %d", start)
    model = MultimodalNet(ModelSpec.from_dict(spec.model_spec))
    test = Batchable.from_data(load_client_data(spec.test_dir, 0))
    _wait_for_nodes(grid, fed.num_clients, spec.node_timeout_s)

    for rnd in range(start + 1, fed.rounds + 1):
        t0 = time.perf_counter()
        messages = list(strategy.configure_train(rnd, to_record(arrays), ConfigRecord(), grid))
        bytes_down = message_bytes(messages)
        replies = list(grid.send_and_receive(messages, timeout=spec.node_timeout_s))
        ok = [m for m in replies if not m.has_error()]
        for m in replies:
            if m.has_error():
                log.warning("client reply error: %s", m.error.reason)
        if not ok:
            reasons = "; ".join(sorted({str(m.error.reason) for m in replies if m.has_error()}))
            raise UmbraError(f"round {rnd}: no client returned an update ({reasons or 'timeout'})")
        bytes_up = message_bytes(ok)
        record, train_metrics = strategy.aggregate_train(rnd, ok)
        if record is None:
            raise UmbraError(f"round {rnd}: aggregation failed")
        arrays = from_record(record)
        row: RoundReport = {
            "round": rnd,
            "clients": len(ok),
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "train_loss": float(train_metrics["train-total"]) if train_metrics else None,  # type: ignore[arg-type]
        }
        if rnd % spec.eval_every == 0 or rnd == fed.rounds:
            set_arrays(model, arrays)
            ev = evaluate(model, test, subsets=[])
            row.update(accuracy=ev["accuracy"], macro_f1=ev["macro_f1"], loss=ev["loss"])
        row["wall_s"] = time.perf_counter() - t0
        history.append(row)
        save_checkpoint(
            ckpt_dir,
            server_round=rnd,
            arrays=arrays,
            strategy=strategy.state_arrays(),
            state={"history": history},
        )
        if spec.on_round is not None:
            spec.on_round(row)
    return arrays, history


def make_server_app(spec: ServerSpec) -> ServerApp:
    """A ServerApp bound to ``spec``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        arrays, history = run_rounds(spec, grid)
        if spec.on_finish is not None:
            spec.on_finish(arrays, history)

    return app


def load_model(model_spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> MultimodalNet:
    model = MultimodalNet(ModelSpec.from_dict(model_spec))
    set_arrays(model, arrays)
    return model
