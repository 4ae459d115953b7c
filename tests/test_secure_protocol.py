"""SecAgg+ protocol: correctness vs numpy, dropouts, aborts, privacy of the transcript,
and malformed-message handling (Bell et al., CCS 2020)."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg_sim import run_secagg_round
from umbra.secure.secagg import (
    PayloadLayout,
    ProtocolViolation,
    QuantizationSpec,
    SecAggAbort,
    SecAggConfig,
    SecAggPlusClient,
    SecAggPlusServer,
    crypto,
)
from umbra.secure.secagg.constants import Key

CLIP = 2.0


def _updates(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.5, 1.5, size=size).astype(np.float32) for _ in range(n)]


def _reference(updates: list[np.ndarray], ids: tuple[int, ...]) -> np.ndarray:
    return np.sum([updates[i].astype(np.float64) for i in ids], axis=0)


def _tolerance(n: int, summed: int) -> float:
    return summed / QuantizationSpec(clip=CLIP, num_clients=n).scale + 1e-12


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_aggregate_equals_plaintext_sum_under_dropouts(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 7), label="n")
    t = data.draw(st.integers(2, n), label="t")
    size = data.draw(st.integers(1, 40), label="size")
    dropped = data.draw(st.sets(st.integers(0, n - 1), max_size=n - t), label="dropped")
    stages = data.draw(
        st.lists(
            st.sampled_from(["advertise_keys", "share_keys", "collect_masked", "unmask"]),
            min_size=len(dropped),
            max_size=len(dropped),
        ),
        label="stages",
    )
    plan: dict[str, set[int]] = {}
    for cid, stage in zip(sorted(dropped), stages, strict=True):
        plan.setdefault(stage, set()).add(cid)
    updates = _updates(n, size, seed=size)
    agg, tr = run_secagg_round(updates, threshold=t, clip_range=CLIP, dropouts=plan)
    # clients dropping at unmask sent their masked input: they are in the sum
    gone_before_masking = dropped - plan.get("unmask", set())
    expected_survivors = tuple(i for i in range(n) if i not in gone_before_masking)
    assert tr.survivors == expected_survivors
    assert isinstance(agg, np.ndarray)
    ref = _reference(updates, tr.survivors)
    assert np.abs(agg - ref).max() <= _tolerance(n, len(tr.survivors))
    assert not tr.excluded and not tr.flagged


def test_sparse_graph_masks_with_its_neighbours_and_recovers_dropouts() -> None:
    n, t, degree = 24, 12, 10
    updates = _updates(n, 64, seed=3)
    agg, tr = run_secagg_round(
        updates, threshold=t, clip_range=CLIP, dropouts={3, 9, 17}, degree=degree
    )
    ref = _reference(updates, tr.survivors)
    assert np.abs(agg - ref).max() <= _tolerance(n, len(tr.survivors))
    masked_with = {
        c: set(m[Key.MASKED_WITH].tolist()) for s, c, m in tr.received if s == "collect_masked"
    }
    assert [s for s, c, _ in tr.sent if c == 0] == [
        "advertise_keys",
        "reveal_seed",
        "share_keys",
        "collect_masked",
        "unmask",
    ]
    assert all(len(m) <= degree for m in masked_with.values())
    # symmetric: i masks with j iff j masks with i (among survivors)
    for i, mi in masked_with.items():
        for j in mi:
            if j in masked_with:
                assert i in masked_with[j]


def test_multiple_arrays_and_exact_integer_counts() -> None:
    rng = np.random.default_rng(5)
    n = 5
    floats = [
        {"enc.image": rng.normal(0, 0.2, (4, 3)), "head": rng.normal(0, 0.2, 7)} for _ in range(n)
    ]
    ints = [{"count.image": rng.integers(0, 500, 3)} for _ in range(n)]
    agg, tr = run_secagg_round(floats, ints=ints, threshold=3, clip_range=1.0, dropouts={1})
    assert isinstance(agg, dict)
    keep = tr.survivors
    np.testing.assert_allclose(
        agg["enc.image"], sum(floats[i]["enc.image"] for i in keep), atol=1e-6
    )
    np.testing.assert_allclose(agg["head"], sum(floats[i]["head"] for i in keep), atol=1e-6)
    np.testing.assert_array_equal(agg["count.image"], sum(ints[i]["count.image"] for i in keep))


def test_the_sixteen_bit_ring_sums_floats_and_counts_past_its_width() -> None:
    """Z_{2^16}: masked vectors are uint16 (half the bytes), the float sums hold within the
    coarser step, and counts beyond 2^16 still sum exactly (carried as base-2^d digits)."""
    rng = np.random.default_rng(6)
    n = 6
    floats = [{"enc": rng.normal(0, 0.3, (5, 4)), "head": rng.normal(0, 0.3, 9)} for _ in range(n)]
    ints = [{"counts": rng.integers(0, 700_000, 4)} for _ in range(n)]
    agg, tr = run_secagg_round(floats, ints=ints, threshold=4, clip_range=1.0, dropouts={2},
                               ring_bits=16)  # fmt: skip
    assert isinstance(agg, dict)
    keep = tr.survivors
    assert 2 not in keep
    masked = [m[Key.MASKED] for s, _, m in tr.received if s == "collect_masked"]
    assert masked and all(v.dtype == np.uint16 for v in masked)
    step = 1 / QuantizationSpec(clip=1.0, num_clients=n, bits=16).scale
    for k in ("enc", "head"):
        ref = sum(floats[i][k] for i in keep)
        assert np.abs(agg[k] - ref).max() <= len(keep) * step
    assert int(sum(ints[i]["counts"] for i in keep).max()) > 1 << 16
    np.testing.assert_array_equal(agg["counts"], sum(ints[i]["counts"] for i in keep))
    layout16 = PayloadLayout.from_arrays({"a": np.zeros(10)}, {"c": np.zeros(3)}, clip=1.0,
                                         num_clients=n, bits=16)  # fmt: skip
    layout32 = PayloadLayout.from_arrays({"a": np.zeros(10)}, {"c": np.zeros(3)}, clip=1.0,
                                         num_clients=n)  # fmt: skip
    # 13-bit digits for 6 clients (6 * 8191 < 2^16): three per 32-bit count
    assert (layout16.digit_bits, layout16.digits) == (13, 3)
    assert layout16.size == 10 + 3 * 3 and layout32.size == 13


def test_a_thirty_two_bit_vector_in_a_sixteen_bit_round_is_excluded() -> None:
    _, tr = run_secagg_round(
        _updates(4, 8), threshold=3, clip_range=CLIP, ring_bits=16,
        tamper=_flip("collect_masked", 1, _set(Key.MASKED, lambda m: m[Key.MASKED].astype(np.uint32))),
    )  # fmt: skip
    assert 1 not in tr.survivors and "uint16" in tr.excluded[1]


def test_fewer_than_threshold_survivors_abort_before_any_share_is_revealed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(SecAggAbort, match="< threshold") as info:
        run_secagg_round(_updates(5, 8), threshold=4, clip_range=CLIP, dropouts={0, 2})
    tr = info.value.transcript
    assert tr is not None and tr.aborted
    assert not [m for s, _, m in tr.received if s == "unmask"]
    assert not [m for s, _, m in tr.sent if s == "unmask"]
    assert "aborted" in caplog.text


@pytest.mark.parametrize("ring_bits", [32, 16])
def test_masked_vectors_are_uniform_and_uncorrelated_with_updates(ring_bits: int) -> None:
    n, size = 4, 20_000
    rng = np.random.default_rng(7)
    # structured, highly non-uniform updates: a ramp and a constant
    updates = [
        np.linspace(-1, 1, size),
        np.full(size, 0.5),
        rng.normal(0, 0.01, size),
        np.zeros(size),
    ]
    _, tr = run_secagg_round(updates, threshold=3, clip_range=CLIP, ring_bits=ring_bits)
    spec = QuantizationSpec(clip=CLIP, num_clients=n, bits=ring_bits)
    top = 1 << ring_bits
    for _, cid, msg in [r for r in tr.received if r[0] == "collect_masked"]:
        assert msg[Key.MASKED].dtype == (np.uint32 if ring_bits == 32 else np.uint16)
        y = msg[Key.MASKED].astype(np.float64)
        x = (np.clip(updates[cid], -CLIP, CLIP) + CLIP) * spec.scale
        if np.std(x) > 0:
            corr = np.corrcoef(x, y)[0, 1]
            assert abs(corr) < 5 / np.sqrt(size)
        assert abs(y.mean() - top / 2) < 5 * top / np.sqrt(12 * size)
        counts = np.bincount(msg[Key.MASKED] >> (ring_bits - 4), minlength=16)
        chi2 = float(((counts - size / 16) ** 2 / (size / 16)).sum())
        assert chi2 < 50.0


def _manual_round(
    n: int, t: int, size: int
) -> tuple[list[SecAggPlusClient], SecAggPlusServer, list[Any], list[bytes], np.ndarray]:
    """Run a round stage by stage, capturing every client's secrets before they are wiped."""
    rng = np.random.default_rng(11)
    updates = _updates(n, size, seed=11)
    layout = PayloadLayout.from_arrays({"u": updates[0]}, clip=CLIP, num_clients=n)
    cfg = SecAggConfig(round_number=3, num_clients=n, threshold=t, vector_length=layout.size)
    server = SecAggPlusServer(cfg)
    clients = [SecAggPlusClient(i) for i in range(n)]
    received: list[Any] = []
    req = server.advertise_keys(list(range(n)))
    rep = {i: clients[i].advertise_keys(req[i]) for i in req}
    received.append(rep)
    req = server.share_keys(rep)
    rep = {i: clients[i].share_keys(req[i]) for i in req}
    received.append(rep)
    req = server.collect_masked(rep)
    rep = {
        i: clients[i].collect_masked_input(req[i], vector=layout.encode({"u": updates[i]}, rng=rng))
        for i in req
        if i != 0
    }  # client 0 drops: its mask key gets reconstructed
    received.append(rep)
    secrets: list[bytes] = []
    for c in clients:
        s = c.state
        assert s.self_seed is not None and s.s_keys is not None and s.c_keys is not None
        secrets += [
            s.self_seed,
            crypto.private_bytes(s.s_keys.private),
            crypto.private_bytes(s.c_keys.private),
        ]
        assert "self_seed" not in repr(c) and s.self_seed.hex() not in repr(c)
        assert repr(s.self_seed) not in repr(c)
        with pytest.raises(TypeError):
            pickle.dumps(s)
    req = server.unmask(rep)
    rep = {i: clients[i].unmask(req[i]) for i in req}
    received.append(rep)
    total, summed = server.aggregate(rep)
    out = layout.decode_sum(total, num_summed=summed)[0]["u"]
    np.testing.assert_allclose(
        out, _reference(updates, tuple(range(1, n))), atol=_tolerance(n, n - 1)
    )
    return clients, server, received, secrets, out


