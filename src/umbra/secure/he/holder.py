"""Client side of threshold CKKS: one key holder's protocol steps, without Flower.

Each function takes the holder's configuration, its mutable state (a dict of ints, bytes
and lists, persisted by the client mod in ``context.state`` between messages) and the
server's request, and returns the reply. The secret material in the state (X25519 key,
commit nonce, own Shamir evaluation, and after setup only the Shamir share ``sigma_j`` of
the collective secret) never appears in a reply.

Setup, once per run (Mouchet et al., PoPETs 2021, with t-out-of-N Shamir sharing):

1. `advertise`: a fresh X25519 key and ``H(nonce)`` (commit), signed with the identity key
   over (run, stage, client, payload);
2. `reveal`: verify every peer's signed advertisement against the roster; reveal the nonce;
3. `keygen`: check every revealed nonce against its commitment (and our own is there);
   ``seed = H(sorted nonces)`` (the server cannot bias it); ``a`` from the seed;
   ``s_i, b_i`` (`threshold.keygen_share`); Shamir shares of ``s_i`` sent to each peer
   under X25519 + HKDF + ChaCha20-Poly1305 bound to (run, sender, recipient); ``b_i`` signed;
4. `finish`: verify every ``b_i`` signature, ``b = sum b_i``; ``sigma_j = sum_i f_i(x_j)``.

Before the first encryption, `check_key_acks`: every holder signed the same collective key.
Every round: `encrypt_update` (public-key encryption under ``(b, a)``) and
`decryption_share` (flooded partial decryption; refused for a set smaller than t, a wrong
ciphertext count, a second request in a round, or past the run's decryption budget).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from umbra.errors import UmbraError
from umbra.secure import identity
from umbra.secure.he import threshold as th
from umbra.secure.he.ckks import update_digest
from umbra.secure.he.packing import to_slot_chunks
from umbra.secure.secagg import crypto
from umbra.secure.secagg.workflow import round_threshold

__all__ = [
    "STAGE_ADVERTISE",
    "STAGE_COLLECT",
    "STAGE_DECRYPT",
    "STAGE_FINISH",
    "STAGE_KEYGEN",
    "STAGE_REVEAL",
    "DecryptionRefused",
    "HolderConfig",
    "SetupError",
    "advertise",
    "check_key_acks",
    "decryption_share",
    "encrypt_update",
    "finish",
    "keygen",
    "make_plan",
    "reveal",
]

STAGE_ADVERTISE = "advertise"
STAGE_REVEAL = "reveal"
STAGE_KEYGEN = "keygen"
STAGE_FINISH = "finish"
STAGE_COLLECT = "collect"
STAGE_DECRYPT = "decrypt"
_SHARE_INFO = b"umbra/tckks/v1/share"


class SetupError(UmbraError, ValueError):
    """A key-setup message is inconsistent (commitment, peer set, share), naming the client."""


class DecryptionRefused(UmbraError, ValueError):
    """A holder refuses a decryption request (set too small, wrong size, repeated, budget)."""


@dataclass(frozen=True)
class HolderConfig:
    """What a holder knows from its own configuration (never from the server).

    ``identity_key``: private identity key (`identity.load_private_key`); ``roster``:
    client id -> public identity key; ``threshold``: the fraction of holders needed
    (``secure.threshold``); ``rounds``: the run's rounds (sizes the decryption budget tau);
    ``clip``: |value| bound per client.
    """

    client_id: int
    identity_key: bytes
    roster: Mapping[int, bytes]
    threshold: float
    rounds: int
    clip: float
    params: th.ThresholdParams = field(default_factory=th.ThresholdParams)

    def __repr__(self) -> str:
        return f"HolderConfig(client_id={self.client_id}, rounds={self.rounds})"

    def __reduce__(self) -> Any:
        raise TypeError("HolderConfig holds an identity key and cannot be pickled")


def make_plan(
    params: th.ThresholdParams, *, holders: int, threshold: float, rounds: int, length: int,
    clip: float,
) -> th.ThresholdPlan:  # fmt: skip
    """The run's `ThresholdPlan`: t = ceil(threshold * holders), tau = rounds x
    ciphertexts per round (``length`` reals), data primes fitted to the value range
    (`threshold.ThresholdPlan.fit`)."""
    per = params.values_per_ciphertext
    return th.ThresholdPlan.fit(
        params,
        holders=holders,
        threshold=round_threshold(threshold, holders),
        max_decryptions=max(1, rounds) * max(1, -(-length // per)),
        clip=clip,
    )


def _sign(cfg: HolderConfig, run_id: int, stage: str, payload: bytes) -> bytes:
    return identity.sign(
        cfg.identity_key, run_id=run_id, stage=stage, client_id=cfg.client_id, payload=payload
    )


def _pair_info(run_id: int, a: int, b: int) -> bytes:
    return _SHARE_INFO + struct.pack("<QQQ", run_id & (2**64 - 1), min(a, b), max(a, b))


def _share_aad(run_id: int, sender: int, recipient: int) -> bytes:
    return _SHARE_INFO + b"/aad" + struct.pack("<QQQ", run_id & (2**64 - 1), sender, recipient)


def _commit(nonce: bytes) -> bytes:
    return hashlib.sha256(b"umbra/tckks/v1/commit" + nonce).digest()


def advertise(cfg: HolderConfig, state: dict[str, Any], *, run_id: int) -> dict[str, Any]:
    """Stage 1: a signed fresh X25519 key and a commitment to a fresh nonce."""
    keys = crypto.generate_keypair()
    nonce = os.urandom(32)
    state.clear()
    state.update(
        run=run_id, x25519=crypto.private_bytes(keys.private), nonce=nonce, stage=STAGE_ADVERTISE
    )
    commit = _commit(nonce)
    return {
        "client_id": cfg.client_id,
        "pk": keys.public,
        "commit": commit,
        "sig": _sign(cfg, run_id, STAGE_ADVERTISE, keys.public + commit),
    }


def verify_advertisements(
    roster: Mapping[int, bytes], request: Mapping[str, Any], *, run_id: int
) -> tuple[list[int], list[bytes], list[bytes]]:
    """(ids, X25519 keys, commits) of a forwarded advertisement list; IdentityError
    naming the first client whose signature fails or who is not in the roster."""
    ids = [int(i) for i in np.asarray(request["ids"]).tolist()]
    pks = [bytes(b) for b in request["pks"]]
    commits = [bytes(b) for b in request["commits"]]
    sigs = list(request["sigs"])
    if not (len(ids) == len(pks) == len(commits) == len(sigs)) or len(set(ids)) != len(ids):
        raise SetupError("advertisement list is inconsistent")
    for i, pk, c, sig in zip(ids, pks, commits, sigs, strict=True):
        identity.verify(roster, sig, run_id=run_id, stage=STAGE_ADVERTISE, client_id=i,
                        payload=pk + c)  # fmt: skip
    return ids, pks, commits


def reveal(
    cfg: HolderConfig, state: dict[str, Any], request: Mapping[str, Any], *, run_id: int
) -> dict[str, Any]:
    """Stage 2: verify the peers' signed advertisements, then reveal our nonce."""
    _expect(state, run_id, STAGE_ADVERTISE)
    ids, pks, commits = verify_advertisements(cfg.roster, request, run_id=run_id)
    me = ids.index(cfg.client_id) if cfg.client_id in ids else -1
    own_pk = crypto.public_from_private_bytes(bytes(state["x25519"]))
    if me < 0 or pks[me] != own_pk or commits[me] != _commit(bytes(state["nonce"])):
        raise SetupError(f"client {cfg.client_id}: our own advertisement is missing or altered")
    state.update(peers=ids, peer_pks=pks, commits=commits, stage=STAGE_REVEAL)
    return {"client_id": cfg.client_id, "nonce": bytes(state["nonce"])}


