"""Modality-aware aggregation: each modality's encoder is averaged only over the clients
that hold that modality, weighted by their number of records with it.

A client without audio never dilutes the audio encoder; shared parameters (fusion, head)
are weighted by the client's total number of examples, as in FedAvg (McMahan et al. 2017,
https://arxiv.org/abs/1602.05629). When no sampled client holds a modality in a round, that
modality's parameters keep their previous global value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from umbra.federation.common import (
    CONTROL_PREFIX,
    NUM_EXAMPLES,
    PARTITION_ID,
    config_int,
    count_key,
    to_record,
)

if TYPE_CHECKING:
    from umbra.federation.detection import Screening
    from umbra.federation.reputation import Reputation
    from umbra.federation.strategies.centered_clip import CenteredClipState
    from umbra.federation.strategies.defence import Defence

__all__ = [
    "CONTROL_PREFIX",
    "ModalityFedAvg",
    "count_key",
    "modality_weighted_average",
    "strip_prefix",
]


def strip_prefix(key: str) -> str:
    return key[len(CONTROL_PREFIX) :] if key.startswith(CONTROL_PREFIX) else key


def modality_weighted_average(
    arrays: Sequence[Mapping[str, np.ndarray]],
    counts: Sequence[Mapping[str, float]],
    key_modality: Callable[[str], str | None],
    previous: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Average each array over the clients holding its modality.

    Args:
        arrays: one mapping per client, name -> array (identical names and shapes).
        counts: one mapping per client with ``num-examples`` and ``n-<modality>`` counts.
        key_modality: name -> modality, or None for shared parameters (weighted by
            ``num-examples``).
        previous: the current global arrays, kept for a modality nobody holds this round.

    Returns:
        name -> weighted mean (float64 accumulation, cast back to the input dtype).
    """
    if not arrays:
        raise ValueError("arrays: need at least one client")
    if len(arrays) != len(counts):
        raise ValueError(f"arrays ({len(arrays)}) and counts ({len(counts)}) differ in length")
    out: dict[str, np.ndarray] = {}
    for key in arrays[0]:
        modality = key_modality(strip_prefix(key))
        wkey = NUM_EXAMPLES if modality is None else count_key(modality)
        weights = np.array([float(c.get(wkey, 0.0)) for c in counts], dtype=np.float64)
        if np.any(weights < 0):
            raise ValueError(f"negative weight {wkey!r} for {key!r}")
        total = weights.sum()
        ref = np.asarray(arrays[0][key])
        if total <= 0:
            if previous is None or key not in previous:
                raise ValueError(f"no client holds {modality!r} and no previous value for {key!r}")
            out[key] = np.array(previous[key], copy=True)
            continue
        acc = np.zeros(ref.shape, dtype=np.float64)
        for a, w in zip(arrays, weights, strict=True):
            if w > 0:
                acc += np.asarray(a[key], dtype=np.float64) * (w / total)
        out[key] = acc.astype(ref.dtype, copy=False)
    return out


def _no_modality(_: str) -> str | None:
    return None


class ModalityFedAvg(FedAvg):
    """Flower's FedAvg with modality-aware averaging and a deterministic reply order.

    Replies are sorted by the client's ``partition-id`` before averaging, so that a resumed
    run sums in the same order as an uninterrupted one. With ``modality_aware=False`` this
    is exactly FedAvg (every array weighted by ``num-examples``).
    """

    #: name -> modality (None = shared); set with :meth:`set_modality_map`.
    key_modality: Callable[[str], str | None] = staticmethod(_no_modality)
    modality_aware: bool = False
    global_arrays: dict[str, np.ndarray] | None = None
    #: clipping, screening and a robust rule in place of the mean (None: plain averaging)
    defence: Defence | None = None
    #: the last aggregation's anomaly screening (None: no screening ran)
    screening: Screening | None = None
    #: the per-client history of ``federation.reputation`` (server state, checkpointed)
    reputation: Reputation | None = None
    #: centered clipping's momenta and centre (server state, checkpointed)
    centered: CenteredClipState | None = None

    def set_defence(self, defence: Defence) -> None:
        """Aggregate with ``defence`` (an inactive one leaves the mean as it is)."""
        self.defence = defence if defence.active else None
        self.reputation = defence.new_reputation()
        self.centered = defence.new_centered_clip()

    def take_screening(self) -> Screening | None:
        """The screening of the last aggregation, once (None when none ran since)."""
        screening, self.screening = self.screening, None
        return screening

    def set_modality_map(
        self, key_modality: Callable[[str], str | None], *, enabled: bool = True
    ) -> None:
        """Switch modality-aware averaging on (``enabled``) with the given name map.

        A setter rather than an ``__init__`` argument because Flower's FedOpt family does
        not forward extra constructor arguments along the MRO.
        """
        self.key_modality = key_modality if enabled else _no_modality  # type: ignore[method-assign]
        self.modality_aware = enabled

    def summary(self) -> None:
        log(INFO, "\t├──> Modality-aware aggregation: %s", self.modality_aware)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = {k: v.numpy() for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def average_replies(
        self, replies: list[Message], server_round: int = 0
    ) -> dict[str, np.ndarray]:
        """Modality-aware average of the replies' arrays (replies already validated), or
        the defence's aggregate when one is set (:meth:`set_defence`)."""
        contents = [m.content for m in replies]
        arrays = [
            {k: v.numpy() for k, v in next(iter(c.array_records.values())).items()}
            for c in contents
        ]
        counts = [
            {k: float(v) for k, v in next(iter(c.metric_records.values())).items()
             if isinstance(v, int | float)}
            for c in contents
        ]  # fmt: skip
        previous = dict(self.global_arrays or {})
        for k in arrays[0]:
            if k.startswith(CONTROL_PREFIX) and k not in previous:
                previous[k] = np.zeros_like(arrays[0][k])
        if self.defence is None:
            return modality_weighted_average(arrays, counts, self.key_modality, previous)
        averaged, self.screening = self.defence.aggregate(
            [_partition_id(m) for m in replies],
            arrays,
            counts,
            self.key_modality,
            previous,
            self.global_arrays,
            self.reputation,
            self.centered,
            server_round,
        )
        return averaged

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        valid.sort(key=lambda m: _partition_id(m))
        averaged = self.average_replies(valid, server_round)
        contents = [m.content for m in valid]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        record = to_record(averaged)
        return record, metrics

    # --- checkpointing -------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Server-side state to checkpoint: the clients' reputation and centered
        clipping's history (empty for FedAvg without them); subclasses add their
        optimizer/control state."""
        out = self.reputation.to_arrays() if self.reputation is not None else {}
        return out | (self.centered.to_arrays() if self.centered is not None else {})

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned."""
        if self.reputation is not None:
            self.reputation.load_arrays(state)
        if self.centered is not None:
            self.centered.load_arrays(state)


def _partition_id(msg: Message) -> int:
    metrics = next(iter(msg.content.metric_records.values()))
    return config_int(metrics, PARTITION_ID, 0)