def test_secrets_never_reach_the_server_repr_or_pickles() -> None:
    clients, server, received, secrets, _ = _manual_round(n=5, t=3, size=16)
    blob = pickle.dumps(received) + pickle.dumps(server.state) + repr(server).encode()
    for secret in secrets:
        assert secret not in blob
        assert secret.hex().encode() not in blob
    clients[0].forget()  # client 0 dropped out; the others forget after unmasking
    for c in clients:
        assert c.state.self_seed is None and not c.state.b_shares and c.state.s_keys is None


def _flip(stage: str, target: int, edit: Any) -> Any:
    def tamper(s: str, cid: int, msg: dict[str, Any]) -> dict[str, Any] | None:
        if s == stage and cid == target:
            return edit(dict(msg))
        return msg

    return tamper


def _check_round_without(
    bad: int, tamper: Any, reason: str, *, n: int = 6, t: int = 3, flagged: bool = False
) -> None:
    updates = _updates(n, 32, seed=bad)
    agg, tr = run_secagg_round(updates, threshold=t, clip_range=CLIP, tamper=tamper)
    book = tr.flagged if flagged else tr.excluded
    assert bad in book and reason in book[bad], (tr.excluded, tr.flagged)
    if not flagged:
        assert bad not in tr.survivors
    ref = _reference(updates, tr.survivors)
    assert np.abs(np.asarray(agg) - ref).max() <= _tolerance(n, len(tr.survivors))