def keygen(
    cfg: HolderConfig, state: dict[str, Any], request: Mapping[str, Any], *, run_id: int
) -> dict[str, Any]:
    """Stage 3: common seed from all revealed nonces, ``b_i``, encrypted Shamir shares."""
    _expect(state, run_id, STAGE_REVEAL)
    peers: list[int] = [int(i) for i in state["peers"]]
    ids = [int(i) for i in np.asarray(request["ids"]).tolist()]
    nonces = [bytes(b) for b in request["nonces"]]
    if ids != peers or len(nonces) != len(ids):
        raise SetupError(f"client {cfg.client_id}: reveals do not cover the advertised clients")
    for i, nonce, commit in zip(ids, nonces, state["commits"], strict=True):
        if _commit(nonce) != bytes(commit):
            raise SetupError(f"client {i}: revealed nonce does not match its commitment")
    if bytes(state["nonce"]) not in nonces:
        raise SetupError(f"client {cfg.client_id}: our nonce is missing from the seed")
    seed = hashlib.sha256(b"umbra/tckks/v1/seed" + b"".join(sorted(nonces))).digest()
    length = int(request["length"])
    plan = make_plan(cfg.params, holders=len(ids), threshold=cfg.threshold, rounds=cfg.rounds,
                     length=length, clip=cfg.clip)  # fmt: skip
    ring = th.Ring.of(plan.params)
    a = th.common_poly(ring, seed)
    secret, b = th.keygen_share(ring, a)
    k = len(ring.data_primes)
    shares = th.shamir_shares(
        secret[:k], threshold=plan.threshold, xs=[i + 1 for i in ids], primes=ring.data_primes
    )
    del secret
    private = X25519PrivateKey.from_private_bytes(bytes(state["x25519"]))
    blobs = []
    for j, pk in zip(ids, state["peer_pks"], strict=True):
        if j == cfg.client_id:
            blobs.append(b"")
            continue
        key = crypto.agree(private, bytes(pk), info=_pair_info(run_id, cfg.client_id, j))
        blobs.append(
            crypto.aead_encrypt(key, th.pack_residues(shares[j + 1], ring.data_primes),
                                aad=_share_aad(run_id, cfg.client_id, j))
        )  # fmt: skip
    b_blob = th.pack_residues(b, ring.key_primes)
    state.update(
        seed=seed,
        own=th.pack_residues(shares[cfg.client_id + 1], ring.data_primes),
        length=length,
        n=len(ids),
        t=plan.threshold,
        stage=STAGE_KEYGEN,
    )
    return {
        "client_id": cfg.client_id,
        "b": b_blob,
        "to": np.asarray(ids, dtype=np.int64),
        "blobs": blobs,
        "sig": _sign(cfg, run_id, STAGE_KEYGEN, seed + b_blob),
    }


