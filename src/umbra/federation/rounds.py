"""How one training round moves updates between clients and server.

A *round transport* takes the strategy, the Grid, the round number, the global arrays and
the server spec and returns a :class:`RoundOutcome`. ``"none"`` sends plaintext updates
and lets the strategy aggregate them; secure aggregation workflows register their own
(``register_train_round``) and hand the strategy only the aggregate
(:func:`strategy_step`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from umbra.errors import UmbraError
from umbra.federation.records import message_bytes, to_record
from umbra.federation.strategies import ModalityFedAvg, count_key
from umbra.federation.strategies.modality import strip_prefix
from umbra.models import parameter_modality

__all__ = [
    "TRAIN_ROUNDS",
    "RoundOutcome",
    "TrainRound",
    "plain_train_round",
    "register_train_round",
    "reply_partition",
    "strategy_step",
]

log = logging.getLogger("umbra")


@dataclass
class RoundOutcome:
    """What one training round produced.

    ``record`` is the new global model (None: the round aborted and the model stays as it
    was); bytes are real serialized message sizes, in total and per client (keyed by
    partition id, ``{"up": ..., "down": ...}``).
    """

    record: ArrayRecord | None
    metrics: MetricRecord | None
    bytes_up: int
    bytes_down: int
    clients: int
    per_client: dict[int, dict[str, int]] = field(default_factory=dict)
    note: str | None = None


#: (strategy, grid, round, global arrays, server spec) -> outcome
TrainRound = Callable[[ModalityFedAvg, Grid, int, dict[str, np.ndarray], Any], RoundOutcome]
#: How a training round moves updates: "none" (plaintext), or secure aggregation modes.
TRAIN_ROUNDS: dict[str, TrainRound] = {}


def register_train_round(name: str, fn: TrainRound) -> None:
    """Register a round transport (e.g. a secure aggregation workflow); duplicates raise."""
    if name in TRAIN_ROUNDS:
        raise ValueError(f"train round {name!r} is already registered")
    TRAIN_ROUNDS[name] = fn


def reply_partition(msg: Message) -> int:
    metrics = next(iter(msg.content.metric_records.values()))
    return int(metrics["partition-id"])  # type: ignore[arg-type]


def plain_train_round(
    strategy: ModalityFedAvg,
    grid: Grid,
    rnd: int,
    arrays: dict[str, np.ndarray],
    spec: Any,
) -> RoundOutcome:
    """Send the model, collect plaintext updates, let the strategy aggregate them."""
    messages = list(strategy.configure_train(rnd, to_record(arrays), ConfigRecord(), grid))
    down = {m.metadata.dst_node_id: message_bytes([m]) for m in messages}
    replies = list(grid.send_and_receive(messages, timeout=spec.node_timeout_s))
    ok = [m for m in replies if not m.has_error()]
    for m in replies:
        if m.has_error():
            log.warning("client reply error: %s", m.error.reason)
    if not ok:
        reasons = "; ".join(sorted({str(m.error.reason) for m in replies if m.has_error()}))
        raise UmbraError(f"round {rnd}: no client returned an update ({reasons or 'timeout'})")
    per_client = {
        reply_partition(m): {"up": message_bytes([m]), "down": down.get(m.metadata.src_node_id, 0)}
        for m in ok
    }
    record, metrics = strategy.aggregate_train(rnd, ok)
    if record is None:
        raise UmbraError(f"round {rnd}: aggregation failed")
    return RoundOutcome(
        record=record,
        metrics=metrics,
        bytes_up=sum(c["up"] for c in per_client.values()),
        bytes_down=sum(down.values()),
        clients=len(ok),
        per_client=per_client,
    )


def strategy_step(
    strategy: ModalityFedAvg, rnd: int, averaged: dict[str, np.ndarray], metrics: dict[str, float]
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """Hand an already-averaged update (e.g. from secure aggregation) to the strategy.

    The strategy sees one reply holding the average, so FedAvg/FedProx keep it as is and
    FedAdam/SCAFFOLD apply their server-side step to it.
    """
    counts: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": 1,
        "partition-id": 0,
        **metrics,
    }
    for m in strategy_modalities(averaged):
        counts[count_key(m)] = 1
    content = RecordDict({"arrays": to_record(averaged), "metrics": MetricRecord(counts)})
    reply = Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)
    return strategy.aggregate_train(rnd, [reply])


def strategy_modalities(arrays: dict[str, np.ndarray]) -> set[str]:
    return {m for k in arrays if (m := parameter_modality(strip_prefix(k))) is not None}


register_train_round("none", plain_train_round)
