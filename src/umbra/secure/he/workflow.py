"""Server side of threshold CKKS over Flower: key setup once per run, then one training
round as ``train.ckks`` stages (Mouchet et al., PoPETs 2021, t-out-of-N).

Setup (first round of a run, every node of the grid): advertise (signed X25519 keys and
nonce commitments) -> reveal (nonces, after every signed advertisement was forwarded) ->
keygen (each holder's signed ``b_i`` and its Shamir shares of ``s_i``, encrypted for each
peer) -> finish (every holder checks the signed ``b_i``, sums the collective public key and
keeps its share ``sigma_j``). Every round: collect (global model; clients train and send
ciphertexts under the collective key) -> server-side sum -> decrypt (a set ``T`` of t
holders returns flooded decryption shares of the sum) -> the server decodes
``c0 + sum h_j`` and returns the sums to the federation's secure-round skeleton, which
divides them by the summed counts (`umbra.secure.contribution.combine_sums`) and hands the
average to the strategy.

The server holds public keys, signatures, encrypted shares it cannot open, ciphertexts,
flooded decryption shares and the decoded sum; never a secret key or an unflooded
decryption. Threat model: see `umbra.secure.he.holder` and docs/privacy.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from umbra.federation.common import SecureRound, SecureSettings, SecureSum
from umbra.secure import identity
from umbra.secure.he.aggregator import ThresholdAggregator, decode_sum
from umbra.secure.he.ckks import CiphertextError, HeAbort
from umbra.secure.he.holder import (
    STAGE_ADVERTISE,
    STAGE_COLLECT,
    STAGE_DECRYPT,
    STAGE_FINISH,
    STAGE_KEYGEN,
    STAGE_REVEAL,
    make_plan,
)
from umbra.secure.he.payload import payload_length, split_sum
from umbra.secure.he.threshold import ThresholdParams, ThresholdPlan
from umbra.secure.secagg.workflow import round_threshold
from umbra.secure.transport import StageExchange

__all__ = [
    "CLIENT_ACTION",
    "MESSAGE_TYPE",
    "CkksAbort",
    "CkksTransport",
    "CkksWorkflow",
    "KeySetup",
]

log = logging.getLogger("umbra")

#: The client mod answers ``train.ckks`` messages.
CLIENT_ACTION = "ckks"
MESSAGE_TYPE = f"train.{CLIENT_ACTION}"


class CkksAbort(HeAbort):
    """The CKKS round could not complete (too few clients, no key, no decryption)."""


@dataclass
class KeySetup:
    """Public result of the run's key setup (the server's view)."""

    holders: dict[int, int] = field(default_factory=dict)  # client id -> node id
    acks: dict[int, bytes] = field(default_factory=dict)  # client id -> signed key
    length: int = 0
    plan: ThresholdPlan | None = None
    bytes_up: int = 0
    bytes_down: int = 0


class CkksTransport:
    """Round transport ``"ckks"``, one per run (`umbra.federation.common.SecureAggregator`).

    Holds the run's public state: the key setup (`KeySetup`, empty until the first round
    has set up the collective key) and the digests of past ciphertexts. ``settings.roster``
    is the public Ed25519 roster, ``settings.rounds`` the run's rounds (the decryption
    budget of the flooding bound).
    """

    name = "ckks"
    client_action = CLIENT_ACTION

    def __init__(self, settings: SecureSettings, params: ThresholdParams | None = None) -> None:
        self.settings = settings
        self.params = params or ThresholdParams()
        self.keys = KeySetup()
        self.seen_digests: set[bytes] = set()

    def aggregate(self, round: SecureRound) -> SecureSum:
        """One threshold-CKKS round (key setup first if none yet): the decoded sums."""
        return CkksWorkflow(self, round).run_round()


class CkksWorkflow:
    """One threshold-CKKS-aggregated training round over a Flower Grid."""

    def __init__(self, transport: CkksTransport, round: SecureRound) -> None:
        self.grid = round.grid
        self.round = round.server_round
        self.run = transport
        self.keys = transport.keys
        self.roster = dict(transport.settings.roster)
        self.rounds = transport.settings.rounds
        self.params = transport.params
        self.clip = float(transport.settings.clip_range)
        self.threshold = float(transport.settings.threshold)
        self.train_content: dict[int, Any] = dict(round.messages)
        self.nodes = sorted(self.train_content)
        n = max(1, len(self.nodes))
        self.min_clients = round_threshold(self.threshold, n)
        first = next(iter(self.train_content.values()), None)
        self.shapes = (
            {k: tuple(v.shape) for k, v in first.array_records["arrays"].items()}
            if first is not None
            else {}
        )
        self.length = payload_length(self.shapes)
        self.exchange = StageExchange(round.grid, MESSAGE_TYPE, round.timeout_s, self.round)
        self.included: tuple[int, ...] = ()
        self.public: dict[str, Any] = round.public_config()

    # ------------------------------------------------------------------ setup

    def _send(
        self, stage: str, requests: Mapping[int, dict[str, Any]], **kw: Any
    ) -> dict[int, dict[str, Any]]:
        replies = self.exchange.send(stage, requests, config=self.public, **kw)
        out = {}
        for node, reply in replies.items():
            pid = self.exchange.partition.get(node)
            if reply.get("client_id") != pid:
                log.warning("ckks round %d, %s: node %d excluded: misaddressed reply",
                            self.round, stage, node)  # fmt: skip
                continue
            out[node] = reply
        return out

    def _run_id(self) -> int | None:
        try:
            return int(self.grid.run.run_id) & (2**63 - 1)
        except Exception:  # a Grid without run metadata (tests): clients still verify
            return None

    def setup(self) -> None:
        """Key setup over every node of the grid; CkksAbort if fewer than t complete."""
        up0, down0 = self.exchange.bytes_up, self.exchange.bytes_down
        nodes = sorted(self.grid.get_node_ids())
        adv = self._send(STAGE_ADVERTISE, {node: {"round": self.round} for node in nodes})
        run_id = self._run_id()
        valid: dict[int, dict[str, Any]] = {}
        for node, r in sorted(adv.items(), key=lambda kv: int(kv[1]["client_id"])):
            cid = int(r["client_id"])
            try:
                if run_id is not None:
                    identity.verify(self.roster, r.get("sig"), run_id=run_id,
                                    stage=STAGE_ADVERTISE, client_id=cid,
                                    payload=bytes(r["pk"]) + bytes(r["commit"]))  # fmt: skip
            except (identity.IdentityError, KeyError, TypeError) as err:
                log.warning("ckks setup: node %d excluded: %s", node, err)
                continue
            valid[node] = r
        need = round_threshold(self.threshold, max(1, len(nodes)))
        if len(valid) < need:
            raise CkksAbort(f"{len(valid)} clients advertised keys < threshold {need}")
        order = list(valid)
        ids = np.asarray([int(valid[n]["client_id"]) for n in order], dtype=np.int64)
        ads = {
            "ids": ids,
            "pks": [bytes(valid[n]["pk"]) for n in order],
            "commits": [bytes(valid[n]["commit"]) for n in order],
            "sigs": [bytes(valid[n]["sig"]) for n in order],
        }
        rev = self._send(STAGE_REVEAL, {n: ads for n in order})
        if set(rev) != set(order):
            raise CkksAbort(f"{len(order) - len(rev)} clients did not reveal their nonce")
        req = {"ids": ids, "nonces": [bytes(rev[n]["nonce"]) for n in order], "length": self.length}
        kg = self._send(STAGE_KEYGEN, {n: req for n in order})
        done = [n for n in order if n in kg]
        if len(done) < round_threshold(self.threshold, len(order)):
            raise CkksAbort(f"{len(done)} clients generated key shares < threshold")
        done_ids = [int(kg[n]["client_id"]) for n in done]
        finish_req = {}
        for node in done:
            me = int(kg[node]["client_id"])
            blobs = []
            for other in done:
                to = [int(i) for i in np.asarray(kg[other]["to"]).tolist()]
                blobs.append(bytes(kg[other]["blobs"][to.index(me)]) if me in to else b"")
            finish_req[node] = {
                "ids": np.asarray(done_ids, dtype=np.int64),
                "bs": [bytes(kg[o]["b"]) for o in done],
                "sigs": [bytes(kg[o]["sig"]) for o in done],
                "blobs": blobs,
            }
        fin = self._send(STAGE_FINISH, finish_req)
        plan = make_plan(self.params, holders=len(order), threshold=self.threshold,
                         rounds=self.rounds, length=self.length, clip=self.clip)  # fmt: skip
        if len(fin) < plan.threshold:
            raise CkksAbort(f"{len(fin)} clients hold key shares < threshold {plan.threshold}")
        self.keys.holders = {int(kg[n]["client_id"]): n for n in fin}
        self.keys.acks = {int(fin[n]["client_id"]): bytes(fin[n]["sig"]) for n in fin}
        self.keys.length = self.length
        self.keys.plan = plan
        self.keys.bytes_up = self.exchange.bytes_up - up0
        self.keys.bytes_down = self.exchange.bytes_down - down0
        log.info("ckks: collective key set up by %d holders, threshold %d, %d decryptions",
                 len(fin), plan.threshold, plan.max_decryptions)  # fmt: skip

    # ------------------------------------------------------------------ round

    def collect(self) -> dict[int, dict[str, Any]]:
        ids = sorted(self.keys.acks)
        request = {
            "round": self.round,
            "ack_ids": np.asarray(ids, dtype=np.int64),
            "acks": [self.keys.acks[i] for i in ids],
        }
        requests = {node: request for node in self.nodes}
        replies = self._send(STAGE_COLLECT, requests, base=self.train_content)
        return {int(r["client_id"]): r for r in replies.values()}

    def decrypt(self, plan: ThresholdPlan, updates: Mapping[int, dict[str, Any]]) -> np.ndarray:
        aggregator = ThresholdAggregator(
            plan, length=self.length, round_number=self.round, seen_digests=self.run.seen_digests
        )
        total = aggregator.aggregate(updates, min_clients=self.min_clients)
        self.included = total.included
        holders = self.keys.holders
        ranked = [c for c in total.included if c in holders]
        ranked += [c for c in sorted(holders) if c not in ranked]
        subset = ranked[: plan.threshold]
        if len(subset) < plan.threshold:
            raise CkksAbort(f"{len(subset)} key holders left < threshold {plan.threshold}")
        request = {
            "round": self.round,
            "T": np.asarray(subset, dtype=np.int64),
            "c1": total.c1_blobs(aggregator.ring),
        }
        replies = self._send(STAGE_DECRYPT, {holders[c]: request for c in subset})
        shares = {}
        for c in subset:
            reply = replies.get(holders[c])
            if reply is None or reply.get("round") != self.round:
                raise CkksAbort(f"client {c}: no decryption share (dropped or refused)")
            shares[c] = list(reply.get("shares", []))
        try:
            return decode_sum(plan, total, shares, length=self.length)
        except CiphertextError as err:
            raise CkksAbort(str(err)) from err

    def run_round(self) -> SecureSum:
        """All stages; an abort returns a `SecureSum` with ``note`` set."""
        if not self.nodes:
            return self.exchange.abort("no client sampled")
        try:
            if self.keys.plan is None:
                self.setup()
            plan = self.keys.plan
            assert plan is not None
            if self.length != self.keys.length:
                raise CkksAbort("the model's size changed since the key setup")
            updates = self.collect()
            total = self.decrypt(plan, updates)
            float_sums, int_sums = split_sum(total, self.shapes, clip=self.clip)
            if int(int_sums["clients"][0]) != len(self.included):
                raise CkksAbort(
                    f"decrypted sum counts {int(int_sums['clients'][0])} clients, "
                    f"expected {len(self.included)}"
                )
        except (HeAbort, ValueError, KeyError) as err:
            log.error("ckks round %d aborted, model unchanged: %s", self.round, err)
            return self.exchange.abort(str(err))
        return self.exchange.secure_sum(float_sums, int_sums, clients=len(self.included))