def finish(
    cfg: HolderConfig, state: dict[str, Any], request: Mapping[str, Any], *, run_id: int
) -> dict[str, Any]:
    """Stage 4: verify each holder's signed ``b_i``, sum the collective key, open the
    shares addressed to us and keep ``sigma_j`` only."""
    _expect(state, run_id, STAGE_KEYGEN)
    ring = th.Ring.of(holder_plan(cfg, state).params)
    ids = [int(i) for i in np.asarray(request["ids"]).tolist()]
    peers = [int(i) for i in state["peers"]]
    t = int(state["t"])
    if cfg.client_id not in ids or not set(ids) <= set(peers) or len(set(ids)) != len(ids):
        raise SetupError(f"client {cfg.client_id}: key-generation set is not a set of peers")
    if len(ids) < t:
        raise SetupError(f"only {len(ids)} clients completed key generation < threshold {t}")
    seed = bytes(state["seed"])
    private = X25519PrivateKey.from_private_bytes(bytes(state["x25519"]))
    pk_of = dict(zip(peers, state["peer_pks"], strict=True))
    n = ring.n
    bs, evaluations = [], []
    for i, b_blob, sig, blob in zip(ids, request["bs"], request["sigs"], request["blobs"],
                                    strict=True):  # fmt: skip
        identity.verify(cfg.roster, sig, run_id=run_id, stage=STAGE_KEYGEN, client_id=i,
                        payload=seed + bytes(b_blob))  # fmt: skip
        try:
            bs.append(th.unpack_residues(bytes(b_blob), ring.key_primes, n))
        except ValueError as err:
            raise SetupError(f"client {i}: garbled public key share ({err})") from err
        if i == cfg.client_id:
            raw = bytes(state["own"])
        else:
            key = crypto.agree(private, bytes(pk_of[i]), info=_pair_info(run_id, cfg.client_id, i))
            try:
                raw = crypto.aead_decrypt(
                    key, bytes(blob), aad=_share_aad(run_id, i, cfg.client_id)
                )
            except crypto.AuthenticationError as err:
                raise SetupError(f"client {i}: its secret-key share does not authenticate") from err
        try:
            share = th.unpack_residues(raw, ring.data_primes, n)
        except ValueError as err:
            raise SetupError(f"client {i}: malformed secret-key share ({err})") from err
        evaluations.append(share)
    b = th.add_polys(bs, ring.key_primes)
    sigma = th.add_polys(evaluations, ring.data_primes)
    b_blob = th.pack_residues(b, ring.key_primes)
    for key_name in ("x25519", "nonce", "own", "peer_pks", "commits"):
        state.pop(key_name, None)
    state.update(
        holders=ids, b=b_blob, sigma=sigma.astype("<u8").tobytes(), used=0, last=-1,
        stage="ready",
    )  # fmt: skip
    return {"client_id": cfg.client_id, "sig": _sign(cfg, run_id, STAGE_FINISH, seed + b_blob)}


