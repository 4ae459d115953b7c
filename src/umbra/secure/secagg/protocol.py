"""SecAgg+ secure aggregation (Bell et al., CCS 2020, https://eprint.iacr.org/2020/704).

Transport-independent state machines for the semi-honest SecAgg+ protocol, itself the
sparse-graph version of Bonawitz et al. (CCS 2017, https://eprint.iacr.org/2017/281):

1. **advertise keys** - each client creates two X25519 key pairs (``c``: share
   encryption, ``s``: pairwise masks) and sends the public halves (or adopts, with
   `SecAggPlusClient.adopt_keys`, single-use pre-keys whose public halves it sent ahead
   with its previous round's unmask reply, which saves this message exchange); on a sparse
   graph it also draws 32 random bytes ``r_i`` and sends the commitment ``H(r_i)``;
1b. **reveal seed** (sparse graphs only) - the server relays the roster and all
   commitments; each client checks its own is there and reveals ``r_i``;
2. **share keys** - the server relays the roster (and on a sparse graph every ``r_j``:
   each client checks them against the commitments and derives the graph seed
   ``H(r_1 .. r_n)`` itself, so the server cannot choose the graph); each client draws a
   self-mask seed ``b``, Shamir-shares ``b`` and its mask secret key among its neighbours
   (threshold ``tau``) and sends the shares encrypted (ChaCha20-Poly1305) to each neighbour
   through the server, with a commitment to ``b``;
3. **collect masked inputs** - each client decrypts the shares it received and sends
   ``y_i = x_i + PRG(b_i) + sum_{j in N(i), i<j} PRG(s_ij) - sum_{j in N(i), j<i} PRG(s_ij)``
   in Z_{2^32}, where ``s_ij`` comes from X25519(s_i, s_j) + HKDF, and the PRG (ChaCha20)
   binds the round number;
4. **unmask** - survivors send shares of ``b`` for survivors and of the mask key for
   clients that dropped after sharing; the server reconstructs them, removes the masks and
   obtains only the sum. A client never reveals both kinds of share for one client.

Messages are plain dicts of ints, bytes, lists of bytes and numpy arrays (keys in
`constants.Key`), ready to be put into Flower records. Threat model: honest-but-curious
server colluding with fewer than ``t`` clients on the complete graph (``n <=
COMPLETE_GRAPH_MAX_CLIENTS``), with a ``CORRUPT_FRACTION`` of the clients on the sparse
graph beyond, except with probability ``2^-SECURITY_BITS`` (`graph.collusion_bound`).
The graph seed is unbiased except that the server may abort a round after the reveals
(a visible aborted round, after which the next round draws a fresh graph). There is no consistency
check round (the signatures of the malicious-server variant of Bell et al.), so a server
that sent different survivor lists to different clients could unmask one client; a
malicious client can still send any well-formed vector (input validation is the poisoning
defence's job). A digest on the masked vector only detects corruption in transit.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import struct
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from umbra.errors import UmbraError
from umbra.secure.secagg import crypto
from umbra.secure.secagg.constants import (
    AEAD_KEY_INFO,
    KEY_BYTES,
    MASK_INFO,
    NONCE_BYTES,
    PAIR_SEED_INFO,
    SEED_BYTES,
    SELF_MASK_INFO,
    SHARE_AAD_LABEL,
    SHARE_PLAINTEXT_BYTES,
    STAGE_ADVERTISE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    Key,
)
from umbra.secure.secagg.graph import graph_parameters, graph_seed, neighbour_graph
from umbra.secure.secagg.quantize import PayloadLayout
from umbra.secure.secagg.shamir import combine_shares, split_secret

__all__ = [
    "ClientState",
    "ProtocolViolation",
    "SecAggAbort",
    "SecAggConfig",
    "SecAggError",
    "SecAggPlusClient",
    "SecAggPlusServer",
    "ServerState",
    "Transcript",
    "message_nbytes",
    "run_secagg_round",
]

log = logging.getLogger(__name__)

Message = dict[str, Any]
_SHARE_CT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + 16
_MAX_RECONSTRUCTION_TRIES = 64  # pycryptodome's combine costs ~10-30 ms


class SecAggError(UmbraError):
    """Base class of secure-aggregation failures."""


class SecAggAbort(SecAggError):
    """The round was aborted (e.g. fewer than ``threshold`` survivors); no sum was revealed."""

    def __init__(self, message: str, *, transcript: Transcript | None = None) -> None:
        super().__init__(message)
        self.transcript = transcript


class ProtocolViolation(SecAggError):
    """A client refused a server message that breaks the protocol (it sends nothing back)."""


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one SecAgg+ round, sent by the server to every client.

    ``threshold`` (t) is the minimum number of surviving clients; ``share_threshold``
    (tau) is the Shamir threshold inside each neighbourhood of ``degree + 1`` holders
    (the owner holds one share). Defaults: `graph.graph_parameters` - the complete graph
    with ``tau = t`` up to ``COMPLETE_GRAPH_MAX_CLIENTS`` clients, so any ``n - t``
    dropouts are recovered; beyond, Bell et al.'s degree and threshold for the configured
    security and correctness. An explicit ``degree`` without ``share_threshold`` gets
    ``tau = t`` on the complete graph, else ``ceil(t (degree + 1) / n)`` (at least 2):
    explicit parameters carry no statistical guarantee.
    """

    round_number: int
    num_clients: int
    threshold: int
    vector_length: int
    degree: int = -1
    share_threshold: int = -1

    def __post_init__(self) -> None:
        n = self.num_clients
        if self.round_number < 0:
            raise ValueError(f"round_number must be >= 0, got {self.round_number}")
        if not 1 <= n <= 1 << 16:
            raise ValueError(f"num_clients must be in [1, 65536], got {n}")
        if not 1 <= self.threshold <= n:
            raise ValueError(f"threshold must be in [1, num_clients={n}], got {self.threshold}")
        if self.vector_length < 0:
            raise ValueError(f"vector_length must be >= 0, got {self.vector_length}")
        if self.degree == -1 and self.share_threshold == -1:
            params = graph_parameters(n, self.threshold)
            object.__setattr__(self, "degree", params.degree)
            object.__setattr__(self, "share_threshold", params.share_threshold)
            return
        degree = graph_parameters(n, self.threshold).degree if self.degree == -1 else self.degree
        if not 0 <= degree <= max(n - 1, 0):
            raise ValueError(f"degree must be in [0, {n - 1}], got {degree}")
        if degree < n - 1:
            degree = min(n - 1, degree + degree % 2)  # Harary graphs use even degrees
        object.__setattr__(self, "degree", degree)
        if self.share_threshold == -1:
            if degree >= n - 1:
                tau = self.threshold
            else:
                tau = max(2, math.ceil(self.threshold * (degree + 1) / n))
            object.__setattr__(self, "share_threshold", min(tau, degree + 1))
        if not 1 <= self.share_threshold <= degree + 1:
            raise ValueError(
                f"share_threshold must be in [1, degree+1={degree + 1}], got {self.share_threshold}"
            )
        if self.share_threshold == 1 and n > 1:
            warnings.warn(
                "share_threshold=1 hands every neighbour the secrets in clear", stacklevel=2
            )

    @property
    def complete(self) -> bool:
        """Every client is every other's neighbour (no graph seed is needed)."""
        return self.degree >= self.num_clients - 1

    def to_message(self) -> Message:
        return {
            Key.ROUND: self.round_number,
            Key.NUM_CLIENTS: self.num_clients,
            Key.THRESHOLD: self.threshold,
            Key.VECTOR_LENGTH: self.vector_length,
            Key.DEGREE: self.degree,
            Key.SHARE_THRESHOLD: self.share_threshold,
        }

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> SecAggConfig:
        try:
            return cls(
                round_number=int(msg[Key.ROUND]),
                num_clients=int(msg[Key.NUM_CLIENTS]),
                threshold=int(msg[Key.THRESHOLD]),
                vector_length=int(msg[Key.VECTOR_LENGTH]),
                degree=int(msg[Key.DEGREE]),
                share_threshold=int(msg[Key.SHARE_THRESHOLD]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"malformed configuration message: {err}") from err


def _holders(owner: int, graph: Mapping[int, frozenset[int]]) -> list[int]:
    """Share holders of ``owner``'s secrets, in share-index order (index = position + 1)."""
    return sorted(graph[owner] | {owner})


def _pair_info(a: int, b: int, round_number: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return struct.pack("<QQQ", lo, hi, round_number)


def _share_aad(owner: int, holder: int, round_number: int) -> bytes:
    return SHARE_AAD_LABEL + struct.pack("<QQQ", round_number, owner, holder)


def _masked_digest(masked: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(masked).tobytes()).digest()


def _ids(value: Any) -> list[int]:
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("id list must be a 1-D integer array")
    return [int(v) for v in arr]


def _is_bytes(value: Any, length: int) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == length


def message_nbytes(msg: Any) -> int:
    """Payload size of a message in bytes: array ``nbytes``, byte lengths, 8 per number."""
    if isinstance(msg, np.ndarray):
        return int(msg.nbytes)
    if isinstance(msg, bytes | bytearray):
        return len(msg)
    if isinstance(msg, str):
        return len(msg.encode())
    if isinstance(msg, Mapping):
        return sum(len(str(k).encode()) + message_nbytes(v) for k, v in msg.items())
    if isinstance(msg, list | tuple):
        return sum(message_nbytes(v) for v in msg)
    return 8


# ----------------------------------------------------------------------------- client


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
    ) -> None:
        """``threshold_fraction``: the client's own configured threshold; it refuses a round
        whose threshold is below ``ceil(threshold_fraction * n)``. ``check_graph``: refuse a
        round whose degree and Shamir threshold are not `graph.graph_parameters`' (off only
        for rounds run with explicit parameters, which carry no guarantee)."""
        if not 0 <= client_id < 1 << 32:
            raise ValueError(f"client_id must be in [0, 2^32), got {client_id}")
        if threshold_fraction is not None and not 0 < threshold_fraction <= 1:
            raise ValueError(f"threshold_fraction must be in (0, 1], got {threshold_fraction}")
        self.state = ClientState(client_id=client_id)
        self.threshold_fraction = threshold_fraction
        self.check_graph = check_graph

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
            roster = _ids(msg[Key.IDS])
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
            roster = _ids(msg[Key.IDS])
            key_ids = _ids(msg[Key.KEY_IDS])
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
        holders = _holders(me, st.graph)
        if key_ids != holders or len(pk_c) != len(holders) or len(pk_s) != len(holders):
            raise ProtocolViolation(f"client {me}: server sent keys for the wrong neighbours")
        st.pk_c = {j: bytes(k) for j, k in zip(holders, pk_c, strict=True)}
        st.pk_s = {j: bytes(k) for j, k in zip(holders, pk_s, strict=True)}
        if st.pk_c[me] != st.c_keys.public or st.pk_s[me] != st.s_keys.public:
            raise ProtocolViolation(f"client {me}: server relayed wrong public keys for it")
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
                    info=AEAD_KEY_INFO + _pair_info(me, holder, cfg.round_number),
                )
            except ValueError as err:
                raise ProtocolViolation(f"client {me}: invalid public key of {holder}") from err
            plaintext = struct.pack("<III", me, holder, index) + b_share + sk_share
            aad = _share_aad(me, holder, cfg.round_number)
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

    def _open_share(self, sender: int, blob: Any, round_number: int) -> tuple[bytes, bytes]:
        st = self.state
        assert st.c_keys is not None
        key = crypto.agree(
            st.c_keys.private,
            st.pk_c[sender],
            info=AEAD_KEY_INFO + _pair_info(st.client_id, sender, round_number),
        )
        plain = crypto.aead_decrypt(key, blob, aad=_share_aad(sender, st.client_id, round_number))
        if len(plain) != SHARE_PLAINTEXT_BYTES:
            raise crypto.AuthenticationError("share plaintext has the wrong length")
        owner, holder, index = struct.unpack("<III", plain[:12])
        expected = _holders(sender, st.graph).index(st.client_id) + 1
        if (owner, holder, index) != (sender, st.client_id, expected):
            raise crypto.AuthenticationError("share addressed to another client or index")
        return plain[12 : 12 + SEED_BYTES], plain[12 + SEED_BYTES :]

    def collect_masked_input(self, msg: Mapping[str, Any], *, vector: np.ndarray) -> Message:
        """Stage 3: decrypt neighbours' shares and send the masked uint32 ``vector``.

        ``vector`` is this client's encoded update in Z_{2^32} (see `PayloadLayout.encode`).
        Neighbours whose share ciphertext fails authentication are reported as rejected
        and not masked with (the server then treats them as excluded).
        """
        st = self.state
        cfg = self._check_round(msg)
        if st.stage != STAGE_SHARE_KEYS or st.s_keys is None or st.self_seed is None:
            raise ProtocolViolation(f"client {st.client_id}: masking out of order")
        vec = np.asarray(vector)
        if vec.dtype != np.uint32 or vec.shape != (cfg.vector_length,):
            raise ValueError(
                f"vector must be uint32 of shape ({cfg.vector_length},), "
                f"got {vec.dtype} {vec.shape}"
            )
        me = st.client_id
        try:
            senders = _ids(msg[Key.FROM])
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
        masked = vec.astype(np.uint32, copy=True)
        masked += crypto.prg_uint32(
            st.self_seed, length=n, round_number=cfg.round_number, purpose=SELF_MASK_INFO
        )
        for j in accepted:
            pair_seed = crypto.agree(
                st.s_keys.private, st.pk_s[j], info=PAIR_SEED_INFO + _pair_info(me, j, 0)
            )
            mask = crypto.prg_uint32(
                pair_seed, length=n, round_number=cfg.round_number, purpose=MASK_INFO
            )
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
            Key.DIGEST: _masked_digest(masked),
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
            survivors, dropped = set(_ids(msg[Key.SURVIVORS])), set(_ids(msg[Key.DROPPED]))
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