def _set(key: str, value: Any) -> Any:
    def edit(m: dict[str, Any]) -> dict[str, Any]:
        m[key] = value(m) if callable(value) else value
        return m

    return edit


def test_wrong_length_masked_vector_is_excluded() -> None:
    _check_round_without(
        2, _flip("collect_masked", 2, _set(Key.MASKED, lambda m: m[Key.MASKED][:-1])), "shape"
    )


def test_wrong_dtype_masked_vector_is_excluded() -> None:
    _check_round_without(
        1,
        _flip("collect_masked", 1, _set(Key.MASKED, lambda m: m[Key.MASKED].astype(np.int64))),
        "uint32",
    )


def test_garbled_masked_vector_is_excluded() -> None:
    def garble(m: dict[str, Any]) -> dict[str, Any]:
        y = m[Key.MASKED].copy()
        y[3] ^= 0x10
        m[Key.MASKED] = y
        return m

    _check_round_without(4, _flip("collect_masked", 4, garble), "digest")


def test_replayed_masked_vector_within_a_round_is_excluded() -> None:
    stash: dict[str, Any] = {}

    def tamper(s: str, cid: int, msg: dict[str, Any]) -> dict[str, Any]:
        if s == "collect_masked" and cid == 1:
            stash["m"] = msg
        if s == "collect_masked" and cid == 3:
            return {**msg, Key.MASKED: stash["m"][Key.MASKED], Key.DIGEST: stash["m"][Key.DIGEST]}
        return msg

    _check_round_without(3, tamper, "replayed")