def _expect(state: Mapping[str, Any], run_id: int, stage: str) -> None:
    if state.get("run") != run_id or state.get("stage") != stage:
        raise SetupError(
            f"key setup out of order: expected stage after {stage!r} of run {run_id}, "
            f"have {state.get('stage')!r}"
        )


def holder_plan(cfg: HolderConfig, state: Mapping[str, Any]) -> th.ThresholdPlan:
    """The plan fixed at key generation, from our own configuration and the number of
    clients that took part in it."""
    return make_plan(cfg.params, holders=int(state["n"]), threshold=cfg.threshold,
                     rounds=cfg.rounds, length=int(state["length"]), clip=cfg.clip)  # fmt: skip


def public_key(cfg: HolderConfig, state: Mapping[str, Any]) -> Any:
    """The collective SEAL public key ``(b, a)`` (no secret)."""
    ring = th.Ring.of(holder_plan(cfg, state).params)
    b = th.unpack_residues(bytes(state["b"]), ring.key_primes, ring.n)
    return ring.public_key(b, th.common_poly(ring, bytes(state["seed"])))


def check_key_acks(
    cfg: HolderConfig,
    state: dict[str, Any],
    request: Mapping[str, Any],
    *,
    run_id: int,
) -> None:
    """Before the first encryption: at least t key holders signed the same (seed,
    collective key) as ours, so a server that handed holders different key sets (to get a
    key whose secret fewer holders share, or its own) is detected. Checked once,
    remembered in the state."""
    if state.get("acked"):
        return
    if state.get("stage") != "ready":
        raise SetupError(f"client {cfg.client_id}: no collective key yet")
    ids = [int(i) for i in np.asarray(request.get("ack_ids", [])).tolist()]
    sigs = list(request.get("acks", []))
    holders = {int(i) for i in state["holders"]}
    t = int(state["t"])
    if len(set(ids)) != len(ids) or not set(ids) <= holders or len(ids) < t:
        raise SetupError(
            f"client {cfg.client_id}: {len(set(ids) & holders)} key holders confirmed the "
            f"collective key < threshold {t}"
        )
    if len(sigs) != len(ids):
        raise SetupError(f"client {cfg.client_id}: key confirmations are inconsistent")
    payload = bytes(state["seed"]) + bytes(state["b"])
    for i, sig in zip(ids, sigs, strict=True):
        identity.verify(cfg.roster, sig, run_id=run_id, stage=STAGE_FINISH, client_id=i,
                        payload=payload)  # fmt: skip
    state["acked"] = True


