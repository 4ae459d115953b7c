"""The server loop of buffered asynchronous aggregation (FedBuff), on a virtual clock.

FedBuff (Nguyen et al., AISTATS 2022, https://arxiv.org/abs/2106.06639): clients train at
their own pace; the server keeps a buffer of ``K`` updates, each weighted by its staleness
``s(τ) = 1/sqrt(1 + τ)``, and updates the global model whenever the buffer is full (one
*release*; ``federation.rounds`` counts releases). Here:

* the speeds (`umbra.federation.buffered.speeds`) drive a virtual clock
  (`umbra.federation.buffered.clock`): a client's compute time is the nominal cost of one
  local training (`NOMINAL_COST` virtual seconds) times its speed factor, and the server
  takes updates in virtual-time order, so results do not depend on this machine's load;
* each release is one round among exactly the buffer's clients over Flower's Message API
  (`umbra.federation.buffered.buffer_round`: train messages pushed, replies pulled as they
  arrive), in the clear or as one secure-aggregation instance among those ``K``; each
  client trains on the model version it started from and weights its own update;
* under DP each release is a release in the ledger, written before its messages exist.

Every row of the history has the release's ``virtual_s`` (the clock at the release), the
buffer's partition ids and their staleness; results.json's ``async`` object states the
clock (:func:`async_summary`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from umbra.config import FederationConfig
from umbra.errors import UmbraError
from umbra.federation.buffered.buffer_round import (
    BufferDP,
    BufferedPlainRound,
    BufferedSecureRound,
    BufferPlan,
)
from umbra.federation.buffered.clock import VirtualClock
from umbra.federation.buffered.speeds import speed_factors
from umbra.federation.checkpoint import load_latest, save_checkpoint
from umbra.federation.client_data import load_client_data
from umbra.federation.common import RoundOutcome, metric_float
from umbra.federation.server_app import (
    RoundReport,
    RunResult,
    ServerSpec,
    close_row,
    initial_arrays,
    planned_controller,
    query_clients,
    train_and_apply,
    wait_for_nodes,
)
from umbra.federation.strategies import ModalityFedAvg, build_strategy
from umbra.federation.train import Batchable
from umbra.models import ModelSpec, MultimodalNet, parameter_modality
from umbra.privacy.controller import PrivacyController

__all__ = ["NOMINAL_COST", "async_summary", "client_durations", "run_buffered"]

log = logging.getLogger("umbra")

#: Virtual seconds of one local training at speed factor 1.
NOMINAL_COST = 1.0


def client_durations(fed: FederationConfig, seed: int) -> dict[int, float]:
    """partition id -> virtual compute time of one local training (``federation.*``'s
    speed distribution, drawn from the run seed: hardware, not privacy randomness)."""
    factors = speed_factors(
        fed.num_clients,
        sigma=fed.speed_sigma,
        straggler_fraction=fed.straggler_fraction,
        slowdown=fed.straggler_slowdown,
        seed=seed,
    )
    return {pid: NOMINAL_COST * float(f) for pid, f in enumerate(factors)}


def async_summary(fed: FederationConfig, seed: int, history: list[RoundReport]) -> dict[str, Any]:
    """results.json's ``async`` object: how the run was timed, and the clock at its end."""
    durations = client_durations(fed, seed)
    return {
        "clock": "virtual",
        "statement": (
            "Client speeds are simulated: each client's compute time is the nominal cost of "
            f"one local training ({NOMINAL_COST:g} virtual s) times its speed factor; the "
            "server takes updates in virtual-time order. Training ran on this machine; "
            "network and secure-aggregation time are not on the clock."
        ),
        "buffer_size": fed.buffer_size or fed.num_clients,
        "staleness": fed.staleness,
        "compute_s": {str(p): d for p, d in sorted(durations.items())},
        "virtual_s": float(history[-1]["virtual_s"]) if history else 0.0,
    }


