"""The server side of one buffer release: a training round among exactly the buffer's K
clients, each on the model version it started from (server).

The round skeletons are the synchronous ones (`PlainTrainRound`, `SecureTrainRound`)
with two hooks overridden:

* ``messages``: the strategy (and, under DP, `RoundDP.configure`: the ledger lines and
  each client's noise plan) addresses the buffer's clients only; each message then
  carries that client's start model and its staleness ``τ``
  (:mod:`umbra.federation.buffered.staleness`), which the client applies to its own update
  (:mod:`umbra.federation.buffered.client_update`).
* ``updates`` (plaintext): the server rebases every weighted update
  ``y'_i = x_{v_i} + s_i (y_i - x_{v_i})`` onto the current model,
  ``x + s_i (y_i - x_{v_i})``, so that the strategy's modality-aware mean is
  ``x + Σ n_i s_i Δ_i / Σ n_i``, FedBuff's step with example weights. Under secure
  aggregation no rebasing is needed: each client contributes ``(n_i / B)(y'_i - x_{v_i})``
  against its own start model and `combine_sums` adds the sum to the current model.

Client-level DP divides the noised sum by the fixed buffer size ``K`` (`BufferDP`), a
public constant, instead of the ``qN`` of Poisson-sampled rounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from umbra.federation.buffered.staleness import RULE_KEY, STALENESS_KEY
from umbra.federation.common import SubsetGrid, metric_int, reply_metrics, to_record
from umbra.federation.rounds import PlainTrainRound
from umbra.federation.secure_round import SecureTrainRound
from umbra.federation.strategies import ModalityFedAvg
from umbra.privacy.client_dp import noised_mean_update
from umbra.privacy.controller import DP_UNWEIGHTED
from umbra.privacy.round_dp import RoundDP

__all__ = [
    "BufferDP",
    "BufferPlan",
    "BufferedPlainRound",
    "BufferedSecureRound",
    "buffer_messages",
]

Arrays = dict[str, np.ndarray]


@dataclass
class BufferPlan:
    """The next buffer as the loop hands it to the round: node id -> the model version's
    arrays the client started from, node id -> staleness τ, and the staleness rule."""

    bases: dict[int, Arrays] = field(default_factory=dict)
    staleness: dict[int, int] = field(default_factory=dict)
    rule: str = "sqrt"


def buffer_messages(messages: list[Message], plan: BufferPlan) -> list[Message]:
    """``messages`` (one per buffered node) rebuilt with each node's start model and
    staleness (new records: the strategy's messages may share one RecordDict)."""
    out = []
    for m in messages:
        node = m.metadata.dst_node_id
        config = dict(m.content.config_records["config"])
        config.update({STALENESS_KEY: int(plan.staleness[node]), RULE_KEY: plan.rule})
        content = RecordDict(
            {"arrays": to_record(plan.bases[node]), "config": ConfigRecord(config)}
        )
        out.append(Message(content=content, dst_node_id=node,
                           message_type=m.metadata.message_type))  # fmt: skip
    return out


class BufferedPlainRound(PlainTrainRound):
    """A plaintext buffer release (see the module docstring); `plan` is set per buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = BufferPlan()

    def messages(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: Arrays
    ) -> list[Message]:
        view: Any = SubsetGrid(grid, sorted(self.plan.bases))
        return buffer_messages(super().messages(strategy, view, rnd, arrays), self.plan)

    def updates(self, replies: list[Message], arrays: Arrays) -> list[Message]:
        """Each model reply rebased onto the current ``arrays``; DP deltas stay as sent."""
        for m in replies:
            if metric_int(reply_metrics(m), DP_UNWEIGHTED, 0) == 1:
                continue  # already a (weighted, clipped) delta: summed onto arrays by DP
            base = self.plan.bases[m.metadata.src_node_id]
            record = m.content.array_records["arrays"]
            rebased = {k: v.numpy() + (arrays[k] - base[k]) for k, v in record.items()}
            m.content["arrays"] = to_record(rebased)
        return replies


class BufferedSecureRound(SecureTrainRound):
    """A securely aggregated buffer release among exactly the buffer's clients; `plan`
    is set per buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = BufferPlan()

    def messages(
        self, strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: Arrays
    ) -> list[Message]:
        view: Any = SubsetGrid(grid, sorted(self.plan.bases))
        return buffer_messages(super().messages(strategy, view, rnd, arrays), self.plan)


class BufferDP(RoundDP):
    """`RoundDP` of buffered releases: client-level DP's noised sum of the ``K`` clipped,
    staleness-weighted deltas is divided by ``buffer_size`` (fixed, public), not by ``qN``.

    The clients are chosen by their speeds, not by a Poisson sample, so the controller is
    run with ``privacy.client_rate = 1`` (no amplification is claimed; the config refuses
    less) and every release is charged in the ledger before its messages exist.
    """

    def __init__(self, *args: Any, buffer_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.buffer_size = buffer_size

    def finish(
        self,
        x: Mapping[str, np.ndarray],
        summed: Mapping[str, np.ndarray],
        *,
        received: int,
        sampled: int,
    ) -> dict[str, np.ndarray]:
        """x + (Σ clip(s_i Δ_i) + noise) / K; the noise as `RoundDP.finish` adds it."""
        ctl = self.controller
        carried = 1.0 if ctl.cfg.noise == "distributed" else 0.0
        mean = noised_mean_update(
            dict(summed),
            noise_multiplier=float(ctl.client_sigma or 0.0),
            clip_norm=ctl.clip_norms()["all"],
            expected_clients=float(self.buffer_size),
            noise_already_added=carried,
        )
        return {k: (x[k] + mean[k]).astype(x[k].dtype) for k in x}