def encrypt_update(
    cfg: HolderConfig, state: Mapping[str, Any], vector: np.ndarray, *, round_number: int
) -> dict[str, Any]:
    """Encrypt a contribution vector (values in ``[-clip, clip]``) under the collective key
    (after `check_key_acks`)."""
    if state.get("stage") != "ready" or not state.get("acked"):
        raise SetupError(f"client {cfg.client_id}: no confirmed collective key yet")
    plan = holder_plan(cfg, state)
    x = np.asarray(vector, dtype=np.float64).ravel()
    if x.size != int(state["length"]):
        raise ValueError(
            f"client {cfg.client_id}: update has {x.size} values, the run's key was set up "
            f"for {int(state['length'])}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"client {cfg.client_id}: update has non-finite values (training diverged)"
        )
    if x.size and not float(np.max(np.abs(x))) <= cfg.clip:
        raise ValueError(f"values must lie in [-{cfg.clip:g}, {cfg.clip:g}]")
    ring = th.Ring.of(plan.params)
    pk = public_key(cfg, state)
    chunks = to_slot_chunks(x, slots=ring.n // 2, complex_slots=True)
    cts = [
        th.pack_ciphertext(ring, th.encrypt(ring, pk, row, scale=plan.scale),
                           c0_drop_bits=plan.c0_drop_bits)
        for row in chunks
    ]  # fmt: skip
    return {
        "round": round_number,
        "client_id": cfg.client_id,
        "ciphertexts": cts,
        "digest": update_digest(cts, client_id=cfg.client_id, round_number=round_number),
    }


def decryption_share(
    cfg: HolderConfig, state: dict[str, Any], request: Mapping[str, Any], *, round_number: int
) -> dict[str, Any]:
    """Flooded partial decryptions ``h_j = c1 lambda_j^T sigma_j + e_j`` of the round's
    summed ciphertexts, rounded to ``2^share_drop_bits`` (post-processing).

    Refuses (DecryptionRefused) a set ``T`` smaller than t or without us or with
    non-holders, a ciphertext count that is not the round's, a second request in the same
    round, or a request past the decryption budget tau of the flooding bound.
    """
    me = cfg.client_id
    if state.get("stage") != "ready":
        raise DecryptionRefused(f"client {me}: no key share")
    plan = holder_plan(cfg, state)
    ring = th.Ring.of(plan.params)
    subset = [int(i) for i in np.asarray(request["T"]).tolist()]
    holders = {int(i) for i in state["holders"]}
    if len(set(subset)) != len(subset) or len(subset) < plan.threshold:
        raise DecryptionRefused(
            f"client {me}: decryption set of {len(set(subset))} < threshold {plan.threshold}"
        )
    if me not in subset or not set(subset) <= holders:
        raise DecryptionRefused(f"client {me}: decryption set is not a set of key holders")
    if round_number <= int(state["last"]):
        raise DecryptionRefused(f"client {me}: second decryption request in round {round_number}")
    blobs = list(request["c1"])
    expected = -(-int(state["length"]) // cfg.params.values_per_ciphertext)
    if len(blobs) != expected:
        raise DecryptionRefused(
            f"client {me}: {len(blobs)} ciphertexts to decrypt, the round has {expected}"
        )
    if int(state["used"]) + len(blobs) > plan.max_decryptions:
        raise DecryptionRefused(
            f"client {me}: decryption budget of {plan.max_decryptions} ciphertexts spent "
            "(the flooding noise is sized for it)"
        )
    k = len(ring.data_primes)
    sigma = np.frombuffer(bytes(state["sigma"]), dtype="<u8").astype(np.uint64).reshape(k, ring.n)
    xs = [i + 1 for i in subset]
    lam = [th.lagrange_at_zero(xs, me + 1, q) for q in ring.data_primes]
    # consume the budget before any share leaves
    state.update(used=int(state["used"]) + len(blobs), last=round_number)
    try:
        c1 = th.unpack_residue_blobs([bytes(b) for b in blobs], ring.data_primes, ring.n)
    except (ValueError, TypeError) as err:
        raise DecryptionRefused(f"client {me}: a ciphertext is garbled ({err})") from err
    noise = th.flood_noise(len(blobs) * ring.n, plan.flood_sigma).reshape(len(blobs), ring.n)
    h = th.partial_decrypt_many(ring, c1, sigma, lagrange=lam, noise=noise)
    shares = th.pack_shares(ring, h, drop_bits=plan.share_drop_bits)
    return {"round": round_number, "client_id": me, "shares": shares}
