"""Server side of CKKS aggregation over Flower: one training round as ``train.ckks`` stages.

advertise (X25519 public keys) -> provision (one client, the key holder, creates the CKKS
keys and returns them encrypted for each other client, plus the secret-key-free server
context) -> collect (global model + the relayed keyring; clients train and send encrypted
weighted contributions) -> server-side encrypted sum (`CkksAggregator`) -> decrypt (one
surviving client decrypts the sum only). The server then divides by the summed counts
(`umbra.secure.contribution.combine_sums`) and hands the average to the strategy.

The server holds public keys, keyring ciphertexts it cannot open, the server context (no
secret key), clients' ciphertexts and the decrypted sum. Threat model: honest-but-curious
server; the decryptor checks that the ciphertext it opens sums at least ``t`` clients.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from umbra.federation.records import to_record
from umbra.federation.rounds import RoundOutcome, prepare_train_messages, strategy_step
from umbra.federation.strategies import ModalityFedAvg
from umbra.secure.contribution import client_dp_from_sums, combine_sums, next_weight_scale
from umbra.secure.he.ckks import CkksAggregator, HeAbort
from umbra.secure.he.client_mod import (
    STAGE_ADVERTISE,
    STAGE_COLLECT,
    STAGE_DECRYPT,
    STAGE_PROVISION,
    encode_shapes,
    params_of,
)
from umbra.secure.he.payload import payload_length
from umbra.secure.secagg.workflow import round_threshold, run_state
from umbra.secure.transport import StageExchange

__all__ = ["MESSAGE_TYPE", "CkksWorkflow", "ckks_train_round"]

log = logging.getLogger("umbra")

MESSAGE_TYPE = "train.ckks"


class CkksAbort(HeAbort):
    """The CKKS round could not complete (too few clients, no key holder, no decryptor)."""


class CkksWorkflow:
    """One CKKS-aggregated training round over a Flower Grid."""

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
        self.round = server_round
        self.arrays = dict(arrays)
        self.secure = dict(secure)
        self.run = run_state(strategy)
        self.weight_scale = self.run.weight_scale
        self.params_name = str(self.secure.get("ckks_params", "umbra"))
        self.params = params_of(self.params_name)
        self.clip = float(self.secure.get("clip_range", 4.0))
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
        n = max(1, len(self.nodes))
        self.min_clients = round_threshold(float(self.secure.get("threshold", 0.67)), n)
        first = next(iter(self.train_content.values()), None)
        self.shapes = (
            {k: tuple(v.shape) for k, v in first.array_records["arrays"].items()}
            if first is not None
            else {}
        )
        self.length = payload_length(self.shapes)
        self.exchange = StageExchange(grid, MESSAGE_TYPE, timeout_s, server_round)
        self.public: dict[str, Any] = {
            "ckks-params": self.params_name,
            "clip-range": self.clip,
            "weight-scale": self.weight_scale,
            "modality-aware": bool(strategy.modality_aware),
            "num-clients": n,
            "min-clients": self.min_clients,
        }
        self.server_context: bytes = b""
        self.received: list[tuple[str, int, dict[str, Any]]] = []

    def _send(
        self, stage: str, requests: Mapping[int, dict[str, Any]], **kw: Any
    ) -> dict[int, dict[str, Any]]:
        replies = self.exchange.send(stage, requests, config=self.public, **kw)
        ids = {node: i for i, node in enumerate(self.nodes)}
        out = {}
        for node, reply in replies.items():
            if reply.get("round") != self.round or reply.get("client_id") != ids[node]:
                log.warning(
                    "ckks round %d: node %d excluded: stale or misaddressed", self.round, node
                )
                continue
            self.received.append((stage, node, reply))
            out[node] = reply
        return out

    def advertise(self) -> dict[int, bytes]:
        requests = {node: {"round": self.round} for node in self.nodes}
        per_node = {node: {"ckks-id": i} for i, node in enumerate(self.nodes)}
        replies = self._send(STAGE_ADVERTISE, requests, per_node_config=per_node)
        keys = {
            node: bytes(r["pk"])
            for node, r in replies.items()
            if isinstance(r.get("pk"), bytes) and len(r["pk"]) == 32
        }
        if len(keys) < self.min_clients:
            raise CkksAbort(f"{len(keys)} clients advertised keys < threshold {self.min_clients}")
        return keys

    def provision(self, keys: Mapping[int, bytes]) -> tuple[int, dict[int, bytes]]:
        """Ask the first advertising client to create the keys; returns (holder, blobs)."""
        ids = {node: i for i, node in enumerate(self.nodes)}
        for holder in sorted(keys):
            others = [n for n in sorted(keys) if n != holder]
            request = {
                "round": self.round,
                "ids": np.asarray([ids[n] for n in others], dtype=np.int64),
                "pks": [keys[n] for n in others],
            }
            reply = self._send(STAGE_PROVISION, {holder: request}).get(holder)
            if reply is None:
                continue
            to = [int(i) for i in np.asarray(reply.get("to", []))]
            blobs = list(reply.get("blobs", []))
            if to != [ids[n] for n in others] or len(blobs) != len(to):
                log.warning("ckks round %d: key holder %d sent a bad keyring", self.round, holder)
                continue
            self.server_context = bytes(reply["server_context"])
            return holder, {self.nodes[i]: bytes(b) for i, b in zip(to, blobs, strict=True)}
        raise CkksAbort("no client provisioned the CKKS keys")

    def collect(
        self, holder: int, keys: Mapping[int, bytes], blobs: Mapping[int, bytes]
    ) -> dict[int, dict[str, Any]]:
        ids = {node: i for i, node in enumerate(self.nodes)}
        requests: dict[int, dict[str, Any]] = {}
        for node in sorted(keys):
            req: dict[str, Any] = {"round": self.round, "holder": ids[holder]}
            if node != holder:
                req.update(holder_pk=keys[holder], blob=blobs[node])
            requests[node] = req
        replies = self._send(STAGE_COLLECT, requests, base=self.train_content)
        return {ids[node]: r for node, r in replies.items()}

    def aggregate(
        self, updates: Mapping[int, dict[str, Any]]
    ) -> tuple[list[bytes], tuple[int, ...]]:
        aggregator = CkksAggregator(
            self.server_context,
            self.params,
            length=self.length,
            round_number=self.round,
            seen_digests=self.run.seen_digests,
        )
        return aggregator.aggregate(updates, min_clients=self.min_clients)

    def decrypt(
        self, total: list[bytes], included: tuple[int, ...]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        for cid in included:
            node = self.nodes[cid]
            request = {
                "round": self.round,
                "ciphertexts": total,
                "length": self.length,
                "num_summed": len(included),
                **encode_shapes(self.shapes),
            }
            reply = self._send(STAGE_DECRYPT, {node: request}).get(node)
            if reply is None:
                continue
            floats = {k[2:]: np.asarray(v) for k, v in reply.items() if k.startswith("f/")}
            ints = {k[2:]: np.asarray(v) for k, v in reply.items() if k.startswith("i/")}
            if int(ints.get("clients", np.zeros(1))[0]) == len(included):
                return floats, ints
            log.warning("ckks round %d: decryptor %d returned a wrong sum", self.round, node)
        raise CkksAbort("no surviving client decrypted the aggregate")

    def run_round(self) -> RoundOutcome:
        """All stages; an abort returns ``RoundOutcome(record=None, note=reason)``."""
        if not self.nodes:
            return self._outcome(None, None, note="no client sampled")
        try:
            keys = self.advertise()
            holder, blobs = self.provision(keys)
            updates = self.collect(holder, keys, blobs)
            total, included = self.aggregate(updates)
            float_sums, int_sums = self.decrypt(total, included)
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
        except (HeAbort, ValueError, KeyError) as err:
            log.error("ckks round %d aborted, model unchanged: %s", self.round, err)
            return self._outcome(None, None, note=str(err))
        self.run.weight_scale = next_weight_scale(int_sums)
        train_metrics = {k: v for k, v in metrics.items() if k.startswith("train-")}
        record, mrec = strategy_step(self.strategy, self.round, averaged, train_metrics)
        if record is None:
            return self._outcome(None, None, note="strategy step failed")
        return self._outcome(record, mrec, clients=len(included))

    def _outcome(
        self, record: Any, metrics: Any, *, note: str | None = None, clients: int = 0
    ) -> RoundOutcome:
        return self.exchange.outcome(record, metrics, note=note, clients=clients)


def ckks_train_round(
    strategy: ModalityFedAvg, grid: Grid, rnd: int, arrays: dict[str, np.ndarray], spec: Any
) -> RoundOutcome:
    """Round transport ``"ckks"`` (see `umbra.federation.rounds.TrainRound`)."""
    secure = dict(getattr(spec, "extra", {}).get("secure", {}))
    workflow = CkksWorkflow(
        strategy,
        grid,
        rnd,
        arrays,
        secure=secure,
        timeout_s=float(spec.node_timeout_s),
        spec=spec,
    )
    return workflow.run_round()
