"""The server side of SecAgg+ (Bell et al., CCS 2020, https://eprint.iacr.org/2020/704):
one method per stage, each taking the clients' replies to the previous stage.

The server holds public keys, ciphertexts and masked vectors, never a secret; it
reconstructs only the survivors' self-mask seeds and the dropped clients' mask keys, and
aborts (revealing nothing) when fewer than ``threshold`` clients survive. See
:mod:`umbra.secure.secagg.client` for the protocol's stages and threat model.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from umbra.secure.identity import IdentityError
from umbra.secure.secagg import crypto
from umbra.secure.secagg.advert import check_advert
from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.constants import (
    KEY_BYTES,
    MASK_INFO,
    PAIR_SEED_INFO,
    SEED_BYTES,
    SELF_MASK_INFO,
    STAGE_ADVERTISE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    Key,
)
from umbra.secure.secagg.errors import SecAggAbort
from umbra.secure.secagg.graph import graph_seed, neighbour_graph
from umbra.secure.secagg.messages import (
    SHARE_CT_BYTES,
    Message,
    id_list,
    is_bytes,
    masked_digest,
    pair_info,
    share_holders,
)
from umbra.secure.secagg.shamir import combine_shares

__all__ = ["SecAggPlusServer", "ServerState"]

log = logging.getLogger(__name__)

_MAX_RECONSTRUCTION_TRIES = 64  # pycryptodome's combine costs ~10-30 ms


@dataclass
class ServerState:
    """What the server knows: public keys, ciphertexts, masked vectors - never a secret."""

    config: SecAggConfig
    stage: str = "init"
    invited: tuple[int, ...] = ()
    pk_c: dict[int, bytes] = field(default_factory=dict, repr=False)
    pk_s: dict[int, bytes] = field(default_factory=dict, repr=False)
    identities: dict[int, int] = field(default_factory=dict)  # client id -> partition id
    signatures: dict[int, bytes] = field(default_factory=dict, repr=False)
    graph_seed: bytes = b""
    graph_commitments: dict[int, bytes] = field(default_factory=dict, repr=False)
    graph_reveals: dict[int, bytes] = field(default_factory=dict, repr=False)
    graph: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)
    u1: tuple[int, ...] = ()
    u2: tuple[int, ...] = ()
    forwarded: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False)
    ciphertexts: dict[tuple[int, int], bytes] = field(default_factory=dict, repr=False)
    commitments: dict[int, bytes] = field(default_factory=dict, repr=False)
    masked: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    masked_with: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    excluded: dict[int, str] = field(default_factory=dict)
    flagged: dict[int, str] = field(default_factory=dict)
    seen_digests: set[bytes] = field(default_factory=set, repr=False)


class SecAggPlusServer:
    """Server side of SecAgg+. Each stage method takes the clients' replies to the previous
    stage (missing clients have dropped out) and returns the next requests, per client.

    Signed advertisements (`umbra.secure.secagg.advert`) are relayed as received; with a
    ``roster`` the server also requires and checks them (against ``run_id`` when known), so
    one client's bad signature excludes that client instead of making every honest client
    refuse the round. The clients check them against their own rosters in any case."""

    def __init__(
        self,
        config: SecAggConfig,
        *,
        seen_digests: set[bytes] | None = None,
        roster: Mapping[int, bytes] | None = None,
        run_id: int | None = None,
    ) -> None:
        self.state = ServerState(config=config)
        if seen_digests is not None:
            self.state.seen_digests = seen_digests  # shared across rounds: replay detection
        self.roster = dict(roster or {})
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"SecAggPlusServer({self.state!r})"

    # -- helpers
    def _exclude(self, cid: int, reason: str) -> None:
        if cid not in self.state.excluded:
            self.state.excluded[cid] = reason
            log.warning(
                "secagg+ round %d: client %d excluded: %s",
                self.state.config.round_number,
                cid,
                reason,
            )

    def _flag(self, cid: int, reason: str) -> None:
        if cid not in self.state.flagged:
            self.state.flagged[cid] = reason
            log.warning(
                "secagg+ round %d: shares of client %d discarded: %s",
                self.state.config.round_number,
                cid,
                reason,
            )

    def _abort(self, reason: str) -> SecAggAbort:
        log.error(
            "secagg+ round %d aborted, nothing revealed: %s", self.state.config.round_number, reason
        )
        self.state.stage = "aborted"
        return SecAggAbort(f"secure aggregation aborted: {reason}")

    def _valid_header(self, cid: int, msg: Any, allowed: Collection[int]) -> bool:
        if cid not in allowed:
            return False
        if not isinstance(msg, Mapping):
            self._exclude(cid, "message is not a mapping")
            return False
        if msg.get(Key.ROUND) != self.state.config.round_number:
            self._exclude(cid, f"message for round {msg.get(Key.ROUND)!r} (stale or replayed)")
            return False
        if msg.get(Key.CLIENT_ID) != cid:
            self._exclude(cid, "message carries another client's id")
            return False
        return True

    # -- stages
    def advertise_keys(self, client_ids: Sequence[int]) -> dict[int, Message]:
        """Stage 1 requests: the round configuration, for every invited client."""
        st = self.state
        if len(set(client_ids)) != len(client_ids):
            raise ValueError("client_ids must be distinct")
        if len(client_ids) > st.config.num_clients:
            raise ValueError(f"at most num_clients={st.config.num_clients} clients may take part")
        st.invited = tuple(sorted(client_ids))
        st.stage = STAGE_ADVERTISE_KEYS
        return {cid: st.config.to_message() for cid in st.invited}

    def _accept_keys(self, replies: Mapping[int, Mapping[str, Any]]) -> None:
        """Check advertised keys (and graph commitments on a sparse graph); fix ``u1``."""
        st = self.state
        sparse = not st.config.complete
        probe = X25519PrivateKey.generate()
        seen: dict[bytes, int] = {}
        candidates = []
        for cid in sorted(replies):
            msg = replies[cid]
            if not self._valid_header(cid, msg, st.invited):
                continue
            pk_c, pk_s = msg.get(Key.PK_C, b""), msg.get(Key.PK_S, b"")
            try:
                for pk in (pk_c, pk_s):
                    probe.exchange(crypto.load_public_key(pk))  # rejects low-order points
            except ValueError:
                self._exclude(cid, "malformed or low-order public key")
                continue
            if pk_c == pk_s:
                self._exclude(cid, "the two public keys are equal")
                continue
            if sparse and not is_bytes(msg.get(Key.GRAPH_COMMITMENT), KEY_BYTES):
                self._exclude(cid, "missing or malformed graph commitment")
                continue
            if not self._accept_signature(cid, msg):
                continue
            for pk in (bytes(pk_c), bytes(pk_s)):
                if pk in seen:
                    self._exclude(cid, f"public key already used by client {seen[pk]} (replayed)")
                    self._exclude(seen[pk], f"public key also sent by client {cid} (replayed)")
                seen[pk] = cid
            st.pk_c[cid], st.pk_s[cid] = bytes(pk_c), bytes(pk_s)
            if sparse:
                st.graph_commitments[cid] = bytes(msg[Key.GRAPH_COMMITMENT])
            candidates.append(cid)
        owners: dict[int, int] = {}
        for cid in candidates:
            pid = st.identities.get(cid)
            if pid is not None and pid in owners:
                self._exclude(cid, f"partition {pid} already advertised by client {owners[pid]}")
                self._exclude(owners[pid], f"partition {pid} also advertised by client {cid}")
            elif pid is not None:
                owners[pid] = cid
        st.u1 = tuple(c for c in candidates if c not in st.excluded)
        if len(st.u1) < st.config.threshold:
            raise self._abort(
                f"{len(st.u1)} valid key advertisements < threshold {st.config.threshold}"
            )

    def _accept_signature(self, cid: int, msg: Mapping[str, Any]) -> bool:
        """Keep a signed advertisement's identity and signature for relaying; with a roster,
        exclude a client whose advertisement is unsigned or whose signature fails."""
        st = self.state
        pid, sig = msg.get(Key.IDENTITY), msg.get(Key.SIGNATURE)
        if not isinstance(pid, int) or not isinstance(sig, bytes | bytearray):
            if self.roster:
                self._exclude(cid, "advertisement without an identity signature")
                return False
            return True
        if self.roster and self.run_id is not None:
            try:
                check_advert(self.roster, sig, run_id=self.run_id, partition_id=pid,
                             round_number=st.config.round_number, secagg_id=cid,
                             pk_c=bytes(msg[Key.PK_C]), pk_s=bytes(msg[Key.PK_S]),
                             graph_commitment=bytes(msg.get(Key.GRAPH_COMMITMENT, b"")))  # fmt: skip
            except IdentityError as err:
                self._exclude(cid, str(err))
                return False
        st.identities[cid], st.signatures[cid] = pid, bytes(sig)
        return True

    def reveal_seed(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, Message]:
        """Sparse graphs: check advertised keys, relay the roster's graph commitments."""
        st = self.state
        if st.config.complete:
            raise ValueError("the complete graph needs no graph seed: call share_keys")
        self._accept_keys(replies)
        request = {
            Key.ROUND: st.config.round_number,
            Key.IDS: np.asarray(st.u1, dtype=np.int64),
            Key.GRAPH_COMMITMENTS: [st.graph_commitments[j] for j in st.u1],
        }
        st.stage = STAGE_REVEAL_SEED
        return {cid: dict(request) for cid in st.u1}

    def _accept_reveals(self, replies: Mapping[int, Mapping[str, Any]]) -> None:
        """Every roster member must reveal randomness matching its commitment, else abort:
        dropping a late or unwelcome reveal would let the server choose among seeds."""
        st = self.state
        missing = []
        for cid in st.u1:
            msg = replies.get(cid)
            if msg is None or not self._valid_header(cid, msg, st.u1):
                missing.append(cid)
                continue
            raw: Any = msg.get(Key.GRAPH_REVEAL)
            reveal = bytes(raw) if is_bytes(raw, KEY_BYTES) else b""
            if (
                not reveal
                or crypto.commit_graph_randomness(
                    reveal, client_id=cid, round_number=st.config.round_number
                )
                != st.graph_commitments[cid]
            ):
                self._exclude(cid, "graph randomness does not match its commitment")
                missing.append(cid)
                continue
            st.graph_reveals[cid] = reveal
        if missing:
            raise self._abort(
                f"{len(missing)} clients did not reveal the graph randomness they committed "
                f"to (ids {missing[:8]}); the graph cannot be drawn without them"
            )

    def share_keys(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, Message]:
        """Fix the graph and send each client its neighbours' keys.

        Complete graph: ``replies`` are the advertise replies. Sparse graph: the reveal
        replies (after `reveal_seed`); the graph seed is the hash of every reveal.
        """
        st = self.state
        sparse = not st.config.complete
        if sparse:
            if st.stage != STAGE_REVEAL_SEED:
                raise ValueError("a sparse graph needs the reveal_seed stage first")
            self._accept_reveals(replies)
            st.graph_seed = graph_seed(st.graph_reveals, round_number=st.config.round_number)
        else:
            self._accept_keys(replies)
        st.graph = neighbour_graph(
            st.u1, degree=min(st.config.degree, len(st.u1) - 1), seed=st.graph_seed or bytes(32)
        )
        ids = np.asarray(st.u1, dtype=np.int64)
        reveals = [st.graph_reveals[j] for j in st.u1] if sparse else None
        requests = {}
        for cid in st.u1:
            holders = share_holders(cid, st.graph)
            requests[cid] = {
                Key.ROUND: st.config.round_number,
                Key.IDS: ids,
                Key.KEY_IDS: np.asarray(holders, dtype=np.int64),
                Key.PK_C: [st.pk_c[j] for j in holders],
                Key.PK_S: [st.pk_s[j] for j in holders],
            }
            if st.signatures:  # relayed as received; each client checks them itself
                requests[cid][Key.KEY_PIDS] = np.asarray(
                    [st.identities.get(j, -1) for j in holders], dtype=np.int64
                )
                requests[cid][Key.SIGNATURES] = [st.signatures.get(j, b"") for j in holders]
            if reveals is not None:
                requests[cid][Key.GRAPH_REVEALS] = reveals
        st.stage = STAGE_SHARE_KEYS
        return requests

    def collect_masked(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, Message]:
        """Check the encrypted shares and forward to each client those addressed to it."""
        st = self.state
        u2 = []
        for cid in sorted(replies):
            msg = replies[cid]
            if not self._valid_header(cid, msg, st.u1):
                continue
            try:
                to = id_list(msg.get(Key.TO))
                cts = list(msg.get(Key.CIPHERTEXTS) or [])
            except (TypeError, ValueError):
                self._exclude(cid, "malformed share message")
                continue
            if to != sorted(st.graph[cid]) or len(cts) != len(to):
                self._exclude(cid, "shares not addressed to exactly its neighbours")
                continue
            if not all(is_bytes(c, SHARE_CT_BYTES) for c in cts):
                self._exclude(cid, "share ciphertext of the wrong length")
                continue
            if not is_bytes(msg.get(Key.COMMITMENT), 32):
                self._exclude(cid, "missing or malformed seed commitment")
                continue
            for holder, ct in zip(to, cts, strict=True):
                st.ciphertexts[(cid, holder)] = bytes(ct)
            st.commitments[cid] = bytes(msg[Key.COMMITMENT])
            u2.append(cid)
        st.u2 = tuple(u2)
        if len(st.u2) < st.config.threshold:
            raise self._abort(f"{len(st.u2)} clients shared keys < threshold {st.config.threshold}")
        requests = {}
        for cid in st.u2:
            senders = tuple(j for j in sorted(st.graph[cid]) if j in st.u2)
            st.forwarded[cid] = senders
            requests[cid] = {
                Key.ROUND: st.config.round_number,
                Key.FROM: np.asarray(senders, dtype=np.int64),
                Key.CIPHERTEXTS: [st.ciphertexts[(j, cid)] for j in senders],
            }
        st.stage = STAGE_COLLECT_MASKED
        return requests

    def unmask(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, Message]:
        """Check masked vectors, fix survivors and dropped clients, ask for shares.

        Raises SecAggAbort (before any share is requested) if fewer than ``threshold``
        clients remain.
        """
        st = self.state
        length = st.config.vector_length
        ring = crypto.ring_dtype(st.config.ring_bits)
        digests_this_round: dict[bytes, int] = {}
        valid: list[int] = []
        rejections: list[tuple[int, int]] = []
        for cid in sorted(replies):
            msg = replies[cid]
            if not self._valid_header(cid, msg, st.u2):
                continue
            masked = msg.get(Key.MASKED)
            if not isinstance(masked, np.ndarray) or masked.dtype != ring:
                self._exclude(cid, f"masked vector is not a {ring} array")
                continue
            if masked.shape != (length,):
                self._exclude(cid, f"masked vector has shape {masked.shape}, expected ({length},)")
                continue
            digest = masked_digest(masked)
            if msg.get(Key.DIGEST) != digest:
                self._exclude(cid, "masked vector garbled in transit (digest mismatch)")
                continue
            if digest in st.seen_digests or digest in digests_this_round:
                self._exclude(cid, "masked vector replayed")
                continue
            try:
                with_ = set(id_list(msg.get(Key.MASKED_WITH)))
                rejected = set(id_list(msg.get(Key.REJECTED)))
            except (TypeError, ValueError):
                self._exclude(cid, "malformed masked-with / rejected lists")
                continue
            if with_ & rejected or with_ | rejected != set(st.forwarded[cid]):
                self._exclude(cid, "masked-with list inconsistent with the forwarded shares")
                continue
            digests_this_round[digest] = cid
            st.masked[cid] = masked
            st.masked_with[cid] = frozenset(with_)
            rejections += [(cid, j) for j in rejected]
            valid.append(cid)
        for cid, j in rejections:
            self._exclude(j, f"its share ciphertext for client {cid} failed authentication")
        st.seen_digests.update(d for d, c in digests_this_round.items() if c not in st.excluded)
        st.survivors = tuple(c for c in valid if c not in st.excluded)
        st.dropped = tuple(c for c in st.u2 if c not in st.survivors)
        for cid in st.dropped:
            st.masked.pop(cid, None)
        if len(st.survivors) < st.config.threshold:
            raise self._abort(
                f"{len(st.survivors)} surviving clients < threshold {st.config.threshold}"
            )
        request = {
            Key.ROUND: st.config.round_number,
            Key.SURVIVORS: np.asarray(st.survivors, dtype=np.int64),
            Key.DROPPED: np.asarray(st.dropped, dtype=np.int64),
        }
        st.stage = STAGE_UNMASK
        return {cid: dict(request) for cid in st.survivors}

    def _reconstruct(
        self, owner: int, shares: dict[int, bytes], verify: Callable[[bytes], bool], what: str
    ) -> bytes:
        """Combine ``tau`` shares (holder -> share) and check them; find and flag bad holders."""
        tau = self.state.config.share_threshold
        holders = share_holders(owner, self.state.graph)
        indexed = {h: (holders.index(h) + 1, s) for h, s in shares.items()}
        if len(indexed) < tau:
            raise self._abort(f"{len(indexed)} shares of client {owner}'s {what} < {tau}")
        order = sorted(indexed)
        # cyclic windows first (any single bad share is skipped by one of them), then all
        # tau-subsets, up to a budget
        windows = (
            tuple(order[(i + d) % len(order)] for d in range(tau)) for i in range(len(order))
        )
        candidates = itertools.chain(windows, itertools.combinations(order, tau))
        for tries, subset in enumerate(candidates):
            if tries >= _MAX_RECONSTRUCTION_TRIES:
                break
            secret = combine_shares([indexed[h] for h in subset])
            if verify(secret):
                break
        else:
            raise self._abort(f"shares of client {owner}'s {what} do not reconstruct")
        if tries >= _MAX_RECONSTRUCTION_TRIES:
            raise self._abort(f"shares of client {owner}'s {what} do not reconstruct")
        if tries:  # a bad share was met: test the others against the verified polynomial
            base = list(subset[1:])
            for h in order:
                if h not in subset and not verify(combine_shares([indexed[x] for x in [*base, h]])):
                    self._flag(h, f"its share of client {owner}'s {what} does not reconstruct")
        return secret

    def aggregate(self, replies: Mapping[int, Mapping[str, Any]]) -> tuple[np.ndarray, int]:
        """Reconstruct seeds/keys from the survivors' shares and return the ring sum.

        Returns ``(sum in the round's ring, as uint32 or uint16, number of summed clients)``. Raises
        SecAggAbort if fewer than ``threshold`` survivors answered or a secret cannot be
        reconstructed.
        """
        st = self.state
        cfg = st.config
        survivors, dropped = set(st.survivors), set(st.dropped)
        b_shares: dict[int, dict[int, bytes]] = {i: {} for i in st.survivors}
        sk_needed = {j for i in st.survivors for j in st.masked_with[i] if j in dropped}
        sk_shares: dict[int, dict[int, bytes]] = {j: {} for j in sk_needed}
        responders = 0
        for cid in sorted(replies):
            msg = replies[cid]
            if not self._valid_header(cid, msg, survivors):
                continue
            try:
                b_ids, sk_ids = id_list(msg.get(Key.B_IDS)), id_list(msg.get(Key.SK_IDS))
                b_list = list(msg.get(Key.B_SHARES) or [])
                sk_list = list(msg.get(Key.SK_SHARES) or [])
            except (TypeError, ValueError):
                self._flag(cid, "malformed unmask message")
                continue
            ok = (
                len(b_ids) == len(b_list)
                and len(sk_ids) == len(sk_list)
                and set(b_ids) <= survivors
                and set(sk_ids) <= dropped
                and all(is_bytes(s, SEED_BYTES) for s in b_list)
                and all(is_bytes(s, KEY_BYTES) for s in sk_list)
                and all(cid in share_holders(j, st.graph) for j in [*b_ids, *sk_ids])
            )
            if not ok:
                self._flag(cid, "malformed or misaddressed shares")
                continue
            responders += 1
            for j, s in zip(b_ids, b_list, strict=True):
                b_shares[j][cid] = bytes(s)
            for j, s in zip(sk_ids, sk_list, strict=True):
                if j in sk_shares:
                    sk_shares[j][cid] = bytes(s)
        if responders < cfg.threshold:
            raise self._abort(
                f"{responders} clients answered the unmask request < threshold {cfg.threshold}"
            )
        n = cfg.vector_length
        bits = cfg.ring_bits
        total = np.zeros(n, dtype=crypto.ring_dtype(bits))
        for i in st.survivors:
            total += st.masked[i]
        for i in st.survivors:
            commitment = st.commitments[i]

            def check_b(seed: bytes, i: int = i, commitment: bytes = commitment) -> bool:
                return crypto.commit_seed(seed, client_id=i, round_number=cfg.round_number) == (
                    commitment
                )

            seed = self._reconstruct(i, b_shares[i], check_b, "self-mask seed")
            total -= crypto.prg_ring(seed, length=n, round_number=cfg.round_number,
                                     purpose=SELF_MASK_INFO, bits=bits)  # fmt: skip
        for j in sorted(sk_needed):
            pk = st.pk_s[j]

            def check_sk(raw: bytes, pk: bytes = pk) -> bool:
                return crypto.public_from_private_bytes(raw) == pk

            sk_j = X25519PrivateKey.from_private_bytes(
                self._reconstruct(j, sk_shares[j], check_sk, "mask key")
            )
            for i in st.survivors:
                if j not in st.masked_with[i]:
                    continue
                pair_seed = crypto.agree(sk_j, st.pk_s[i], info=PAIR_SEED_INFO + pair_info(i, j, 0))
                mask = crypto.prg_ring(pair_seed, length=n, round_number=cfg.round_number,
                                       purpose=MASK_INFO, bits=bits)  # fmt: skip
                # survivor i added +mask if i < j, else -mask: undo it
                if i < j:
                    total -= mask
                else:
                    total += mask
        st.stage = "done"
        return total, len(st.survivors)