def test_replayed_masked_vector_across_rounds_is_excluded() -> None:
    seen: set[bytes] = set()
    updates = _updates(5, 16)
    first: dict[str, Any] = {}

    def record(s: str, cid: int, msg: dict[str, Any]) -> dict[str, Any]:
        if s == "collect_masked" and cid == 0:
            first["m"] = msg
        return msg

    run_secagg_round(
        updates, threshold=3, clip_range=CLIP, tamper=record, seen_digests=seen, round_number=1
    )

    def replay(s: str, cid: int, msg: dict[str, Any]) -> dict[str, Any]:
        if s == "collect_masked" and cid == 0:
            return {**msg, Key.MASKED: first["m"][Key.MASKED], Key.DIGEST: first["m"][Key.DIGEST]}
        return msg

    agg, tr = run_secagg_round(
        updates, threshold=3, clip_range=CLIP, tamper=replay, seen_digests=seen, round_number=2
    )
    assert "replayed" in tr.excluded[0]
    assert np.abs(agg - _reference(updates, (1, 2, 3, 4))).max() <= _tolerance(5, 4)
    # a whole message replayed from round 1 carries the stale round number
    _, tr = run_secagg_round(
        updates,
        threshold=3,
        clip_range=CLIP,
        round_number=3,
        tamper=_flip("collect_masked", 2, lambda m: first["m"] | {Key.CLIENT_ID: 2}),
    )
    assert "round 1" in tr.excluded[2]


