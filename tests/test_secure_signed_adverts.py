"""Signed SecAgg+ advertisements (`umbra.secure.secagg.advert`), on the in-process round
of `secagg_sim`: with identities the round still gives the exact sum; a server that
substitutes one client's advertised key, or replays an advertisement from another round,
is refused by every honest client (`ProtocolViolation` naming the client), and the round
aborts before any share is sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg_sim import RoundAborted, run_secagg_round
from umbra.deploy.pki import generate_supernode_key
from umbra.secure import identity
from umbra.secure.secagg import crypto
from umbra.secure.secagg.advert import NodeIdentity
from umbra.secure.secagg.constants import STAGE_ADVERTISE_KEYS, STAGE_SHARE_KEYS, Key
from umbra.secure.secagg.messages import Message

N = 5
RUN = 42


def _identities(kind: str, tmp_path: Any) -> tuple[dict[int, NodeIdentity], dict[int, bytes]]:
    """Client i's identity, as partition 10 + i (protocol ids and partition ids differ)."""
    if kind == "ed25519":
        private, roster = identity.generate_identities([10 + i for i in range(N)])
    else:
        keys = {10 + i: generate_supernode_key(tmp_path, f"n{i}") for i in range(N)}
        private = {p: k.private_key.read_bytes() for p, k in keys.items()}
        roster = {p: k.public_key.read_bytes().strip() for p, k in keys.items()}
    ids = {
        i: NodeIdentity(partition_id=10 + i, private_key=private[10 + i], roster=roster, run_id=RUN)
        for i in range(N)
    }
    return ids, roster


def _updates(seed: int) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    floats = [{"w": rng.uniform(-1, 1, size=40)} for _ in range(N)]
    ints = [{"count": rng.integers(0, 1000, size=3, dtype=np.int64)} for _ in range(N)]
    return floats, ints


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p384"])
def test_signed_round_gives_the_exact_sum(kind: str, tmp_path: Any) -> None:
    ids, roster = _identities(kind, tmp_path)
    floats, ints = _updates(1)
    total, tr = run_secagg_round(floats, ints=ints, threshold=3, clip_range=2.0, identities=ids,
                                 server_roster=roster, run_id=RUN)  # fmt: skip
    assert isinstance(total, dict) and not tr.refused and not tr.excluded
    np.testing.assert_array_equal(total["count"], np.sum([i["count"] for i in ints], axis=0))
    np.testing.assert_allclose(total["w"], np.sum([f["w"] for f in floats], axis=0), atol=1e-6)
    adverts = [m for stage, _, m in tr.received if stage == STAGE_ADVERTISE_KEYS]
    assert sorted(m[Key.IDENTITY] for m in adverts) == [10 + i for i in range(N)]
    relayed = [m for stage, _, m in tr.sent if stage == STAGE_SHARE_KEYS]
    assert all(len(m[Key.SIGNATURES]) == len(m[Key.KEY_IDS]) for m in relayed)


def _substitute_pk_c(victim: int) -> Any:
    """The server swaps the victim's advertised share-encryption key for its own."""

    def tamper(stage: str, cid: int, msg: Message) -> Message:
        if stage == STAGE_ADVERTISE_KEYS and cid == victim:
            msg = dict(msg)
            msg[Key.PK_C] = crypto.generate_keypair().public
        return msg

    return tamper


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p384"])
def test_a_substituted_key_is_refused_by_every_honest_client(kind: str, tmp_path: Any) -> None:
    ids, _ = _identities(kind, tmp_path)
    floats, _ = _updates(2)
    # a malicious server: no roster of its own, relays the substituted key
    with pytest.raises(RoundAborted) as err:
        run_secagg_round(floats, threshold=3, clip_range=2.0, identities=ids,
                         tamper=_substitute_pk_c(2))  # fmt: skip
    tr = err.value.transcript
    assert set(tr.refused) == set(range(N))  # nobody shared a secret
    for cid in (0, 1, 3, 4):
        assert "advertisement of client 2 (partition 12) refused" in tr.refused[cid]
        assert "client 12: bad signature" in tr.refused[cid]
    assert "wrong public keys for it" in tr.refused[2]  # the victim sees its own key altered
    assert not [m for stage, _, m in tr.received if stage == STAGE_SHARE_KEYS]
    # without identities only the victim notices: the others encrypt their shares for
    # client 2 under the server's key (the man in the middle the signatures stop)
    _, tr = run_secagg_round(floats, threshold=3, clip_range=2.0, tamper=_substitute_pk_c(2))
    assert set(tr.refused) == {2}
    shared = {c for stage, c, _ in tr.received if stage == STAGE_SHARE_KEYS}
    assert shared == {0, 1, 3, 4}


def test_an_honest_server_excludes_a_bad_signature_and_finishes(tmp_path: Any) -> None:
    ids, roster = _identities("ed25519", tmp_path)
    floats, ints = _updates(3)
    total, tr = run_secagg_round(floats, ints=ints, threshold=3, clip_range=2.0, identities=ids,
                                 server_roster=roster, run_id=RUN,
                                 tamper=_substitute_pk_c(2))  # fmt: skip
    assert "client 12: bad signature" in tr.excluded[2] and not tr.refused
    keep = [0, 1, 3, 4]
    assert isinstance(total, dict)
    np.testing.assert_array_equal(total["count"], np.sum([ints[i]["count"] for i in keep], axis=0))


def test_an_advertisement_replayed_from_another_round_is_refused(tmp_path: Any) -> None:
    ids, _ = _identities("ed25519", tmp_path)
    floats, _ = _updates(4)
    _, first = run_secagg_round(floats, threshold=3, clip_range=2.0, identities=ids,
                                round_number=1)  # fmt: skip
    old = next(m for s, c, m in first.received if s == STAGE_ADVERTISE_KEYS and c == 1)

    def replay(stage: str, cid: int, msg: Message) -> Message:
        if stage == STAGE_ADVERTISE_KEYS and cid == 1:  # round 1's signed keys, relabelled
            return {**old, Key.ROUND: msg[Key.ROUND]}
        return msg

    with pytest.raises(RoundAborted) as err:
        run_secagg_round(floats, threshold=3, clip_range=2.0, identities=ids, round_number=2,
                         tamper=replay)  # fmt: skip
    refused = err.value.transcript.refused
    assert all("advertisement of client 1 (partition 11) refused" in refused[c] for c in (0, 2, 3))


def test_identities_refuse_to_be_pickled_and_hide_the_key() -> None:
    import pickle

    private, roster = identity.generate_identities([0])
    ident = NodeIdentity(partition_id=0, private_key=private[0], roster=roster, run_id=1)
    assert private[0].hex() not in repr(ident) and repr(private[0]) not in repr(ident)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ident)
