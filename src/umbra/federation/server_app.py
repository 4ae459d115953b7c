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
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from umbra.config import Config, FederationConfig, PrivacyConfig
from umbra.errors import AllRoundsAborted, BudgetExhausted, UmbraError
from umbra.federation.availability import NodeFloor
from umbra.federation.checkpoint import load_latest, save_checkpoint
from umbra.federation.client_data import load_client_data
from umbra.federation.common import (
    NUM_EXAMPLES,
    PARTITION_ID,
    RoundOutcome,
    SecureSettings,
    SecureTransport,
    from_record,
    metric_float,
    metric_int,
    reply_metrics,
    send_and_receive,
)
from umbra.federation.compression_server import Compression
from umbra.federation.rounds import PlainTrainRound, TrainRound
from umbra.federation.secure_round import SecureTrainRound
from umbra.federation.strategies import ModalityFedAvg, build_strategy
from umbra.federation.train import Batchable, evaluate, get_arrays, set_arrays
from umbra.models import ModelSpec, MultimodalNet, parameter_groups, parameter_modality
from umbra.privacy.client_dp import shares_needed
from umbra.privacy.controller import PrivacyController
from umbra.privacy.round_dp import RoundDP

__all__ = [
    "RoundReport",
    "RunResult",
    "ServerSpec",
    "check_some_round_completed",
    "close_row",
    "initial_arrays",
    "make_server_app",
    "planned_controller",
    "query_clients",
    "train_and_apply",
    "wait_for_nodes",
]

log = logging.getLogger("umbra")

#: One row of ``results.json``'s ``rounds``: round, clients, bytes, aborted/note, the
#: partition ids of the clients sent the round whose update is not in it (``dropped``,
#: only when there are some), train loss, evaluation metrics (every ``run.eval_every``
#: rounds), ε (under DP), wall time; with ``federation.detect`` the partition ids
#: ``screened`` and ``flagged`` and each update's ``anomaly`` scores.
RoundReport = dict[str, Any]


@dataclass
class RunResult:
    """What the round loop returns: the final arrays, one row per round, why the run
    stopped early (None: it ran every round) and the privacy summary (None without DP)."""

    arrays: dict[str, np.ndarray]
    history: list[RoundReport]
    stopped: str | None = None
    privacy: dict[str, Any] | None = None


@dataclass
class ServerSpec:
    """What the ServerApp needs: where to write, what to build, how long to run.

    ``transport`` is the registry entry of the secure round transport (None: plaintext
    rounds); ``secure`` its public settings (threshold, clip range, the CKKS roster).
    ``node_timeout_s`` bounds the start (every client connected, the DP info query);
    each round's message exchanges wait ``federation.reply_timeout_s`` for replies.
    Picklable as long as the callbacks are.
    """

    run_dir: str
    test_dir: str
    model_spec: dict[str, Any]
    federation: FederationConfig
    seed: int
    eval_every: int = 1
    #: DP mode, budget, accountant (None: no differential privacy)
    privacy: PrivacyConfig | None = None
    secure: SecureSettings = field(default_factory=SecureSettings)
    transport: SecureTransport | None = None
    node_timeout_s: float = 600.0
    #: update compression (compression.*; none by default)
    compression: Compression = field(default_factory=Compression)
    on_round: Callable[[RoundReport], None] | None = None
    on_finish: Callable[[RunResult], None] | None = None

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        run_dir: str,
        test_dir: str,
        model_spec: dict[str, Any],
        secure: SecureSettings,
        transport: SecureTransport | None,
        on_round: Callable[[RoundReport], None] | None = None,
        on_finish: Callable[[RunResult], None] | None = None,
    ) -> ServerSpec:
        """The spec of ``cfg``'s server (the data folders and model spec already made)."""
        return cls(
            run_dir=run_dir,
            test_dir=test_dir,
            model_spec=model_spec,
            federation=cfg.federation,
            seed=cfg.run.seed,
            eval_every=cfg.run.eval_every,
            privacy=cfg.privacy if cfg.privacy.mode != "none" else None,
            secure=secure,
            transport=transport,
            compression=Compression(
                method=cfg.compression.method,
                fraction=cfg.compression.fraction,
                error_feedback=cfg.compression.error_feedback,
                run_seed=cfg.run.seed,
                support=cfg.compression.support,
                cyclic_share=cfg.compression.cyclic_share,
                value_bits=cfg.compression.value_bits,
            ),
            on_round=on_round,
            on_finish=on_finish,
        )