def test_malformed_public_keys_are_excluded() -> None:
    _check_round_without(1, _flip("advertise_keys", 1, _set(Key.PK_C, b"\x01" * 31)), "public key")
    _check_round_without(2, _flip("advertise_keys", 2, _set(Key.PK_S, bytes(32))), "low-order")


def test_duplicated_public_keys_exclude_both_clients() -> None:
    stash: dict[str, Any] = {}

    def tamper(s: str, cid: int, msg: dict[str, Any]) -> dict[str, Any]:
        if s == "advertise_keys" and cid == 0:
            stash["pk"] = msg[Key.PK_S]
        if s == "advertise_keys" and cid == 4:
            return {**msg, Key.PK_S: stash["pk"]}
        return msg

    updates = _updates(6, 8)
    agg, tr = run_secagg_round(updates, threshold=3, clip_range=CLIP, tamper=tamper)
    assert "replayed" in tr.excluded[0] and "replayed" in tr.excluded[4]
    assert tr.survivors == (1, 2, 3, 5)
    assert np.abs(agg - _reference(updates, tr.survivors)).max() <= _tolerance(6, 4)


def test_share_ciphertext_failing_authentication_excludes_its_sender() -> None:
    def garble(m: dict[str, Any]) -> dict[str, Any]:
        cts = list(m[Key.CIPHERTEXTS])
        ct = bytearray(cts[0])
        ct[20] ^= 1
        cts[0] = bytes(ct)
        m[Key.CIPHERTEXTS] = cts
        return m

    _check_round_without(2, _flip("share_keys", 2, garble), "failed authentication")


def test_wrong_length_share_ciphertext_is_excluded() -> None:
    _check_round_without(
        5,
        _flip(
            "share_keys", 5, _set(Key.CIPHERTEXTS, lambda m: [c[:-1] for c in m[Key.CIPHERTEXTS]])
        ),
        "wrong length",
    )


def test_shares_that_do_not_reconstruct_are_discarded_and_flagged() -> None:
    def garble(m: dict[str, Any]) -> dict[str, Any]:
        m[Key.B_SHARES] = [bytes(16 - 1) + b"\x07" for _ in m[Key.B_SHARES]]
        return m

    _check_round_without(1, _flip("unmask", 1, garble), "does not reconstruct", flagged=True)


def test_too_many_bad_clients_abort() -> None:
    def tamper(s: str, cid: int, msg: dict[str, Any]) -> dict[str, Any]:
        if s == "collect_masked" and cid in (0, 1, 2):
            return {**msg, Key.MASKED: msg[Key.MASKED][:3]}
        return msg

    with pytest.raises(SecAggAbort):
        run_secagg_round(_updates(5, 8), threshold=3, clip_range=CLIP, tamper=tamper)


def test_client_refuses_inconsistent_unmask_requests() -> None:
    _, _, _, _, _ = _manual_round(n=4, t=3, size=4)  # sanity: the honest path works
    cfg = SecAggConfig(round_number=1, num_clients=4, threshold=3, vector_length=4)
    server = SecAggPlusServer(cfg)
    clients = [SecAggPlusClient(i) for i in range(4)]
    req = server.advertise_keys(list(range(4)))
    rep = {i: clients[i].advertise_keys(req[i]) for i in req}
    req = server.share_keys(rep)
    rep = {i: clients[i].share_keys(req[i]) for i in req}
    req = server.collect_masked(rep)
    for i in req:
        clients[i].collect_masked_input(req[i], vector=np.zeros(4, dtype=np.uint32))
    base = {Key.ROUND: 1}
    with pytest.raises(ProtocolViolation, match="both"):
        clients[0].unmask(
            base | {Key.SURVIVORS: np.array([0, 1, 2]), Key.DROPPED: np.array([2, 3])}
        )
    with pytest.raises(ProtocolViolation, match="threshold"):
        clients[0].unmask(base | {Key.SURVIVORS: np.array([0, 1]), Key.DROPPED: np.array([2, 3])})
    with pytest.raises(ProtocolViolation, match="another round"):
        clients[0].unmask(
            {Key.ROUND: 2, Key.SURVIVORS: np.array([0, 1, 2]), Key.DROPPED: np.array([3])}
        )


