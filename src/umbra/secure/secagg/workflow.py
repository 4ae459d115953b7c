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

Signed advertisements: with an identity roster (``settings.roster``: in a deployment from
the run config, in simulation generated with the nodes' keys) the server excludes a client
whose advertisement is unsigned or whose signature fails, and relays every neighbour's
signature with its keys; each client checks them against its own roster
(`umbra.secure.secagg.advert`). Pre-keys are unsigned, so such a run advertises every round.

The server only ever holds public keys, encrypted shares, masked vectors and the unmasked
*sum* of the weighted contributions (`umbra.secure.contribution`), which it returns to
the federation's secure-round skeleton (divide by the summed counts, hand the
average to the strategy). Fewer than ``t = ceil(threshold * n)``
survivors: the round aborts (a `SecureSum` with ``note``), nothing is revealed, the model
stays unchanged and the round's row in results.json says why (``aborted``, ``note``). Up to
``COMPLETE_GRAPH_MAX_CLIENTS`` sampled clients the graph is complete, so any ``n - t``
dropouts are recovered; beyond, the sparse graph adds one exchange (``reveal_seed``: the
clients fix the graph seed by commit-reveal) and pre-keys are not used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from umbra.federation.common import SecureRound, SecureSettings, SecureSum
from umbra.privacy.client_dp import shares_needed
from umbra.secure.contribution import (
    int_template,
    payload_template,
    shared_shapes,
)
from umbra.secure.identity import run_key
from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.constants import (
    CFG_NEXT_KEYS,
    CFG_PREKEYS,
    CFG_SECAGG_ID,
    KEY_BYTES,
    RING_BITS,
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
from umbra.secure.shared_coordinates import round_coordinates, round_value_bits
from umbra.secure.transport import StageExchange

__all__ = [
    "CLIENT_ACTION",
    "MESSAGE_TYPE",
    "SecAggPlusTransport",
    "SecAggPlusWorkflow",
    "round_threshold",
]

log = logging.getLogger("umbra")

#: The client mod answers ``train.secagg`` messages.
CLIENT_ACTION = "secagg"
MESSAGE_TYPE = f"train.{CLIENT_ACTION}"


def round_threshold(fraction: float, num_clients: int) -> int:
    """``t = ceil(fraction * n)`` clients, for ``fraction`` in (0.5, 1]."""
    return shares_needed(fraction, max(1, num_clients))


class SecAggPlusTransport:
    """Round transport ``"secagg+"``, one per run (`umbra.federation.common.SecureAggregator`).

    Holds the run's public state across rounds: the digests of past masked vectors (a
    replayed vector is refused) and the pre-keys, node id -> (pk_c, pk_s) sent ahead in
    its last unmask reply, each used by one round only.
    """

    name = "secagg+"
    client_action = CLIENT_ACTION

    def __init__(self, settings: SecureSettings) -> None:
        self.settings = settings
        self.seen_digests: set[bytes] = set()
        self.prekeys: dict[int, tuple[bytes, bytes]] = {}

    def aggregate(self, round: SecureRound) -> SecureSum:
        """One SecAgg+ round: the unmasked sums of the survivors, or an aborted sum."""
        return SecAggPlusWorkflow(self, round).run_round()


class SecAggPlusWorkflow:
    """One SecAgg+ training round over a Flower Grid (Bell et al., CCS 2020)."""

    def __init__(self, transport: SecAggPlusTransport, round: SecureRound) -> None:
        self.run = transport
        self.secure = transport.settings
        self.round = round
        self.train_content: dict[int, Any] = dict(round.messages)
        self.nodes = sorted(self.train_content)
        self.exchange = StageExchange(round.grid, MESSAGE_TYPE, round.timeout_s,
                                      round.server_round)  # fmt: skip
        n = max(len(self.nodes), 1)
        first = next(iter(self.train_content.values()), None)
        shapes = (
            {k: tuple(v.shape) for k, v in first.array_records["arrays"].items()}
            if first is not None
            else {}
        )
        ring_bits = RING_BITS
        if first is not None:  # compression "shared-k": the payload holds the kept coordinates
            announced = first.config_records["config"]
            shapes = shared_shapes(shapes, round_coordinates(announced))
            ring_bits = 16 if round_value_bits(announced) == 16 else RING_BITS
        self.clip = float(self.secure.clip_range)
        self.layout = PayloadLayout.from_arrays(payload_template(shapes), int_template(),
                                                clip=self.clip, num_clients=n, bits=ring_bits)  # fmt: skip
        self.config = SecAggConfig(
            round_number=round.server_round,
            num_clients=n,
            threshold=round_threshold(float(self.secure.threshold), n),
            vector_length=self.layout.size,
            ring_bits=ring_bits,
        )
        self.server = SecAggPlusServer(self.config, seen_digests=self.run.seen_digests,
                                       roster=self.secure.roster, run_id=self._run_id())  # fmt: skip
        # sparse graphs need every client's graph commitment, sent with its advertised keys;
        # pre-keys are unsigned: a run with an identity roster advertises every round
        self.use_prekeys = (
            bool(self.secure.prekeys) and self.config.complete and not self.secure.roster
        )
        self.prekeyed: set[int] = set()  # nodes whose keys this round are stored pre-keys

    def _run_id(self) -> int | None:
        """The run id the clients sign with (None on a Grid without run metadata: then
        only the clients check the signatures)."""
        try:
            return run_key(self.round.grid.run.run_id)
        except Exception:
            return None

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
        public = {"clip-range": self.clip, **self.round.public_config()}
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
        if not self.use_prekeys or self.server.state.signatures:
            return  # a signed round's keys come from signed advertisements only
        for i, msg in replies.items():
            pk_c, pk_s = msg.get(Key.NEXT_PK_C), msg.get(Key.NEXT_PK_S)
            if (
                msg.get(Key.ROUND) == self.config.round_number
                and msg.get(Key.CLIENT_ID) == i
                and isinstance(pk_c, bytes)
                and isinstance(pk_s, bytes)
                and len(pk_c) == len(pk_s) == KEY_BYTES
            ):
                self.run.prekeys[self.nodes[i]] = (bytes(pk_c), bytes(pk_s))

    def run_round(self) -> SecureSum:
        """All stages; an abort returns a `SecureSum` with ``note`` set (nothing revealed)."""
        if not self.nodes:
            return self.exchange.abort("no client sampled")
        try:
            keys = self.advertise_keys()
            if not self.config.complete:
                keys = self.reveal_seed(keys)
            total, summed = self.unmask(self.collect_masked_inputs(self.share_keys(keys)))
        except SecAggAbort as err:
            return self.exchange.abort(str(err))
        float_sums, int_sums = self.layout.decode_sum(total, num_summed=summed)
        return self.exchange.secure_sum(float_sums, int_sums, clients=summed,
                                        contributors=self._survivors())  # fmt: skip

    def _survivors(self) -> frozenset[int]:
        """Node ids whose masked inputs are in the sum (a dropout's masks were recovered)."""
        return frozenset(self.nodes[i] for i in self.server.state.survivors)
