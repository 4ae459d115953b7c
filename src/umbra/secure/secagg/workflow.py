"""Server side of SecAgg+ over Flower: one training round as ``train.secagg`` stages.

`SecAggPlusWorkflow` drives `SecAggPlusServer` through the Grid, one method per stage
(advertise keys -> share keys -> collect masked inputs -> unmask); the third stage carries
the strategy's train message (global arrays, config), so the clients train there.

Pre-keys (``secure.prekeys``, on unless set to false): the unmask request asks every
survivor for the public halves of two fresh key pairs for its next round; the server keeps
them per run (public data only) and, in the node's next round, builds its advertise reply
from them instead of asking, each pair used for one round. A round then costs four message
exchanges for the nodes without pre-keys (first round, dropped out last round, server
restarted) and three when every node has them. Pre-keys pass the same checks as
advertised keys (`SecAggPlusServer.share_keys`); the share_keys request of a node on
pre-keys carries the round configuration and ``secagg-id`` its advertise request would
have carried (client side: `umbra.secure.secagg.client_mod`).

The server only ever holds public keys, encrypted shares, masked vectors and the unmasked
*sum* of the weighted contributions (`umbra.secure.contribution`), which it divides by
the summed counts and hands to the strategy (`strategy_step`: FedAvg keeps the average,
FedAdam/SCAFFOLD apply their server step). Fewer than ``t = ceil(threshold * n)``
survivors: the round aborts, nothing is revealed, the model stays unchanged and the
round's row in results.json says why (``aborted``, ``note``). Up to
``COMPLETE_GRAPH_MAX_CLIENTS`` sampled clients the graph is complete, so any ``n - t``
dropouts are recovered; beyond, the sparse graph adds one exchange (``reveal_seed``: the
clients fix the graph seed by commit-reveal) and pre-keys are not used.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from umbra.federation.records import to_record
from umbra.federation.rounds import RoundOutcome, prepare_train_messages, strategy_step
from umbra.federation.strategies import ModalityFedAvg
from umbra.privacy.client_dp import shares_needed
from umbra.secure.contribution import (
    DEFAULT_WEIGHT_SCALE,
    client_dp_from_sums,
    combine_sums,
    int_template,
    next_weight_scale,
    payload_template,
)
from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.constants import (
    CFG_NEXT_KEYS,
    CFG_PREKEYS,
    CFG_SECAGG_ID,
    KEY_BYTES,
    STAGE_ADVERTISE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    Key,
)
from umbra.secure.secagg.errors import SecAggAbort
from umbra.secure.secagg.quantize import PayloadLayout
from umbra.secure.secagg.server import SecAggPlusServer
from umbra.secure.transport import StageExchange

__all__ = ["MESSAGE_TYPE", "SecAggPlusWorkflow", "round_threshold", "secagg_train_round"]

log = logging.getLogger("umbra")

MESSAGE_TYPE = "train.secagg"


def round_threshold(fraction: float, num_clients: int) -> int:
    """``t = ceil(fraction * n)`` clients, for ``fraction`` in (0.5, 1]."""
    return shares_needed(fraction, max(1, num_clients))


@dataclass
class _RunState:
    """Public state kept across rounds for one strategy (one run)."""

    weight_scale: float = DEFAULT_WEIGHT_SCALE
    seen_digests: set[bytes] = field(default_factory=set, repr=False)
    #: node id -> (pk_c, pk_s) sent ahead in its last unmask reply; used by one round only
    prekeys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)


_RUNS: weakref.WeakKeyDictionary[Any, _RunState] = weakref.WeakKeyDictionary()


def run_state(strategy: Any) -> _RunState:
    """Per-run public state (weight scale ``B``, digests of past masked vectors, pre-keys)."""
    if strategy not in _RUNS:
        _RUNS[strategy] = _RunState()
    return _RUNS[strategy]


class SecAggPlusWorkflow:
    """One SecAgg+ training round over a Flower Grid (Bell et al., CCS 2020)."""

    def __init__(
        self,
        strategy: ModalityFedAvg,
        grid: Grid,
        server_round: int,
        arrays: Mapping[str, np.ndarray],
        *,
        secure: Mapping[str, Any],
        timeout_s: float,
        spec: Any = None,
    ) -> None:
        self.strategy = strategy
        self.arrays = dict(arrays)
        self.secure = dict(secure)
        self.run = run_state(strategy)
        self.weight_scale = self.run.weight_scale
        # DP (when on): client sampling, and the ledger written before any release
        self.dp = getattr(spec, "dp", None)
        messages = (
            prepare_train_messages(strategy, grid, server_round, dict(arrays), spec)
            if spec is not None
            else strategy.configure_train(server_round, to_record(arrays), ConfigRecord(), grid)
        )
        self.train_content: dict[int, RecordDict] = {
            m.metadata.dst_node_id: m.content for m in messages
        }
        self.nodes = sorted(self.train_content)
        self.exchange = StageExchange(grid, MESSAGE_TYPE, timeout_s, server_round)
        n = len(self.nodes)
        first = next(iter(self.train_content.values()))
        shapes = {k: tuple(v.shape) for k, v in first.array_records["arrays"].items()}
        self.clip = float(self.secure.get("clip_range", 4.0))
        self.layout = PayloadLayout.from_arrays(
            payload_template(shapes), int_template(), clip=self.clip, num_clients=max(n, 1)
        )
        self.config = SecAggConfig(
            round_number=server_round,
            num_clients=max(n, 1),
            threshold=round_threshold(float(self.secure.get("threshold", 0.67)), max(n, 1)),
            vector_length=self.layout.size,
        )
        self.server = SecAggPlusServer(self.config, seen_digests=self.run.seen_digests)
        # sparse graphs need every client's graph commitment, sent with its advertised keys
        self.use_prekeys = bool(self.secure.get("prekeys", True)) and self.config.complete
        self.prekeyed: set[int] = set()  # nodes whose keys this round are stored pre-keys

    # node id <-> protocol id (0..n-1 in node order)
    def _to_nodes(self, requests: Mapping[int, Any]) -> dict[int, Any]:
        return {self.nodes[i]: msg for i, msg in requests.items()}

    def _to_ids(self, replies: Mapping[int, Any]) -> dict[int, Any]:
        index = {node: i for i, node in enumerate(self.nodes)}
        return {index[node]: msg for node, msg in replies.items() if node in index}

    def advertise_keys(self) -> dict[int, dict[str, Any]]:
        """Advertise replies: rebuilt from stored pre-keys where a node has them, asked for
        through the Grid from the other nodes only (no exchange when all have them)."""
        requests = self._to_nodes(self.server.advertise_keys(list(range(len(self.nodes)))))
        stored = {n: self.run.prekeys.pop(n) for n in self.nodes if n in self.run.prekeys}
        if not self.use_prekeys:
            stored = {}  # popped all the same: the advertise request makes the node drop them
        self.prekeyed = set(stored)
        replies: dict[int, dict[str, Any]] = {}
        for i, node in enumerate(self.nodes):
            if node in stored:
                pk_c, pk_s = stored[node]
                replies[i] = {
                    Key.ROUND: self.config.round_number,
                    Key.CLIENT_ID: i,
                    Key.PK_C: pk_c,
                    Key.PK_S: pk_s,
                }
        asked = {node: req for node, req in requests.items() if node not in stored}
        if asked:
            ids = {node: {CFG_SECAGG_ID: i} for i, node in enumerate(self.nodes)}
            replies.update(
                self._to_ids(self.exchange.send(STAGE_ADVERTISE_KEYS, asked, per_node_config=ids))
            )
        return replies

    def reveal_seed(self, replies: Mapping[int, Any]) -> dict[int, dict[str, Any]]:
        """Sparse graphs only: relay the graph commitments, collect the reveals."""
        requests = self._to_nodes(self.server.reveal_seed(replies))
        return self._to_ids(self.exchange.send(STAGE_REVEAL_SEED, requests))

    def share_keys(self, replies: Mapping[int, Any]) -> dict[int, dict[str, Any]]:
        """Neighbours' keys; nodes on pre-keys also get what the advertise request carries."""
        requests = self._to_nodes(self.server.share_keys(replies))
        round_config = self.config.to_message()
        flags: dict[int, dict[str, Any]] = {}
        for i, node in enumerate(self.nodes):
            if node in self.prekeyed and node in requests:
                requests[node] = {**round_config, **requests[node]}
                flags[node] = {CFG_SECAGG_ID: i, CFG_PREKEYS: True}
        return self._to_ids(self.exchange.send(STAGE_SHARE_KEYS, requests, per_node_config=flags))

    def collect_masked_inputs(self, replies: Mapping[int, Any]) -> dict[int, dict[str, Any]]:
        requests = self._to_nodes(self.server.collect_masked(replies))
        public = {
            "clip-range": self.clip,
            "weight-scale": self.weight_scale,
            "modality-aware": bool(self.strategy.modality_aware),
        }
        return self._to_ids(
            self.exchange.send(
                STAGE_COLLECT_MASKED, requests, config=public, base=self.train_content
            )
        )

    def unmask(self, replies: Mapping[int, Any]) -> tuple[np.ndarray, int]:
        requests = self._to_nodes(self.server.unmask(replies))
        ask = {CFG_NEXT_KEYS: True} if self.use_prekeys else None
        answers = self._to_ids(self.exchange.send(STAGE_UNMASK, requests, config=ask))
        self._store_prekeys(answers)
        return self.server.aggregate(answers)

    def _store_prekeys(self, replies: Mapping[int, Mapping[str, Any]]) -> None:
        """Keep the public pre-keys of well-formed unmask replies (checked when used)."""
        if not self.use_prekeys:
            return
        for i, msg in replies.items():
            pk_c, pk_s = msg.get(Key.NEXT_PK_C), msg.get(Key.NEXT_PK_S)
            if (
                msg.get(Key.ROUND) == self.config.round_number
                and msg.get(Key.CLIENT_ID) == i
                and all(isinstance(k, bytes) and len(k) == KEY_BYTES for k in (pk_c, pk_s))
            ):
                self.run.prekeys[self.nodes[i]] = (bytes(pk_c), bytes(pk_s))  # type: ignore[arg-type]

    def run_round(self) -> RoundOutcome:
        """All stages; an abort returns ``RoundOutcome(record=None, note=reason)``."""
        if not self.nodes:
            return self._outcome(None, None, note="no client sampled")
        try:
            keys = self.advertise_keys()
            if not self.config.complete:
                keys = self.reveal_seed(keys)
            total, summed = self.unmask(self.collect_masked_inputs(self.share_keys(keys)))
        except SecAggAbort as err:
            return self._outcome(None, None, note=str(err))
        float_sums, int_sums = self.layout.decode_sum(total, num_summed=summed)
        try:
            averaged, metrics = combine_sums(
                float_sums,
                int_sums,
                self.arrays,
                key_modality=self.strategy.key_modality,
                weight_scale=self.weight_scale,
            )
            if self.dp is not None and self.dp.client_level:
                averaged = client_dp_from_sums(self.arrays, float_sums, int_sums, self.dp,
                                               sampled=len(self.nodes))  # fmt: skip
        except ValueError as err:
            log.error("secagg+ round %d aborted: %s", self.config.round_number, err)
            return self._outcome(None, None, note=str(err))
        self.run.weight_scale = next_weight_scale(int_sums)
        train_metrics = {k: v for k, v in metrics.items() if k.startswith("train-")}
        record, mrec = strategy_step(
            self.strategy, self.config.round_number, averaged, train_metrics
        )
        if record is None:
            return self._outcome(None, None, note="strategy step failed", clients=summed)
        return self._outcome(record, mrec, clients=summed)

    def _outcome(
        self, record: Any, metrics: Any, *, note: str | None = None, clients: int = 0
    ) -> RoundOutcome:
        return self.exchange.outcome(record, metrics, note=note, clients=clients)


def secagg_train_round(
    strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray], spec: Any
) -> RoundOutcome:
    """Round transport ``"secagg+"`` (see `umbra.federation.rounds.TrainRound`)."""
    secure = dict(getattr(spec, "extra", {}).get("secure", {}))
    workflow = SecAggPlusWorkflow(
        strategy,
        grid,
        rnd,
        arrays,
        secure=secure,
        timeout_s=float(spec.node_timeout_s),
        spec=spec,
    )
    return workflow.run_round()