# ----------------------------------------------------------------------------- server


@dataclass
class ServerState:
    """What the server knows: public keys, ciphertexts, masked vectors - never a secret."""

    config: SecAggConfig
    stage: str = "init"
    invited: tuple[int, ...] = ()
    pk_c: dict[int, bytes] = field(default_factory=dict, repr=False)
    pk_s: dict[int, bytes] = field(default_factory=dict, repr=False)
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
    stage (missing clients have dropped out) and returns the next requests, per client."""

    def __init__(self, config: SecAggConfig, *, seen_digests: set[bytes] | None = None) -> None:
        self.state = ServerState(config=config)
        if seen_digests is not None:
            self.state.seen_digests = seen_digests  # shared across rounds: replay detection

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
            if sparse and not _is_bytes(msg.get(Key.GRAPH_COMMITMENT), KEY_BYTES):
                self._exclude(cid, "missing or malformed graph commitment")
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
        st.u1 = tuple(c for c in candidates if c not in st.excluded)
        if len(st.u1) < st.config.threshold:
            raise self._abort(
                f"{len(st.u1)} valid key advertisements < threshold {st.config.threshold}"
            )

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
            reveal = bytes(raw) if _is_bytes(raw, KEY_BYTES) else b""
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
            holders = _holders(cid, st.graph)
            requests[cid] = {
                Key.ROUND: st.config.round_number,
                Key.IDS: ids,
                Key.KEY_IDS: np.asarray(holders, dtype=np.int64),
                Key.PK_C: [st.pk_c[j] for j in holders],
                Key.PK_S: [st.pk_s[j] for j in holders],
            }
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
                to = _ids(msg.get(Key.TO))
                cts = list(msg.get(Key.CIPHERTEXTS) or [])
            except (TypeError, ValueError):
                self._exclude(cid, "malformed share message")
                continue
            if to != sorted(st.graph[cid]) or len(cts) != len(to):
                self._exclude(cid, "shares not addressed to exactly its neighbours")
                continue
            if not all(_is_bytes(c, _SHARE_CT_BYTES) for c in cts):
                self._exclude(cid, "share ciphertext of the wrong length")
                continue
            if not _is_bytes(msg.get(Key.COMMITMENT), 32):
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
        digests_this_round: dict[bytes, int] = {}
        valid: list[int] = []
        rejections: list[tuple[int, int]] = []
        for cid in sorted(replies):
            msg = replies[cid]
            if not self._valid_header(cid, msg, st.u2):
                continue
            masked = msg.get(Key.MASKED)
            if not isinstance(masked, np.ndarray) or masked.dtype != np.uint32:
                self._exclude(cid, "masked vector is not a uint32 array")
                continue
            if masked.shape != (length,):
                self._exclude(cid, f"masked vector has shape {masked.shape}, expected ({length},)")
                continue
            digest = _masked_digest(masked)
            if msg.get(Key.DIGEST) != digest:
                self._exclude(cid, "masked vector garbled in transit (digest mismatch)")
                continue
            if digest in st.seen_digests or digest in digests_this_round:
                self._exclude(cid, "masked vector replayed")
                continue
            try:
                with_ = set(_ids(msg.get(Key.MASKED_WITH)))
                rejected = set(_ids(msg.get(Key.REJECTED)))
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
        holders = _holders(owner, self.state.graph)
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

        Returns ``(sum in Z_{2^32} as uint32, number of summed clients)``. Raises
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
                b_ids, sk_ids = _ids(msg.get(Key.B_IDS)), _ids(msg.get(Key.SK_IDS))
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
                and all(_is_bytes(s, SEED_BYTES) for s in b_list)
                and all(_is_bytes(s, KEY_BYTES) for s in sk_list)
                and all(cid in _holders(j, st.graph) for j in [*b_ids, *sk_ids])
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
        total = np.zeros(n, dtype=np.uint32)
        for i in st.survivors:
            total += st.masked[i]
        for i in st.survivors:
            commitment = st.commitments[i]

            def check_b(seed: bytes, i: int = i, commitment: bytes = commitment) -> bool:
                return crypto.commit_seed(seed, client_id=i, round_number=cfg.round_number) == (
                    commitment
                )

            seed = self._reconstruct(i, b_shares[i], check_b, "self-mask seed")
            total -= crypto.prg_uint32(
                seed, length=n, round_number=cfg.round_number, purpose=SELF_MASK_INFO
            )
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
                pair_seed = crypto.agree(
                    sk_j, st.pk_s[i], info=PAIR_SEED_INFO + _pair_info(i, j, 0)
                )
                mask = crypto.prg_uint32(
                    pair_seed, length=n, round_number=cfg.round_number, purpose=MASK_INFO
                )
                # survivor i added +mask if i < j, else -mask: undo it
                if i < j:
                    total -= mask
                else:
                    total += mask
        st.stage = "done"
        return total, len(st.survivors)


# ----------------------------------------------------------------------------- driver


@dataclass
class Transcript:
    """Everything the server received and sent in one round, plus byte and time accounting."""

    received: list[tuple[str, int, Message]] = field(default_factory=list, repr=False)
    sent: list[tuple[str, int, Message]] = field(default_factory=list, repr=False)
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    excluded: dict[int, str] = field(default_factory=dict)
    flagged: dict[int, str] = field(default_factory=dict)
    aborted: str | None = None


Tamper = Callable[[str, int, Message], Message | None]


def run_secagg_round(
    updates: Sequence[np.ndarray | Mapping[str, np.ndarray]],
    *,
    threshold: int,
    clip_range: float | Mapping[str, float],
    dropouts: Collection[int] | Mapping[str, Collection[int]] = (),
    ints: Sequence[Mapping[str, np.ndarray]] | None = None,
    round_number: int = 1,
    degree: int = -1,
    share_threshold: int = -1,
    tamper: Tamper | None = None,
    seen_digests: set[bytes] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray | dict[str, np.ndarray], Transcript]:
    """Run one in-process SecAgg+ round over ``updates`` (client ``i`` has id ``i``).

    Returns the **sum** of the surviving clients' updates (float64, within quantization
    error; an array, or a dict when updates or ``ints`` are dicts - ``ints`` sum exactly)
    and the transcript. ``dropouts`` maps a stage name (`constants.STAGES`) to the clients
    that stop answering at that stage; a plain collection means they drop after sharing
    keys (before sending their masked input), the case SecAgg+ recovers from. ``tamper``
    may rewrite (or drop, by returning None) any client-to-server message, for tests.
    Raises SecAggAbort (with ``.transcript``) when fewer than ``threshold`` remain.
    """
    n = len(updates)
    if n < 1:
        raise ValueError("updates must hold at least one client")
    drop: Mapping[str, Collection[int]] = (
        dropouts if isinstance(dropouts, Mapping) else {STAGE_COLLECT_MASKED: dropouts}
    )
    unknown = set(drop) - {
        STAGE_ADVERTISE_KEYS,
        STAGE_REVEAL_SEED,
        STAGE_SHARE_KEYS,
        STAGE_COLLECT_MASKED,
        STAGE_UNMASK,
    }
    if unknown:
        raise ValueError(f"dropouts has unknown stages {sorted(unknown)}")
    as_dict = isinstance(updates[0], Mapping) or ints is not None
    floats = [u if isinstance(u, Mapping) else {"update": np.asarray(u)} for u in updates]
    int_parts = list(ints) if ints is not None else [{} for _ in range(n)]
    layout = PayloadLayout.from_arrays(floats[0], int_parts[0], clip=clip_range, num_clients=n)
    rng = rng if rng is not None else np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    config = SecAggConfig(
        round_number=round_number,
        num_clients=n,
        threshold=threshold,
        vector_length=layout.size,
        degree=degree,
        share_threshold=share_threshold,
    )
    transcript = Transcript()
    server = SecAggPlusServer(config, seen_digests=seen_digests)
    explicit = degree != -1 or share_threshold != -1
    clients = {i: SecAggPlusClient(i, check_graph=not explicit) for i in range(n)}
    gone: set[int] = set()

    def exchange(
        stage: str, requests: Mapping[int, Message], act: Callable[..., Message]
    ) -> dict[int, Message]:
        gone.update(drop.get(stage, ()))
        replies: dict[int, Message] = {}
        for cid, req in requests.items():
            transcript.sent.append((stage, cid, req))
            transcript.bytes_down[cid] = transcript.bytes_down.get(cid, 0) + message_nbytes(req)
            if cid in gone:
                continue
            start = time.perf_counter()
            try:
                reply: Message | None = act(cid, req)
            except ProtocolViolation as err:
                log.warning("secagg+ client %d refused %s: %s", cid, stage, err)
                gone.add(cid)
                continue
            finally:
                transcript.client_seconds[cid] = (
                    transcript.client_seconds.get(cid, 0.0) + time.perf_counter() - start
                )
            if tamper is not None and reply is not None:
                reply = tamper(stage, cid, reply)
            if reply is None:
                continue
            transcript.received.append((stage, cid, reply))
            transcript.bytes_up[cid] = transcript.bytes_up.get(cid, 0) + message_nbytes(reply)
            replies[cid] = reply
        return replies

    def timed(fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            transcript.server_seconds += time.perf_counter() - start

    def encode(cid: int) -> np.ndarray:
        return layout.encode(floats[cid], int_parts[cid], rng=rng)

    try:
        req = timed(server.advertise_keys, list(range(n)))
        rep = exchange(STAGE_ADVERTISE_KEYS, req, lambda c, m: clients[c].advertise_keys(m))
        if not config.complete:
            req = timed(server.reveal_seed, rep)
            rep = exchange(STAGE_REVEAL_SEED, req, lambda c, m: clients[c].reveal_seed(m))
        req = timed(server.share_keys, rep)
        rep = exchange(STAGE_SHARE_KEYS, req, lambda c, m: clients[c].share_keys(m))
        req = timed(server.collect_masked, rep)
        rep = exchange(
            STAGE_COLLECT_MASKED,
            req,
            lambda c, m: clients[c].collect_masked_input(m, vector=encode(c)),
        )
        req = timed(server.unmask, rep)
        rep = exchange(STAGE_UNMASK, req, lambda c, m: clients[c].unmask(m))
        total, summed = timed(server.aggregate, rep)
    except SecAggAbort as err:
        transcript.aborted = str(err)
        err.transcript = transcript
        raise
    finally:
        st = server.state
        transcript.excluded, transcript.flagged = dict(st.excluded), dict(st.flagged)
        transcript.survivors, transcript.dropped = st.survivors, st.dropped
    float_sums, int_sums = layout.decode_sum(total, num_summed=summed)
    if not as_dict:
        return float_sums["update"], transcript
    return {**float_sums, **int_sums}, transcript
