"""How one training round moves updates between clients and server.

A *train round* (`TrainRound`) is built once per run by the server loop and called once
per round with the strategy, the Grid, the round number and the global arrays; it returns
a :class:`~umbra.federation.common.RoundOutcome`. `PlainTrainRound` sends plaintext
updates and lets the strategy aggregate them; `umbra.federation.secure_round` runs a
secure aggregation transport and hands the strategy only the aggregate
(:func:`strategy_step`). Differential privacy enters both through the same two hooks of
`umbra.privacy.round_dp.RoundDP` (the train messages, the client-level finish).
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from umbra.errors import UmbraError
from umbra.federation.common import (
    NUM_EXAMPLES,
    PARTITION_ID,
    RoundOutcome,
    count_key,
    message_bytes,
    metric_float,
    metric_int,
    reply_metrics,
    send_and_receive,
    to_record,
)
from umbra.federation.compression_server import Compression
from umbra.federation.strategies import ModalityFedAvg
from umbra.federation.strategies.modality import strip_prefix
from umbra.models import parameter_modality
from umbra.privacy.round_dp import RoundDP

__all__ = [
    "PlainTrainRound",
    "TrainRound",
    "reply_partition",
    "strategy_step",
    "train_messages",
]

log = logging.getLogger("umbra")


class TrainRound(Protocol):
    """One training round of a run: (strategy, grid, round, global arrays) -> outcome."""

    def __call__(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray]
    ) -> RoundOutcome: ...


def reply_partition(msg: Message) -> int:
    """The partition id a client's reply names."""
    return metric_int(reply_metrics(msg), PARTITION_ID)


def train_messages(
    strategy: ModalityFedAvg,
    grid: Grid,
    rnd: int,
    arrays: dict[str, np.ndarray],
    dp: RoundDP | None,
) -> list[Message]:
    """The round's train messages: the strategy's, with DP's sample and plans when on."""
    if dp is not None:
        return dp.configure(strategy, grid, rnd, arrays)
    return list(strategy.configure_train(rnd, to_record(arrays), ConfigRecord(), grid))


class PlainTrainRound:
    """Round transport ``"none"``: send the model, collect plaintext updates, let the
    strategy aggregate them.

    Under client-level DP the clients send clipped deltas; they are summed unweighted,
    noised (`RoundDP.finish`) and handed to the strategy as one averaged model.
    """

    def __init__(
        self,
        *,
        dp: RoundDP | None = None,
        timeout_s: float = 600.0,
        compression: Compression | None = None,
    ) -> None:
        if dp is not None and dp.distributed_example:
            raise UmbraError(
                "example-level DP with distributed noise needs secure aggregation: in the "
                "clear each update would carry only its share of the noise"
            )
        self.dp = dp
        self.timeout_s = timeout_s
        self.compression = compression or Compression()

    def __call__(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray]
    ) -> RoundOutcome:
        dp = self.dp
        client_dp = dp is not None and dp.client_level
        messages = self.messages(strategy, grid, rnd, arrays)
        self.compression.announce(messages, rnd, x=arrays)  # compression: the round's codec
        down = {m.metadata.dst_node_id: message_bytes([m]) for m in messages}
        replies = send_and_receive(grid, messages, timeout=self.timeout_s) if messages else []
        ok = [m for m in replies if not m.has_error()]
        for m in replies:
            if m.has_error():
                log.warning("client reply error: %s", m.error.reason)
        if not ok and not client_dp:
            reasons = "; ".join(sorted({str(m.error.reason) for m in replies if m.has_error()}))
            raise UmbraError(f"round {rnd}: no client returned an update ({reasons or 'timeout'})")
        per_client = {
            reply_partition(m): {
                "up": message_bytes([m]),
                "down": down.get(m.metadata.src_node_id, 0),
            }
            for m in ok
        }
        # compression: full arrays again, after the bytes were counted; a reply whose codes
        # do not decode counts as no reply
        ok = [m for m in ok if self.compression.decode(m, arrays, rnd)]
        ok = self.updates(ok, arrays)
        if dp is not None and client_dp:
            summed = {k: np.zeros_like(v, dtype=np.float64) for k, v in arrays.items()}
            for m in ok:
                for k, v in m.content.array_records["arrays"].items():
                    summed[k] += v.numpy()
            new = dp.finish(arrays, summed, received=len(ok), sampled=len(messages))
            losses = [x for m in ok if np.isfinite(x := _loss(m))]  # DP clients keep their loss
            metrics = {"train-total": float(np.mean(losses))} if losses else {}
            record, agg_metrics = strategy_step(strategy, rnd, new, metrics)
        else:
            record, agg_metrics = strategy.aggregate_train(rnd, ok)
        if record is None:
            raise UmbraError(f"round {rnd}: aggregation failed")
        answered = {m.metadata.src_node_id for m in ok}
        return RoundOutcome(
            record=record,
            metrics=agg_metrics,
            bytes_up=sum(c["up"] for c in per_client.values()),
            bytes_down=sum(down.values()),
            clients=len(ok),
            per_client=per_client,
            dropped_nodes=tuple(sorted(set(down) - answered)),
            partitions={m.metadata.src_node_id: reply_partition(m) for m in ok},
        )

    def messages(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray]
    ) -> list[Message]:
        """The round's train messages (`train_messages`; a subclass may readdress them)."""
        return train_messages(strategy, grid, rnd, arrays, self.dp)

    def updates(self, replies: list[Message], arrays: dict[str, np.ndarray]) -> list[Message]:
        """The decoded replies as the aggregation takes them (a subclass may rewrite them,
        e.g. onto the global ``arrays``); unchanged here."""
        return replies


def _loss(msg: Message) -> float:
    return metric_float(reply_metrics(msg), "train-total", float("nan"))


def strategy_step(
    strategy: ModalityFedAvg, rnd: int, averaged: dict[str, np.ndarray], metrics: dict[str, float]
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """Hand an already-averaged update (e.g. from secure aggregation) to the strategy.

    The strategy sees one reply holding the average, so FedAvg/FedProx keep it as is and
    FedAdam/SCAFFOLD apply their server-side step to it.
    """
    counts: dict[str, int | float | list[int] | list[float]] = {
        NUM_EXAMPLES: 1,
        PARTITION_ID: 0,
        **metrics,
    }
    for m in strategy_modalities(averaged):
        counts[count_key(m)] = 1
    content = RecordDict({"arrays": to_record(averaged), "metrics": MetricRecord(counts)})
    reply = Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)
    return strategy.aggregate_train(rnd, [reply])


def strategy_modalities(arrays: dict[str, np.ndarray]) -> set[str]:
    return {m for k in arrays if (m := parameter_modality(strip_prefix(k))) is not None}