def run_buffered(spec: ServerSpec, grid: Grid) -> RunResult:
    """Run ``federation.rounds`` buffer releases; returns what `run_rounds` returns."""
    fed = spec.federation
    run_dir = Path(spec.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if load_latest(ckpt_dir) is not None:
        raise UmbraError(
            "federation.mode = 'async' cannot resume: the clients' in-flight models are not "
            "checkpointed; start a new run folder"
        )
    strategy = build_strategy(
        fed.strategy,
        fed,
        key_modality=parameter_modality,
        seed=spec.seed,
        fraction_train=1.0,  # the clock chooses the buffer; the strategy takes it whole
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_evaluate_nodes=0,
        min_available_nodes=1,
    )
    arrays = initial_arrays(spec.model_spec, spec.seed)
    model = MultimodalNet(ModelSpec.from_dict(spec.model_spec))
    test = Batchable.from_data(load_client_data(spec.test_dir, 0))
    wait_for_nodes(grid, fed.num_clients, spec.node_timeout_s)
    info = query_clients(grid, spec.node_timeout_s)
    node_of = {pid: node for node, (pid, _) in info.items()}
    size = fed.buffer_size or fed.num_clients
    dp = _buffer_dp(spec, info, model, size)
    controller = dp.controller if dp is not None else None
    train_round = _buffer_round(spec, dp)
    durations = client_durations(fed, spec.seed)
    clock = VirtualClock({p: durations[p] for p in node_of}, max_staleness=fed.max_staleness)
    versions: dict[int, dict[str, np.ndarray]] = {0: arrays}
    history: list[RoundReport] = []
    stopped: str | None = None

    for rnd in range(1, fed.rounds + 1):
        t0 = time.perf_counter()
        buffer = clock.next_buffer(size)
        staleness = buffer.staleness()
        train_round.plan = BufferPlan(
            bases={node_of[t.client]: versions[t.version] for t in buffer.tasks},
            staleness={node_of[p]: tau for p, tau in staleness.items()},
            rule=fed.staleness,
        )
        outcome, arrays, stopped = train_and_apply(
            train_round, strategy, grid, rnd, arrays, what="release"
        )
        if outcome is None:
            break
        clock.release(buffer)
        versions[clock.version] = arrays
        in_use = clock.versions_in_use()
        versions = {v: a for v, a in versions.items() if v in in_use}
        row = _row(rnd, outcome, buffer.released_at, staleness, private=controller is not None)
        if buffer.discarded:
            row["discarded"] = buffer.discarded
        close_row(row, spec, rnd, model=model, test=test, arrays=arrays, controller=controller,
                  t0=t0)  # fmt: skip
        history.append(row)
        _checkpoint(ckpt_dir, rnd, arrays, strategy, history, controller)
        if spec.on_round is not None:
            spec.on_round(row)
    privacy = controller.summary() if controller is not None else None
    return RunResult(arrays=arrays, history=history, stopped=stopped, privacy=privacy)


def _row(
    rnd: int,
    outcome: RoundOutcome,
    virtual_s: float,
    staleness: dict[int, int],
    *,
    private: bool,
) -> RoundReport:
    """One release's row: the synchronous row's fields plus the clock and the buffer."""
    metrics = outcome.metrics
    loss = None
    if not private and metrics is not None and "train-total" in metrics:
        loss = metric_float(metrics, "train-total")  # under DP the clients keep their losses
    row: RoundReport = {
        "round": rnd,
        "clients": outcome.clients,
        "bytes_up": outcome.bytes_up,
        "bytes_down": outcome.bytes_down,
        "bytes_per_client": {str(k): v for k, v in sorted(outcome.per_client.items())},
        "aborted": outcome.record is None,
        "train_loss": loss,
        "virtual_s": virtual_s,
        "buffer": sorted(staleness),
        "staleness": {str(p): tau for p, tau in sorted(staleness.items())},
    }
    if outcome.record is None:
        row["note"] = outcome.note or "aborted"
    dropped = sorted(set(staleness) - set(outcome.partitions.values()))
    if dropped and outcome.record is not None:
        row["dropped"] = dropped
    return row


def _checkpoint(
    ckpt_dir: Path,
    rnd: int,
    arrays: dict[str, np.ndarray],
    strategy: ModalityFedAvg,
    history: list[RoundReport],
    controller: PrivacyController | None,
) -> None:
    """The release's checkpoint (the final model for `umbra audit`; not resumable)."""
    state: dict[str, Any] = {"history": history}
    if controller is not None:
        from umbra.privacy.ledger import ledger_digest

        state["ledger"] = ledger_digest(controller.ledger.path)
    save_checkpoint(ckpt_dir, server_round=rnd, arrays=arrays,
                    strategy=strategy.state_arrays(), state=state)  # fmt: skip


def _buffer_dp(
    spec: ServerSpec, info: dict[int, tuple[int, int]], model: MultimodalNet, size: int
) -> BufferDP | None:
    """The run's server-side DP over buffers (None without DP): the controller planned
    with every client's public record count, one ledger release per buffer."""
    if spec.privacy is None or spec.privacy.mode == "none":
        return None
    fed = spec.federation
    controller = planned_controller(spec, model, info)
    return BufferDP(
        controller,
        {node: pid for node, (pid, _) in info.items()},
        secure=spec.secure,
        integer_noise=spec.transport is not None and spec.transport.integer_noise,
        lr=fed.lr,
        buffer_size=size,
    )


def _buffer_round(
    spec: ServerSpec, dp: BufferDP | None
) -> BufferedPlainRound | BufferedSecureRound:
    """A release in the clear, or one secure-aggregation instance over the spec's transport."""
    timeout_s = spec.federation.reply_timeout_s
    if spec.transport is None:
        return BufferedPlainRound(dp=dp, timeout_s=timeout_s)
    return BufferedSecureRound(spec.transport.server(spec.secure), dp=dp, timeout_s=timeout_s)