def test_client_refuses_substituted_own_public_key() -> None:
    cfg = SecAggConfig(round_number=1, num_clients=3, threshold=2, vector_length=4)
    server = SecAggPlusServer(cfg)
    clients = [SecAggPlusClient(i) for i in range(3)]
    req = server.advertise_keys([0, 1, 2])
    rep = {i: clients[i].advertise_keys(req[i]) for i in req}
    req = server.share_keys(rep)
    bad = dict(req[0])
    bad[Key.PK_S] = [crypto.generate_keypair().public, *list(bad[Key.PK_S])[1:]]
    with pytest.raises(ProtocolViolation, match="wrong public keys"):
        clients[0].share_keys(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0}, "threshold must be in"),
        ({"threshold": 6}, "threshold must be in"),
        ({"degree": 9}, "degree must be in"),
        ({"share_threshold": 9}, "share_threshold must be in"),
        ({"round_number": -1}, "round_number"),
        ({"ring_bits": 8}, "ring_bits must be one of"),
    ],
)
def test_config_validation(kwargs: dict[str, int], match: str) -> None:
    base = {"round_number": 1, "num_clients": 5, "threshold": 3, "vector_length": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        SecAggConfig(**base)


def test_masks_differ_across_rounds_and_clients() -> None:
    updates = [np.zeros(4096) for _ in range(4)]
    masked = {}
    for rnd in (1, 2):
        _, tr = run_secagg_round(updates, threshold=3, clip_range=CLIP, round_number=rnd)
        for s, cid, msg in tr.received:
            if s == "collect_masked":
                masked[(rnd, cid)] = msg[Key.MASKED]
    keys = sorted(masked)
    for a_i, a in enumerate(keys):
        for b in keys[a_i + 1 :]:
            # independent uniform vectors share a position with probability 2^-32
            assert np.count_nonzero(masked[a] == masked[b]) <= 1, (a, b)


def test_adopted_prekeys_leave_the_state_advertise_keys_would() -> None:
    """Clients 1 and 3 adopt pre-keys instead of advertising: same state, same sum."""
    n, size = 4, 16
    rng = np.random.default_rng(5)
    updates = _updates(n, size, seed=5)
    layout = PayloadLayout.from_arrays({"u": updates[0]}, clip=CLIP, num_clients=n)
    cfg = SecAggConfig(round_number=2, num_clients=n, threshold=3, vector_length=layout.size)
    server = SecAggPlusServer(cfg)
    clients = [SecAggPlusClient(i) for i in range(n)]
    pre = {i: (crypto.generate_keypair(), crypto.generate_keypair()) for i in (1, 3)}
    req = server.advertise_keys(list(range(n)))
    rep = {}
    for i in req:
        if i in pre:
            c, s = (crypto.private_bytes(k.private) for k in pre[i])
            rep[i] = clients[i].adopt_keys(req[i], c, s)
        else:
            rep[i] = clients[i].advertise_keys(req[i])
    reference = SecAggPlusClient(1)
    assert rep[1].keys() == reference.advertise_keys(req[1]).keys()
    assert (rep[1][Key.PK_C], rep[1][Key.PK_S]) == (pre[1][0].public, pre[1][1].public)
    got, want = clients[1].state, reference.state
    assert (got.stage, got.config, got.client_id) == (want.stage, want.config, want.client_id)
    assert got.c_keys is not None and got.s_keys is not None
    assert (got.c_keys.public, got.s_keys.public) == (pre[1][0].public, pre[1][1].public)
    assert "c_keys" not in repr(clients[1]) and pre[1][0].public.hex() not in repr(clients[1])
    req = server.share_keys(rep)
    rep = {i: clients[i].share_keys(req[i]) for i in req}
    req = server.collect_masked(rep)
    rep = {
        i: clients[i].collect_masked_input(req[i], vector=layout.encode({"u": updates[i]}, rng=rng))
        for i in req
        if i != 3
    }  # client 3 (on pre-keys) drops: its pre-key mask key gets reconstructed
    req = server.unmask(rep)
    rep = {i: clients[i].unmask(req[i]) for i in req}
    total, summed = server.aggregate(rep)
    out = layout.decode_sum(total, num_summed=summed)[0]["u"]
    np.testing.assert_allclose(out, _reference(updates, (0, 1, 2)), atol=_tolerance(n, 3))
    with pytest.raises(ValueError, match="32 bytes"):
        SecAggPlusClient(0).adopt_keys(req[0] | cfg.to_message(), b"\x01" * 31, bytes(32))


# ----------------------------------------------------------------------------- n - t dropouts


@pytest.mark.parametrize("stage", ["share_keys", "collect_masked", "unmask"])
def test_two_of_eight_dropouts_complete(stage: str) -> None:
    """t = ceil(0.67 * 8) = 6: any n - t = 2 dropouts must be recovered (complete graph)."""
    n, t = 8, 6
    updates = _updates(n, 32, seed=8)
    agg, tr = run_secagg_round(updates, threshold=t, clip_range=CLIP, dropouts={stage: {1, 5}})
    assert tr.aborted is None
    in_sum = tuple(range(n)) if stage == "unmask" else (0, 2, 3, 4, 6, 7)
    assert tr.survivors == in_sum
    assert np.abs(agg - _reference(updates, in_sum)).max() <= _tolerance(n, len(in_sum))


@pytest.mark.slow  # about 30 s of CPU: pycryptodome's pure-Python Shamir at t = 67
def test_a_third_of_a_hundred_clients_drop_and_the_round_completes() -> None:
    n, t = 100, 67
    dropped = set(range(0, 99, 3))  # 33 clients, spread over the roster
    assert len(dropped) == n - t
    updates = _updates(n, 4, seed=100)
    agg, tr = run_secagg_round(updates, threshold=t, clip_range=CLIP, dropouts=dropped)
    assert tr.aborted is None
    assert tr.survivors == tuple(i for i in range(n) if i not in dropped)
    assert np.abs(agg - _reference(updates, tr.survivors)).max() <= _tolerance(n, n - len(dropped))


def test_one_dropout_too_many_aborts_naming_the_numbers() -> None:
    with pytest.raises(SecAggAbort, match=r"5 surviving clients < threshold 6") as info:
        run_secagg_round(_updates(8, 4), threshold=6, clip_range=CLIP, dropouts={1, 4, 5})
    assert info.value.transcript is not None
    assert not [m for s, _, m in info.value.transcript.sent if s == "unmask"]


# ----------------------------------------------------------------------------- graph seed


def _sparse_setup(n: int = 10, t: int = 6, degree: int = 4) -> tuple[Any, list[Any], Any]:
    cfg = SecAggConfig(round_number=2, num_clients=n, threshold=t, vector_length=3, degree=degree)
    assert not cfg.complete
    server = SecAggPlusServer(cfg)
    clients = [SecAggPlusClient(i, check_graph=False) for i in range(n)]  # explicit degree
    req = server.advertise_keys(list(range(n)))
    rep = {i: clients[i].advertise_keys(req[i]) for i in req}
    return server, clients, rep


def test_clients_derive_the_graph_from_their_reveals_not_from_the_server() -> None:
    from umbra.secure.secagg.graph import graph_seed, neighbour_graph

    server, clients, rep = _sparse_setup()
    req = server.reveal_seed(rep)
    reveals = {i: clients[i].reveal_seed(req[i]) for i in req}
    req = server.share_keys(reveals)
    opened = {i: bytes(m[Key.GRAPH_REVEAL]) for i, m in reveals.items()}
    want = neighbour_graph(list(range(10)), degree=4, seed=graph_seed(opened, round_number=2))
    # a server that wants a graph of its choosing can only send other reveals: each one
    # must open its commitment, so every substitution is refused
    for victim in (0, 7):
        bad = dict(req[3])
        forged = list(bad[Key.GRAPH_REVEALS])
        forged[victim] = bytes(32)
        bad[Key.GRAPH_REVEALS] = forged
        with pytest.raises(ProtocolViolation, match="does not match its commitment"):
            SecAggPlusClient.share_keys(_copy_client(clients[3]), bad)
    bad = dict(req[3])
    bad[Key.IDS] = np.asarray([j for j in range(10) if j != 5], dtype=np.int64)
    with pytest.raises(ProtocolViolation, match="roster changed"):
        SecAggPlusClient.share_keys(_copy_client(clients[3]), bad)
    for i in req:
        clients[i].share_keys(req[i])
        assert clients[i].state.graph == want == server.state.graph


def _copy_client(client: SecAggPlusClient) -> SecAggPlusClient:
    twin = SecAggPlusClient(client.state.client_id)
    st, src = twin.state, client.state
    for name in ("stage", "config", "c_keys", "s_keys", "roster", "graph_randomness"):
        setattr(st, name, getattr(src, name))
    st.graph_commitments = dict(src.graph_commitments)
    return twin


def test_reveal_request_with_an_altered_commitment_is_refused() -> None:
    server, clients, rep = _sparse_setup()
    req = server.reveal_seed(rep)
    bad = dict(req[2])
    commitments = list(bad[Key.GRAPH_COMMITMENTS])
    commitments[2] = bytes(32)
    bad[Key.GRAPH_COMMITMENTS] = commitments
    with pytest.raises(ProtocolViolation, match="commitment is missing or altered"):
        clients[2].reveal_seed(bad)


def test_a_missing_reveal_aborts_the_round() -> None:
    with pytest.raises(SecAggAbort, match="did not reveal the graph randomness") as info:
        run_secagg_round(
            _updates(10, 4), threshold=6, clip_range=CLIP, degree=4, dropouts={"reveal_seed": {4}}
        )
    assert info.value.transcript is not None
    assert not [m for s, _, m in info.value.transcript.sent if s == "share_keys"]


def test_a_forged_reveal_aborts_the_round() -> None:
    def forge(stage: str, cid: int, msg: dict[str, Any]) -> dict[str, Any]:
        if stage == "reveal_seed" and cid == 3:
            return {**msg, Key.GRAPH_REVEAL: bytes(32)}
        return msg

    with pytest.raises(SecAggAbort, match="did not reveal"):
        run_secagg_round(_updates(10, 4), threshold=6, clip_range=CLIP, degree=4, tamper=forge)


# ----------------------------------------------------------------------------- parameters


def test_client_refuses_a_weaker_graph_or_threshold_than_it_requires() -> None:
    good = SecAggConfig(round_number=1, num_clients=8, threshold=6, vector_length=2)
    assert SecAggPlusClient(0, threshold_fraction=0.67).advertise_keys(good.to_message())
    weak_graph = SecAggConfig(
        round_number=1, num_clients=8, threshold=6, vector_length=2, degree=4, share_threshold=2
    )
    with pytest.raises(
        ProtocolViolation, match=r"graph parameters \(degree 4, Shamir threshold 2\)"
    ):
        SecAggPlusClient(0).advertise_keys(weak_graph.to_message())
    low_t = SecAggConfig(round_number=1, num_clients=8, threshold=2, vector_length=2)
    SecAggPlusClient(0).advertise_keys(low_t.to_message())  # no expectation: accepted
    with pytest.raises(ProtocolViolation, match=r"threshold 2 of 8 is below the configured 0\.67"):
        SecAggPlusClient(0, threshold_fraction=0.67).advertise_keys(low_t.to_message())