def initial_arrays(model_spec: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The seeded initial global model."""
    torch.manual_seed(seed)
    return get_arrays(MultimodalNet(ModelSpec.from_dict(model_spec)))


def wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> None:
    """Wait until ``n`` nodes are connected (UmbraError after ``timeout_s`` seconds)."""
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise UmbraError(f"only {len(list(grid.get_node_ids()))} of {n} clients connected")
        time.sleep(0.05)


def run_rounds(spec: ServerSpec, grid: Grid) -> RunResult:
    """Run (or resume) the federated rounds; returns the final arrays, the history, why
    the run stopped early (the privacy budget) and the privacy summary."""
    fed = spec.federation
    if fed.mode == "async":  # buffered asynchronous releases instead of synchronous rounds
        from umbra.federation.buffered.loop import run_buffered

        return run_buffered(spec, grid)
    run_dir = Path(spec.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    strategy = _strategy(spec)
    latest = load_latest(ckpt_dir)
    if latest is None:
        arrays, history, start = initial_arrays(spec.model_spec, spec.seed), [], 0
    else:
        arrays, history, start = latest.arrays, list(latest.state["history"]), latest.round
        strategy.load_state_arrays(latest.strategy)
        if spec.privacy is not None and spec.privacy.mode != "none":
            from umbra.privacy.ledger import check_coverage

            check_coverage(run_dir / "ledger.jsonl", through_round=start,
                           digest=latest.state.get("ledger"))  # fmt: skip
        log.info("resuming after round %d", start)
    model = MultimodalNet(ModelSpec.from_dict(spec.model_spec))
    test = Batchable.from_data(load_client_data(spec.test_dir, 0))
    wait_for_nodes(grid, fed.num_clients, spec.node_timeout_s)
    dp = _round_dp(spec, grid, model)
    controller = dp.controller if dp is not None else None
    train_round = _train_round(spec, dp)
    floor = _node_floor(spec, strategy)
    partitions: dict[int, int] = dict(dp.node_pids) if dp is not None else {}
    stopped: str | None = None

    for rnd in range(start + 1, fed.rounds + 1):
        t0 = time.perf_counter()
        floor.apply(strategy, grid)  # a crashed node must not stall the round
        outcome, arrays, stopped = train_and_apply(train_round, strategy, grid, rnd, arrays)
        if outcome is None:
            break
        train_metrics = outcome.metrics
        row: RoundReport = {
            "round": rnd,
            "clients": outcome.clients,
            "bytes_up": outcome.bytes_up,
            "bytes_down": outcome.bytes_down,
            "bytes_per_client": {str(k): v for k, v in sorted(outcome.per_client.items())},
            "aborted": outcome.record is None,
            # under DP the clients keep their losses (they are not noised)
            "train_loss": _metric(train_metrics, "train-total") if controller is None else None,
        }
        if outcome.record is None:
            row["note"] = outcome.note or "aborted"
        partitions.update(outcome.partitions)
        screening = strategy.take_screening()  # federation.detect: who looked poisoned
        if screening is not None:
            row["screened"] = list(screening.partitions)
            row["flagged"] = list(screening.flagged)
            row["anomaly"] = {str(s.partition): s.row() for s in screening.scores}
            if screening.reputation:  # federation.reputation: who was left out, and why
                row["excluded"] = list(screening.excluded)
                row["reputation"] = screening.reputation
        if outcome.dropped_nodes:
            row["dropped"] = _dropped_partitions(rnd, outcome.dropped_nodes, partitions)
        close_row(row, spec, rnd, model=model, test=test, arrays=arrays, controller=controller,
                  t0=t0)  # fmt: skip
        history.append(row)
        state: dict[str, Any] = {"history": history}
        if controller is not None:  # what a resume must find again (see check_coverage)
            from umbra.privacy.ledger import ledger_digest

            state["ledger"] = ledger_digest(controller.ledger.path)
        save_checkpoint(
            ckpt_dir,
            server_round=rnd,
            arrays=arrays,
            strategy=strategy.state_arrays(),
            state=state,
        )
        if spec.on_round is not None:
            spec.on_round(row)
    privacy = controller.summary() if controller is not None else None
    return RunResult(arrays=arrays, history=history, stopped=stopped, privacy=privacy)


def train_and_apply(
    train_round: TrainRound,
    strategy: ModalityFedAvg,
    grid: Grid,
    rnd: int,
    arrays: dict[str, np.ndarray],
    *,
    what: str = "round",
) -> tuple[RoundOutcome | None, dict[str, np.ndarray], str | None]:
    """One round (or buffer release) of the loops: ``(outcome, the global model after it,
    None)``; an aborted round keeps ``arrays``. A spent budget is ``(None, arrays, why)``:
    the loop stops there."""
    try:
        outcome = train_round(strategy, grid, rnd, arrays)
    except BudgetExhausted as stop:
        log.warning("%s", stop)
        return None, arrays, str(stop)
    if outcome.record is None:
        log.error("%s %d aborted (%s); the global model is unchanged", what, rnd, outcome.note)
        return outcome, arrays, None
    return outcome, from_record(outcome.record), None


def close_row(
    row: RoundReport,
    spec: ServerSpec,
    rnd: int,
    *,
    model: MultimodalNet,
    test: Batchable,
    arrays: dict[str, np.ndarray],
    controller: PrivacyController | None,
    t0: float,
) -> None:
    """A round's row, completed: the evaluation every ``eval_every`` rounds and at the
    last, ε so far (under DP), and the wall time since ``t0``."""
    if rnd % spec.eval_every == 0 or rnd == spec.federation.rounds:
        set_arrays(model, arrays)
        ev = evaluate(model, test, subsets=[])
        row.update(accuracy=ev["accuracy"], macro_f1=ev["macro_f1"], loss=ev["loss"])
    if controller is not None:
        row["epsilon"] = controller.epsilon()
    row["wall_s"] = time.perf_counter() - t0


def _strategy(spec: ServerSpec) -> ModalityFedAvg:
    """The configured strategy; client-level DP samples clients itself (Poisson), so its
    strategy takes every node offered."""
    fed = spec.federation
    client_dp = spec.privacy is not None and spec.privacy.mode == "client"
    return build_strategy(
        fed.strategy,
        fed,
        key_modality=parameter_modality,
        seed=spec.seed,
        fraction_train=1.0 if client_dp else fed.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=1 if client_dp else max(1, round(fed.fraction_train * fed.num_clients)),
        min_evaluate_nodes=0,
        min_available_nodes=1 if client_dp else fed.num_clients,
    )


def _node_floor(spec: ServerSpec, strategy: ModalityFedAvg) -> NodeFloor:
    """The strategy's floors as built, and the fewest nodes a round can finish with."""
    quorum = 1
    if spec.transport is not None:
        quorum = shares_needed(float(spec.secure.threshold), spec.federation.num_clients)
    return NodeFloor(min_train_nodes=strategy.min_train_nodes,
                     min_available_nodes=strategy.min_available_nodes, quorum=quorum)  # fmt: skip


def _dropped_partitions(rnd: int, nodes: tuple[int, ...], partitions: dict[int, int]) -> list[int]:
    """The partition ids of a round's dropped nodes (a node never heard from is logged)."""
    unknown = [n for n in nodes if n not in partitions]
    if unknown:
        log.warning("round %d: node(s) %s dropped before naming their partition", rnd, unknown)
    dropped = sorted(partitions[n] for n in nodes if n in partitions)
    log.warning("round %d: client(s) %s dropped out", rnd, dropped)
    return dropped


def planned_controller(
    spec: ServerSpec, model: MultimodalNet, info: dict[int, tuple[int, int]]
) -> PrivacyController:
    """The run's privacy controller (``spec.privacy`` set), planned with every client's
    public record count (``info``: node -> (partition, records), `query_clients`)."""
    assert spec.privacy is not None
    fed = spec.federation
    controller = PrivacyController(
        spec.privacy,
        groups=list(parameter_groups(model)),
        rounds=fed.rounds,
        batch_size=fed.batch_size,
        local_epochs=fed.local_epochs,
        num_clients=fed.num_clients,
        ledger_path=Path(spec.run_dir) / "ledger.jsonl",
    )
    controller.plan_clients({pid: n for pid, n in info.values()})
    return controller


def _round_dp(spec: ServerSpec, grid: Grid, model: MultimodalNet) -> RoundDP | None:
    """The run's server-side DP (None without DP): the planned controller and the node ->
    partition map of the ledger."""
    if spec.privacy is None or spec.privacy.mode == "none":
        return None
    fed = spec.federation
    info = query_clients(grid, spec.node_timeout_s)
    return RoundDP(
        planned_controller(spec, model, info),
        {node: pid for node, (pid, _) in info.items()},
        secure=spec.secure,
        integer_noise=spec.transport is not None and spec.transport.integer_noise,
        lr=fed.lr,
    )


def _train_round(spec: ServerSpec, dp: RoundDP | None) -> TrainRound:
    """The run's round: plaintext, or the secure skeleton over the spec's transport."""
    timeout_s = spec.federation.reply_timeout_s
    if spec.transport is None:
        return PlainTrainRound(dp=dp, timeout_s=timeout_s, compression=spec.compression)
    transport = spec.transport.server(spec.secure)
    return SecureTrainRound(transport, dp=dp, timeout_s=timeout_s, compression=spec.compression)


def check_some_round_completed(history: list[RoundReport]) -> None:
    """Raise AllRoundsAborted when rounds ran and every one of them aborted (the model
    never moved from its initialisation); the first round's reason is the message."""
    if history and all(row.get("aborted") for row in history):
        reason = history[0].get("note") or "no reason recorded"
        raise AllRoundsAborted(
            f"all {len(history)} rounds aborted, the model is untrained (round "
            f"{history[0]['round']}: {reason})"
        )


def query_clients(grid: Grid, timeout_s: float) -> dict[int, tuple[int, int]]:
    """node id -> (partition id, record count), asked of every connected client.

    The record count is 0 where the client keeps it private (client-level DP)."""
    nodes = sorted(grid.get_node_ids())
    msgs = [
        Message(
            RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY
        )
        for n in nodes
    ]
    out: dict[int, tuple[int, int]] = {}
    for reply in send_and_receive(grid, msgs, timeout=timeout_s):
        if reply.has_error():
            raise UmbraError(
                f"client {reply.metadata.src_node_id} did not answer: {reply.error.reason}"
            )
        metrics = reply_metrics(reply)
        out[reply.metadata.src_node_id] = (
            metric_int(metrics, PARTITION_ID),
            metric_int(metrics, NUM_EXAMPLES, 0),
        )
    if len(out) != len(nodes):
        raise UmbraError(f"only {len(out)} of {len(nodes)} clients answered the info query")
    return out


def _metric(metrics: MetricRecord | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    return metric_float(metrics, key)


def make_server_app(spec: ServerSpec) -> ServerApp:
    """A ServerApp bound to ``spec``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_rounds(spec, grid)
        if spec.on_finish is not None:
            spec.on_finish(result)

    return app


def load_model(model_spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> MultimodalNet:
    model = MultimodalNet(ModelSpec.from_dict(model_spec))
    set_arrays(model, arrays)
    return model
