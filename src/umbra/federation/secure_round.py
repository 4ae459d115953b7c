"""The one skeleton of a securely aggregated training round, whatever the transport.

prepare the train messages (with DP's sample and plans, `RoundDP.configure`) ->
``transport.aggregate`` (the transport's stages; only sums come back) -> combine the sums
into the modality-aware average (`umbra.secure.contribution.combine_sums`) -> finish
client-level DP on the sum (`RoundDP.finish`) -> the next round's weight scale ->
strategy step (`umbra.federation.rounds.strategy_step`) -> the round's outcome.

A round that cannot complete (too few survivors, a mixed or malformed aggregate, a failed
strategy step) returns ``RoundOutcome(record=None, note=why)`` with the bytes it spent;
the server loop keeps the previous model and records the note.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import Grid

from umbra.federation.common import RoundOutcome, SecureAggregator, SecureRound, SecureSum
from umbra.federation.compression_server import Compression
from umbra.federation.rounds import strategy_step, train_messages
from umbra.federation.strategies import ModalityFedAvg
from umbra.privacy.round_dp import RoundDP
from umbra.secure.contribution import (
    DEFAULT_WEIGHT_SCALE,
    combine_sums,
    dp_sums,
    next_weight_scale,
    shared_densify,
)
from umbra.secure.shared_coordinates import round_coordinates

__all__ = ["SecureTrainRound"]

log = logging.getLogger("umbra")


class SecureTrainRound:
    """A run's secure rounds over ``transport`` (one object per run).

    Keeps the public weight scale ``B`` across rounds: `DEFAULT_WEIGHT_SCALE` first, then
    the mean number of examples per summed client of the previous aggregate.
    """

    def __init__(
        self,
        transport: SecureAggregator,
        *,
        dp: RoundDP | None = None,
        timeout_s: float = 600.0,
        compression: Compression | None = None,
    ) -> None:
        self.transport = transport
        self.dp = dp
        self.timeout_s = timeout_s
        self.compression = compression or Compression()
        self.weight_scale = DEFAULT_WEIGHT_SCALE

    def __call__(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray]
    ) -> RoundOutcome:
        messages = self.messages(strategy, grid, rnd, arrays)
        # compression "shared-k": the clients send dense updates, the transport the kept
        # coordinates only (umbra.secure.contribution.shared_sparsify)
        self.compression.announce(messages, rnd, dense=True, x=arrays)
        if not messages:
            return _outcome(SecureSum({}, {}, clients=0, note="no client sampled"), ())
        sampled = tuple(sorted(m.metadata.dst_node_id for m in messages))
        total = self.transport.aggregate(
            SecureRound(
                grid=grid,
                server_round=rnd,
                messages={m.metadata.dst_node_id: m.content for m in messages},
                weight_scale=self.weight_scale,
                modality_aware=bool(strategy.modality_aware),
                timeout_s=self.timeout_s,
            )
        )
        if total.aborted:
            return _outcome(total, sampled)
        try:
            shared = round_coordinates(messages[0].content.config_records["config"])
            float_sums = shared_densify(
                total.float_sums, {k: v.shape for k, v in arrays.items()}, shared
            )
            averaged, metrics = combine_sums(
                float_sums,
                total.int_sums,
                arrays,
                key_modality=strategy.key_modality,
                weight_scale=self.weight_scale,
            )
            if self.dp is not None and self.dp.client_level:
                summed = dp_sums(total.float_sums, total.int_sums, arrays)
                averaged = self.dp.finish(arrays, summed, received=total.clients,
                                          sampled=len(messages))  # fmt: skip
        except (ValueError, KeyError) as err:
            log.error("%s round %d aborted, model unchanged: %s", self.transport.name, rnd, err)
            total.note = str(err)
            return _outcome(total, sampled)
        self.weight_scale = next_weight_scale(total.int_sums)
        train_metrics = {k: v for k, v in metrics.items() if k.startswith("train-")}
        record, agg_metrics = strategy_step(strategy, rnd, averaged, train_metrics)
        if record is None:
            total.note = "strategy step failed"
            return _outcome(total, sampled)
        return _outcome(total, sampled, record=record, metrics=agg_metrics)

    def messages(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray]
    ) -> list[Message]:
        """The round's train messages (`train_messages`; a subclass may readdress them)."""
        return train_messages(strategy, grid, rnd, arrays, self.dp)


def _outcome(
    total: SecureSum,
    sampled: tuple[int, ...],
    *,
    record: ArrayRecord | None = None,
    metrics: MetricRecord | None = None,
) -> RoundOutcome:
    """The round's outcome with the transport's bytes (``record=None``: aborted); the
    sampled nodes missing from the transport's contributors are its dropouts."""
    contributors = total.contributors
    dropped = () if contributors is None else tuple(n for n in sampled if n not in contributors)
    return RoundOutcome(
        record=record,
        metrics=metrics,
        bytes_up=total.bytes_up,
        bytes_down=total.bytes_down,
        clients=0 if record is None else total.clients,
        per_client=dict(total.per_client),
        note=total.note,
        dropped_nodes=dropped,
        partitions=dict(total.partitions),
    )
