"""The client side of SecAgg+ (Bell et al., CCS 2020, https://eprint.iacr.org/2020/704):
one method per stage, each taking the server's message and returning the reply.

:class:`ClientState` holds this round's secrets (key pairs, the self-mask seed, the shares
received) and refuses to be pickled; :meth:`SecAggPlusClient.forget` drops them when the
round ends. The stages and the threat model are described in :mod:`umbra.secure.secagg`.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from umbra.secure.identity import IdentityError
from umbra.secure.secagg import crypto
from umbra.secure.secagg.advert import NodeIdentity, check_advert
from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.constants import (
    AEAD_KEY_INFO,
    KEY_BYTES,
    MASK_INFO,
    PAIR_SEED_INFO,
    SEED_BYTES,
    SELF_MASK_INFO,
    SHARE_PLAINTEXT_BYTES,
    STAGE_ADVERTISE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    Key,
)
from umbra.secure.secagg.errors import ProtocolViolation
from umbra.secure.secagg.graph import graph_parameters, graph_seed, neighbour_graph
from umbra.secure.secagg.messages import (
    Message,
    id_list,
    masked_digest,
    pair_info,
    share_aad,
    share_holders,
)
from umbra.secure.secagg.shamir import split_secret

__all__ = ["ClientState", "SecAggPlusClient"]

log = logging.getLogger(__name__)


@dataclass
class ClientState:
    """What one client remembers between stages. Secrets are hidden from ``repr`` and the
    object refuses to be pickled (it holds private keys, the self-mask seed and shares)."""

    client_id: int
    stage: str = "init"
    config: SecAggConfig | None = None
    graph: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)
    pk_c: dict[int, bytes] = field(default_factory=dict, repr=False)
    pk_s: dict[int, bytes] = field(default_factory=dict, repr=False)
    masked_with: tuple[int, ...] = ()
    rejected: tuple[int, ...] = ()
    #: sparse graphs: the roster and its graph commitments, as relayed in reveal_seed
    roster: tuple[int, ...] = field(default=(), repr=False)
    graph_commitments: dict[int, bytes] = field(default_factory=dict, repr=False)
    graph_randomness: bytes | None = field(default=None, repr=False)
    c_keys: crypto.KeyPair | None = field(default=None, repr=False)
    s_keys: crypto.KeyPair | None = field(default=None, repr=False)
    self_seed: bytes | None = field(default=None, repr=False)
    b_shares: dict[int, bytes] = field(default_factory=dict, repr=False)
    sk_shares: dict[int, bytes] = field(default_factory=dict, repr=False)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("ClientState holds secrets and cannot be pickled")

    def __getstate__(self) -> Any:
        raise TypeError("ClientState holds secrets and cannot be pickled")


class SecAggPlusClient:
    """Client side of SecAgg+: one method per stage, each taking the server's message."""

    def __init__(
        self,
        client_id: int,
        *,
        threshold_fraction: float | None = None,
        check_graph: bool = True,
        identity: NodeIdentity | None = None,
    ) -> None:
        """``threshold_fraction``: the client's own configured threshold; it refuses a round
        whose threshold is below ``ceil(threshold_fraction * n)``. ``check_graph``: refuse a
        round whose degree and Shamir threshold are not `graph.graph_parameters`' (off only
        for rounds run with explicit parameters, which carry no guarantee). ``identity``:
        sign this client's advertisement and accept a neighbour's keys only with a valid
        signature from the roster (`umbra.secure.secagg.advert`); None: unsigned rounds."""
        if not 0 <= client_id < 1 << 32:
            raise ValueError(f"client_id must be in [0, 2^32), got {client_id}")
        if threshold_fraction is not None and not 0 < threshold_fraction <= 1:
            raise ValueError(f"threshold_fraction must be in (0, 1], got {threshold_fraction}")
        self.state = ClientState(client_id=client_id)
        self.threshold_fraction = threshold_fraction
        self.check_graph = check_graph
        self.identity = identity

    def __repr__(self) -> str:
        return f"SecAggPlusClient({self.state!r})"

    def _check_round(self, msg: Mapping[str, Any]) -> SecAggConfig:
        cfg = self.state.config
        if cfg is None or msg.get(Key.ROUND) != cfg.round_number:
            raise ProtocolViolation(f"client {self.state.client_id}: message for another round")
        return cfg

    def advertise_keys(self, msg: Mapping[str, Any]) -> Message:
        """Stage 1: accept the round configuration, create key pairs, send public keys."""
        return self._use_keys(msg, crypto.generate_keypair(), crypto.generate_keypair())

    def adopt_keys(self, msg: Mapping[str, Any], c_private: bytes, s_private: bytes) -> Message:
        """Stage 1 without a message exchange: take this round's key pairs from pre-keys.

        ``msg`` carries the round configuration (`SecAggConfig.to_message`, what the
        advertise request holds); ``c_private`` / ``s_private`` are the raw 32-byte private
        keys whose public halves the client sent ahead in its previous unmask reply
        (``Key.NEXT_PK_C`` / ``Key.NEXT_PK_S``). Leaves the state exactly as
        `advertise_keys` would and returns the reply it would have sent (the server builds
        that reply from the stored public keys). The caller must use a pre-key pair for one
        round only: reused mask keys would let shares revealed in one round unmask another.
        """
        return self._use_keys(msg, crypto.keypair_from(c_private), crypto.keypair_from(s_private))

    def _use_keys(
        self, msg: Mapping[str, Any], c_keys: crypto.KeyPair, s_keys: crypto.KeyPair
    ) -> Message:
        st = self.state
        cfg = SecAggConfig.from_message(msg)
        self._check_parameters(cfg)
        st.config = cfg
        st.c_keys, st.s_keys = c_keys, s_keys
        st.stage = STAGE_ADVERTISE_KEYS
        reply: Message = {
            Key.ROUND: st.config.round_number,
            Key.CLIENT_ID: st.client_id,
            Key.PK_C: st.c_keys.public,
            Key.PK_S: st.s_keys.public,
        }
        if not st.config.complete:
            st.graph_randomness = crypto.new_seed(KEY_BYTES)
            reply[Key.GRAPH_COMMITMENT] = crypto.commit_graph_randomness(
                st.graph_randomness, client_id=st.client_id, round_number=st.config.round_number
            )
        if self.identity is not None:
            reply[Key.IDENTITY] = self.identity.partition_id
            reply[Key.SIGNATURE] = self.identity.sign_advert(
                round_number=st.config.round_number,
                secagg_id=st.client_id,
                pk_c=st.c_keys.public,
                pk_s=st.s_keys.public,
                graph_commitment=reply.get(Key.GRAPH_COMMITMENT, b""),
            )
        return reply

    def _check_parameters(self, cfg: SecAggConfig) -> None:
        """Refuse a server-chosen threshold or graph weaker than what this client expects:
        a lower ``t`` or ``tau`` would let fewer colluders reconstruct its secrets."""
        me, n = self.state.client_id, cfg.num_clients
        if self.threshold_fraction is not None:
            needed = math.ceil(self.threshold_fraction * n - 1e-9)
            if cfg.threshold < needed:
                raise ProtocolViolation(
                    f"client {me}: threshold {cfg.threshold} of {n} is below the configured "
                    f"{self.threshold_fraction:g} ({needed})"
                )
        if self.check_graph:
            want = graph_parameters(n, cfg.threshold)
            if (cfg.degree, cfg.share_threshold) != (want.degree, want.share_threshold):
                raise ProtocolViolation(
                    f"client {me}: graph parameters (degree {cfg.degree}, Shamir threshold "
                    f"{cfg.share_threshold}) differ from the required ({want.degree}, "
                    f"{want.share_threshold}) for threshold {cfg.threshold} of {n}"
                )

    def reveal_seed(self, msg: Mapping[str, Any]) -> Message:
        """Stage 1b (sparse graphs): check the relayed commitments, reveal ``r_i``.

        The request carries the roster and every roster member's commitment; the client
        refuses it unless its own commitment is there unchanged, and keeps them all to check
        the reveals the server relays next (`share_keys`).
        """
        st = self.state
        cfg = self._check_round(msg)
        me = st.client_id
        if st.stage != STAGE_ADVERTISE_KEYS or cfg.complete or st.graph_randomness is None:
            raise ProtocolViolation(f"client {me}: reveal_seed out of order")
        try:
            roster = id_list(msg[Key.IDS])
            commitments = [bytes(c) for c in msg[Key.GRAPH_COMMITMENTS]]
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"client {me}: malformed reveal_seed message") from err
        if len(commitments) != len(roster) or len(set(roster)) != len(roster):
            raise ProtocolViolation(f"client {me}: roster and commitments do not match")
        mine = crypto.commit_graph_randomness(
            st.graph_randomness, client_id=me, round_number=cfg.round_number
        )
        relayed = dict(zip(roster, commitments, strict=True))
        if relayed.get(me) != mine:
            raise ProtocolViolation(f"client {me}: its graph commitment is missing or altered")
        if len(roster) < cfg.threshold:
            raise ProtocolViolation(f"client {me}: roster smaller than the threshold")
        st.roster, st.graph_commitments = tuple(sorted(roster)), relayed
        st.stage = STAGE_REVEAL_SEED
        return {
            Key.ROUND: cfg.round_number,
            Key.CLIENT_ID: me,
            Key.GRAPH_REVEAL: st.graph_randomness,
        }

    def _graph_seed(self, roster: list[int], msg: Mapping[str, Any]) -> bytes:
        """The graph seed from the relayed reveals, each checked against its commitment."""
        st = self.state
        cfg = self._check_round(msg)
        me = st.client_id
        if tuple(sorted(roster)) != st.roster:
            raise ProtocolViolation(f"client {me}: roster changed after the commitments")
        try:
            reveals = [bytes(r) for r in msg[Key.GRAPH_REVEALS]]
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"client {me}: malformed graph reveals") from err
        if len(reveals) != len(roster):
            raise ProtocolViolation(f"client {me}: one graph reveal per roster member needed")
        opened = dict(zip(roster, reveals, strict=True))
        for j, r in opened.items():
            if (
                len(r) != KEY_BYTES
                or crypto.commit_graph_randomness(r, client_id=j, round_number=cfg.round_number)
                != st.graph_commitments[j]
            ):
                raise ProtocolViolation(
                    f"client {me}: graph randomness of client {j} does not match its commitment"
                )
        if opened[me] != st.graph_randomness:
            raise ProtocolViolation(f"client {me}: its own graph randomness was replaced")
        return graph_seed(opened, round_number=cfg.round_number)

    def share_keys(self, msg: Mapping[str, Any]) -> Message:
        """Stage 2: derive the graph, Shamir-share ``b`` and ``sk_s`` among neighbours."""
        st = self.state
        cfg = self._check_round(msg)
        expected_stage = STAGE_ADVERTISE_KEYS if cfg.complete else STAGE_REVEAL_SEED
        if st.stage != expected_stage or st.c_keys is None or st.s_keys is None:
            raise ProtocolViolation(f"client {st.client_id}: share_keys out of order")
        me = st.client_id
        try:
            roster = id_list(msg[Key.IDS])
            key_ids = id_list(msg[Key.KEY_IDS])
            pk_c, pk_s = list(msg[Key.PK_C]), list(msg[Key.PK_S])
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"client {me}: malformed share_keys message") from err
        if me not in roster or len(set(roster)) != len(roster):
            raise ProtocolViolation(f"client {me}: not in the roster or repeated ids")
        if len(roster) < cfg.threshold:
            raise ProtocolViolation(f"client {me}: roster smaller than the threshold")
        # complete graph: no randomness needed; sparse: the clients' seed, never the server's
        seed = bytes(KEY_BYTES) if cfg.complete else self._graph_seed(roster, msg)
        st.graph = neighbour_graph(roster, degree=min(cfg.degree, len(roster) - 1), seed=seed)
        holders = share_holders(me, st.graph)
        if key_ids != holders or len(pk_c) != len(holders) or len(pk_s) != len(holders):
            raise ProtocolViolation(f"client {me}: server sent keys for the wrong neighbours")
        st.pk_c = {j: bytes(k) for j, k in zip(holders, pk_c, strict=True)}
        st.pk_s = {j: bytes(k) for j, k in zip(holders, pk_s, strict=True)}
        if st.pk_c[me] != st.c_keys.public or st.pk_s[me] != st.s_keys.public:
            raise ProtocolViolation(f"client {me}: server relayed wrong public keys for it")
        if self.identity is not None:
            self._check_signatures(holders, msg, cfg)
        if len(holders) < cfg.share_threshold:
            raise ProtocolViolation(f"client {me}: fewer neighbours than the share threshold")
        st.self_seed = crypto.new_seed(SEED_BYTES)
        sk_raw = crypto.private_bytes(st.s_keys.private)
        kw = {"threshold": cfg.share_threshold, "num_shares": len(holders)}
        b_sh = split_secret(st.self_seed, **kw)
        sk_sh = split_secret(sk_raw, **kw)
        to, cts = [], []
        for pos, holder in enumerate(holders):
            index, b_share = b_sh[pos]
            _, sk_share = sk_sh[pos]
            if holder == me:
                st.b_shares[me], st.sk_shares[me] = b_share, sk_share
                continue
            try:
                key = crypto.agree(
                    st.c_keys.private,
                    st.pk_c[holder],
                    info=AEAD_KEY_INFO + pair_info(me, holder, cfg.round_number),
                )
            except ValueError as err:
                raise ProtocolViolation(f"client {me}: invalid public key of {holder}") from err
            plaintext = struct.pack("<III", me, holder, index) + b_share + sk_share
            aad = share_aad(me, holder, cfg.round_number)
            to.append(holder)
            cts.append(crypto.aead_encrypt(key, plaintext, aad=aad))
        st.stage = STAGE_SHARE_KEYS
        return {
            Key.ROUND: cfg.round_number,
            Key.CLIENT_ID: me,
            Key.TO: np.asarray(to, dtype=np.int64),
            Key.CIPHERTEXTS: cts,
            Key.COMMITMENT: crypto.commit_seed(
                st.self_seed, client_id=me, round_number=cfg.round_number
            ),
        }

    def _check_signatures(
        self, holders: list[int], msg: Mapping[str, Any], cfg: SecAggConfig
    ) -> None:
        """Before any pairwise key is derived: every neighbour's advertisement carries a
        valid signature of a distinct roster member (this client's own roster); else a
        `ProtocolViolation` naming the peer."""
        st, ident = self.state, self.identity
        assert ident is not None
        me = st.client_id
        try:
            pids = id_list(msg[Key.KEY_PIDS])
            sigs = list(msg[Key.SIGNATURES])
        except (KeyError, TypeError, ValueError):
            raise ProtocolViolation(
                f"client {me}: the server relayed its neighbours' keys without signatures"
            ) from None
        if len(pids) != len(holders) or len(sigs) != len(holders):
            raise ProtocolViolation(f"client {me}: one signature per neighbour needed")
        if pids[holders.index(me)] != ident.partition_id:
            raise ProtocolViolation(f"client {me}: server relayed another identity for it")
        seen: dict[int, int] = {}
        for j, pid, sig in zip(holders, pids, sigs, strict=True):
            if pid in seen:
                raise ProtocolViolation(
                    f"client {me}: partition {pid} advertised as clients {seen[pid]} and {j}"
                )
            seen[pid] = j
            if j == me:
                continue
            try:
                check_advert(ident.roster, sig, run_id=ident.run_id, partition_id=pid,
                             round_number=cfg.round_number, secagg_id=j, pk_c=st.pk_c[j],
                             pk_s=st.pk_s[j],
                             graph_commitment=st.graph_commitments.get(j, b""))  # fmt: skip
            except IdentityError as err:
                raise ProtocolViolation(
                    f"client {me}: advertisement of client {j} (partition {pid}) refused: {err}"
                ) from err

    def _open_share(self, sender: int, blob: Any, round_number: int) -> tuple[bytes, bytes]:
        st = self.state
        assert st.c_keys is not None
        key = crypto.agree(
            st.c_keys.private,
            st.pk_c[sender],
            info=AEAD_KEY_INFO + pair_info(st.client_id, sender, round_number),
        )
        plain = crypto.aead_decrypt(key, blob, aad=share_aad(sender, st.client_id, round_number))
        if len(plain) != SHARE_PLAINTEXT_BYTES:
            raise crypto.AuthenticationError("share plaintext has the wrong length")
        owner, holder, index = struct.unpack("<III", plain[:12])
        expected = share_holders(sender, st.graph).index(st.client_id) + 1
        if (owner, holder, index) != (sender, st.client_id, expected):
            raise crypto.AuthenticationError("share addressed to another client or index")
        return plain[12 : 12 + SEED_BYTES], plain[12 + SEED_BYTES :]

    def collect_masked_input(self, msg: Mapping[str, Any], *, vector: np.ndarray) -> Message:
        """Stage 3: decrypt neighbours' shares and send the masked ``vector``.

        ``vector`` is this client's encoded update in the round's ring Z_{2^ring_bits}
        (uint32 or uint16, see `PayloadLayout.encode`).
        Neighbours whose share ciphertext fails authentication are reported as rejected
        and not masked with (the server then treats them as excluded).
        """
        st = self.state
        cfg = self._check_round(msg)
        if st.stage != STAGE_SHARE_KEYS or st.s_keys is None or st.self_seed is None:
            raise ProtocolViolation(f"client {st.client_id}: masking out of order")
        vec = np.asarray(vector)
        ring = crypto.ring_dtype(cfg.ring_bits)
        if vec.dtype != ring or vec.shape != (cfg.vector_length,):
            raise ValueError(
                f"vector must be {ring} of shape ({cfg.vector_length},), "
                f"got {vec.dtype} {vec.shape}"
            )
        me = st.client_id
        try:
            senders = id_list(msg[Key.FROM])
            blobs = list(msg[Key.CIPHERTEXTS])
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"client {me}: malformed masking request") from err
        if len(senders) != len(blobs) or not set(senders) <= st.graph[me]:
            raise ProtocolViolation(f"client {me}: shares from non-neighbours")
        accepted, rejected = [], []
        for sender, blob in zip(senders, blobs, strict=True):
            try:
                b_share, sk_share = self._open_share(sender, blob, cfg.round_number)
            except (crypto.AuthenticationError, ValueError) as err:
                log.warning("secagg+ client %d: share from %d rejected: %s", me, sender, err)
                rejected.append(sender)
                continue
            st.b_shares[sender], st.sk_shares[sender] = b_share, sk_share
            accepted.append(sender)
        n = cfg.vector_length
        masked = vec.astype(ring, copy=True)
        masked += crypto.prg_ring(st.self_seed, length=n, round_number=cfg.round_number,
                                  purpose=SELF_MASK_INFO, bits=cfg.ring_bits)  # fmt: skip
        for j in accepted:
            pair_seed = crypto.agree(
                st.s_keys.private, st.pk_s[j], info=PAIR_SEED_INFO + pair_info(me, j, 0)
            )
            mask = crypto.prg_ring(pair_seed, length=n, round_number=cfg.round_number,
                                   purpose=MASK_INFO, bits=cfg.ring_bits)  # fmt: skip
            if me < j:
                masked += mask
            else:
                masked -= mask
        st.masked_with, st.rejected = tuple(accepted), tuple(rejected)
        st.stage = STAGE_COLLECT_MASKED
        return {
            Key.ROUND: cfg.round_number,
            Key.CLIENT_ID: me,
            Key.MASKED: masked,
            Key.DIGEST: masked_digest(masked),
            Key.MASKED_WITH: np.asarray(accepted, dtype=np.int64),
            Key.REJECTED: np.asarray(rejected, dtype=np.int64),
        }

    def unmask(self, msg: Mapping[str, Any]) -> Message:
        """Stage 4: send shares of ``b`` for survivors and of ``sk_s`` for dropped clients."""
        st = self.state
        cfg = self._check_round(msg)
        me = st.client_id
        if st.stage != STAGE_COLLECT_MASKED:
            raise ProtocolViolation(f"client {me}: unmask out of order")
        try:
            survivors, dropped = set(id_list(msg[Key.SURVIVORS])), set(id_list(msg[Key.DROPPED]))
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"client {me}: malformed unmask request") from err
        if survivors & dropped:
            raise ProtocolViolation(f"client {me}: a client is both survivor and dropped")
        if len(survivors) < cfg.threshold:
            raise ProtocolViolation(f"client {me}: fewer survivors than the threshold")
        if me not in survivors:
            raise ProtocolViolation(f"client {me}: not listed as a survivor")
        b_ids = sorted(survivors & st.b_shares.keys())
        sk_ids = sorted((dropped & st.sk_shares.keys()) - {me})
        st.stage = STAGE_UNMASK
        reply = {
            Key.ROUND: cfg.round_number,
            Key.CLIENT_ID: me,
            Key.B_IDS: np.asarray(b_ids, dtype=np.int64),
            Key.B_SHARES: [st.b_shares[j] for j in b_ids],
            Key.SK_IDS: np.asarray(sk_ids, dtype=np.int64),
            Key.SK_SHARES: [st.sk_shares[j] for j in sk_ids],
        }
        self.forget()  # the round is over for this client
        return reply

    def forget(self) -> None:
        """Drop every secret of this round (call it when a round ends or aborts)."""
        st = self.state
        st.b_shares, st.sk_shares, st.self_seed = {}, {}, None
        st.c_keys = st.s_keys = None
        st.graph_randomness = None
