"""Update compression: the codecs against their definitions, error feedback's identity,
the reply's real serialized size, and the shared-k sum under SecAgg+ masks."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from secagg_sim import run_secagg_round
from umbra.config import load_config
from umbra.errors import ConfigError
from umbra.federation.common import message_bytes, to_record
from umbra.federation.compression import (
    codec,
    decode_arrays,
    dequantise,
    encode_arrays,
    quantise,
    top_indices,
)
from umbra.federation.compression_client import compress_reply, load_residual
from umbra.federation.compression_server import Compression
from umbra.privacy.controller import CLIENT_GROUP, DP_UNWEIGHTED, dp_config_keys
from umbra.secure.secagg import QuantizationSpec
from umbra.secure.shared_coordinates import (
    RoundCoordinates,
    kept_count,
    pack_mask,
    round_coordinates,
    shared_indices,
    shared_seed,
    top_mask,
    unpack_mask,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    """A model-shaped set of float32 tensors (weights, biases, a norm scale)."""
    rng = np.random.default_rng(seed)
    return {
        "enc.w": rng.normal(size=(64, 48)).astype(np.float32),
        "enc.b": rng.normal(size=48).astype(np.float32),
        "head.w": rng.normal(size=(48, 10)).astype(np.float32),
        "norm.g": np.ones(48, dtype=np.float32),
    }


# --- quantisation ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_quantisation_is_unbiased_with_the_predicted_variance(bits: int) -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=200)
    draws = 4000
    out = np.empty((draws, v.size))
    for i in range(draws):
        codes, lo, step = quantise(v, bits, rng)
        out[i] = dequantise(codes, lo, step)
    # the grid the quantiser uses: lo + j * step, float32 lo/step
    _, lo, step = quantise(v, bits, rng)
    t = (v - float(lo)) / float(step)
    below = float(lo) + np.minimum(np.floor(t), (1 << bits) - 2) * float(step)
    above = below + float(step)
    var = (v - below) * (above - v)  # stochastic rounding between two grid points
    # mean: every coordinate within 5 standard errors of v
    se = np.sqrt(var / draws) + 1e-12
    assert np.all(np.abs(out.mean(axis=0) - v) <= 5 * se + 1e-9)
    # variance: the empirical spread matches (v - lo)(hi - v) (pooled, and per coordinate)
    emp = out.var(axis=0)
    assert emp.sum() == pytest.approx(var.sum(), rel=0.05)
    inner = var > 0.05 * var.max()
    assert np.all(np.abs(emp[inner] / var[inner] - 1) < 0.25)
    # every value lands on one of the two neighbouring grid points
    assert np.all(np.isclose(out, below) | np.isclose(out, above))


def test_quantisation_edge_cases() -> None:
    rng = np.random.default_rng(0)
    codes, lo, step = quantise(np.full(5, 0.25), 8, rng)
    assert np.array_equal(dequantise(codes, lo, step), np.full(5, 0.25))
    v = np.array([-1.0, 0.0, 1.0])
    codes, lo, step = quantise(v, 4, rng)
    assert codes.tolist() == [0, 7, 15] or codes[[0, 2]].tolist() == [0, 15]
    assert quantise(v, 8, rng)[0].dtype == np.uint8
    assert quantise(v, 9, rng)[0].dtype == np.uint16
    with pytest.raises(ValueError, match="bits"):
        quantise(v, 17, rng)


def test_four_bit_codes_pack_two_per_byte() -> None:
    rng = np.random.default_rng(2)
    delta = {"a": rng.normal(size=(7, 3)), "b": rng.normal(size=1)}
    c = codec("q4")
    wire = encode_arrays(delta, c, rng=rng)
    assert wire["a|q"].dtype == np.uint8 and wire["a|q"].size == 11  # ceil(21 / 2)
    back = decode_arrays(wire, {"a": (7, 3), "b": (1,)}, c)
    for k in delta:  # within one grid step of the original
        step = float(wire[f"{k}|lo"][1])
        assert np.all(np.abs(back[k] - delta[k]) <= step * (1 + 1e-6) + 1e-12)


# --- sparsifiers ----------------------------------------------------------------------


def test_top_k_keeps_the_largest_magnitudes() -> None:
    v = np.array([[0.1, -3.0, 2.0], [0.0, 5.0, -0.2]])
    assert top_indices(v, 2).tolist() == [1, 4]
    assert kept_count(6, 0.5) == 3 and kept_count(6, 0.01) == 1 and kept_count(0, 0.5) == 0
    c = codec("topk", 0.5)
    back = decode_arrays(encode_arrays({"v": v}, c, rng=np.random.default_rng()), {"v": (2, 3)}, c)
    assert back["v"].tolist() == [[0.0, -3.0, 2.0], [0.0, 5.0, 0.0]]


def test_shared_coordinates_are_the_same_for_everyone_and_change_per_round() -> None:
    s1, s2 = shared_seed(7, 1), shared_seed(7, 2)
    a = shared_indices(s1, "enc.w", 1000, 0.1)
    assert a.size == 100 and np.unique(a).size == 100 and a.min() >= 0 and a.max() < 1000
    assert np.array_equal(a, shared_indices(s1, "enc.w", 1000, 0.1))
    assert not np.array_equal(a, shared_indices(s2, "enc.w", 1000, 0.1))
    assert not np.array_equal(a, shared_indices(s1, "enc.b", 1000, 0.1))
    assert shared_seed(7, 1) != shared_seed(8, 1)
    # ten rounds of 10 % cover every coordinate exactly once
    rounds = np.concatenate(
        [shared_indices(shared_seed(7, r), "enc.w", 1000, 0.1) for r in range(3, 13)]
    )
    assert np.array_equal(np.sort(rounds), np.arange(1000))


# --- error feedback and the client's reply --------------------------------------------


def _config(
    method: str, *, fraction: float = 0.1, round_: int = 1, bits: int = 32, **extra: object
) -> ConfigRecord:
    c = Compression(method=method, fraction=fraction, run_seed=3, value_bits=bits)
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": round_, **extra})}),
                  dst_node_id=1, message_type="train")  # fmt: skip
    c.announce([msg], round_)
    return msg.content.config_records["config"]


@pytest.mark.parametrize(("method", "bits"), [("topk", 32), ("shared-k", 32), ("shared-k", 8)])
def test_error_feedback_accumulates_exactly(method: str, bits: int, tmp_path: Path) -> None:
    """residual_{t+1} = residual_t + delta_t - sent_t, bit for bit, over several rounds
    (with 8-bit values the residual also carries each round's rounding error)."""
    x = _model(0)
    shapes = {k: v.shape for k, v in x.items()}
    residual = {k: np.zeros(v.shape) for k, v in x.items()}
    rng = np.random.default_rng(5)
    for rnd in range(1, 5):
        config = _config(method, round_=rnd, bits=bits)
        y = {k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in x.items()}
        wire = compress_reply(config, x, y, {}, state_dir=tmp_path, server_round=rnd, seed=rnd)
        c = codec(method, 0.1, bits)
        coords = RoundCoordinates(shared_seed(3, rnd), 0.1)
        sent = decode_arrays(wire, shapes, c, coordinates=coords if method == "shared-k" else None)
        stored = load_residual(tmp_path, rnd + 1)
        assert stored is not None
        for k in x:
            delta = y[k].astype(np.float64) - x[k].astype(np.float64)
            assert np.array_equal(stored[k], residual[k] + delta - sent[k])
            assert np.count_nonzero(sent[k]) <= kept_count(x[k].size, 0.1)
        residual = stored
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "compress_residual_r3.npz", "compress_residual_r4.npz"
    ]  # fmt: skip


def test_client_level_dp_keeps_the_clip(tmp_path: Path) -> None:
    x = _model(0)
    clip_key = dp_config_keys(CLIENT_GROUP)[1]
    rng = np.random.default_rng(6)
    for rnd in range(1, 4):  # the residual grows, what is sent stays within the clip
        config = _config("topk", fraction=0.3, round_=rnd, **{clip_key: 0.5})
        # a clipped update (the DP policy's reply), norm 0.5
        d = {k: rng.normal(size=v.shape) for k, v in x.items()}
        norm = np.sqrt(sum(float(np.sum(a * a)) for a in d.values()))
        delta = {k: (a * 0.5 / norm).astype(np.float32) for k, a in d.items()}
        wire = compress_reply(config, x, delta, {DP_UNWEIGHTED: 1.0},
                              state_dir=tmp_path, server_round=rnd, seed=0)  # fmt: skip
        vals = np.concatenate([wire[f"{k}|val"].astype(np.float64) for k in x])
        assert np.linalg.norm(vals) <= 0.5


@pytest.mark.parametrize(
    ("method", "at_most"), [("q8", 0.3), ("q4", 0.18), ("topk", 0.25), ("shared-k", 0.12)]
)
def test_the_serialized_reply_shrinks_and_decodes(
    method: str, at_most: float, tmp_path: Path
) -> None:
    """Real Flower message bytes; the server's decode gives x + the sent delta."""
    x = {k: np.zeros(v.shape, np.float32) + 1 for k, v in _model(0).items()}
    x["big"] = np.ones((256, 64), np.float32)
    rng = np.random.default_rng(8)
    y = {k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in x.items()}
    y["cv.big"] = np.ones(3, np.float32)  # a SCAFFOLD control delta travels as is
    config = _config(method, round_=2)
    wire = compress_reply(config, x, y, {}, state_dir=tmp_path, server_round=2, seed=1)

    def reply(arrays: dict[str, np.ndarray]) -> Message:
        content = RecordDict(
            {"arrays": to_record(arrays), "metrics": MetricRecord({"partition-id": 0})}
        )
        return Message(content, dst_node_id=1, message_type="train")

    full, small = reply(y), reply(wire)
    assert message_bytes([small]) <= at_most * message_bytes([full])
    Compression(method=method, fraction=0.1, run_seed=3).decode(small, x, 2)
    got = {k: v.numpy() for k, v in small.content.array_records["arrays"].items()}
    assert list(got) == [*x, "cv.big"]  # the global model's order, then the rest
    assert np.array_equal(got["cv.big"], y["cv.big"])
    for k in x:
        assert got[k].dtype == np.float32
        err = np.abs(got[k] - y[k])
        if method.startswith("q"):
            step = float(wire[f"{k}|lo"][1])  # within one grid step (+ float32 rounding)
            assert err.max() <= step * 1.001 + 1e-6
        else:  # kept coordinates exact (float32), the rest keep x
            kept = np.isclose(got[k], y[k], atol=1e-6)
            assert np.count_nonzero(kept) >= kept_count(x[k].size, 0.1)
            assert np.all(kept | (got[k] == x[k]))


@pytest.mark.parametrize("bits", [16, 8])
def test_shared_k_values_as_codes_shrink_the_reply_by_their_width(
    bits: int, tmp_path: Path
) -> None:
    """value_bits 16 / 8: the kept values travel as uint16 / uint8 codes of their own
    range; the server's decode is within one grid step of them, the rest keep x, and the
    reply's real bytes shrink by the width against float32 values at the same fraction."""
    x = {k: np.zeros(v.shape, np.float32) + 1 for k, v in _model(0).items()}
    x["big"] = np.ones((256, 64), np.float32)
    rng = np.random.default_rng(8)
    y = {k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in x.items()}
    replies = {}
    for width in (32, bits):
        config = _config("shared-k", fraction=0.4, round_=2, bits=width)
        wire = compress_reply(config, x, y, {}, state_dir=tmp_path / str(width), server_round=2,
                              seed=1)  # fmt: skip
        content = RecordDict({"arrays": to_record(wire), "metrics": MetricRecord({})})
        replies[width] = (wire, Message(content, dst_node_id=1, message_type="train"))
    wire, small = replies[bits]
    assert wire["big|q"].dtype == (np.uint16 if bits == 16 else np.uint8)
    ratio = message_bytes([small]) / message_bytes([replies[32][1]])
    kept = sum(kept_count(v.size, 0.4) for v in x.values())
    assert sum(v.nbytes for k, v in wire.items() if k.endswith("|q")) == kept * bits // 8
    assert bits / 32 < ratio < bits / 32 + 0.06  # + names, lo and step of each array
    Compression(method="shared-k", fraction=0.4, run_seed=3, value_bits=bits).decode(small, x, 2)
    got = {k: v.numpy() for k, v in small.content.array_records["arrays"].items()}
    coords = RoundCoordinates(shared_seed(3, 2), 0.4)
    for k in x:
        idx = coords.indices(k, x[k].size)
        step = float(wire[f"{k}|lo"][1])
        err = np.abs(got[k].ravel()[idx] - y[k].ravel()[idx])
        assert err.max() <= step * 1.001 + 1e-6
        rest = np.setdiff1d(np.arange(x[k].size), idx)
        assert np.array_equal(got[k].ravel()[rest], x[k].ravel()[rest])


def _train_message(round_: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"server-round": round_})}),
                   dst_node_id=1, message_type="train")  # fmt: skip


def test_last_update_support_is_the_global_updates_top_plus_a_cyclic_block() -> None:
    """The server announces the largest |x_t - x_{t-1}| as bit masks; every client's config
    gives the same k coordinates: exactly those, plus the round's cyclic ones. The first
    round (no previous update) is the plain cyclic block."""
    x0 = _model(0)
    server = Compression(method="shared-k", fraction=0.2, run_seed=3, support="last-update",
                         cyclic_share=0.25)  # fmt: skip
    first = _train_message(1)
    server.announce([first], 1, x=x0)
    coords = round_coordinates(first.content.config_records["config"])
    assert coords is not None and not coords.masks
    for k, v in x0.items():
        want = shared_indices(shared_seed(3, 1), k, v.size, 0.2)
        assert np.array_equal(coords.indices(k, v.size), want)
    rng = np.random.default_rng(1)
    x1 = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in x0.items()}
    msgs = [_train_message(2) for _ in range(3)]
    server.announce(msgs, 2, x=x1)
    for k, v in x0.items():
        k_all = kept_count(v.size, 0.2)
        top = k_all - int(np.ceil(0.25 * k_all))
        change = np.abs(x1[k].astype(np.float64) - v.astype(np.float64)).ravel()
        expect_top = set(np.argsort(-change, kind="stable")[:top].tolist())
        got = [
            cast(RoundCoordinates, round_coordinates(m.content.config_records["config"])).indices(
                k, v.size
            )
            for m in msgs
        ]
        assert all(np.array_equal(g, got[0]) for g in got)  # the same at every client
        assert np.array_equal(got[0], server.coordinates(2).indices(k, v.size))  # and server
        assert got[0].size == k_all and np.unique(got[0]).size == k_all
        assert expect_top <= set(got[0].tolist())


def test_last_update_support_still_visits_every_coordinate() -> None:
    """Whatever the announced top masks, the cyclic part sends every coordinate at least
    once every ceil(n / cyclic) rounds."""
    rng = np.random.default_rng(3)
    n, fraction, share = 500, 0.2, 0.25
    k = kept_count(n, fraction)
    cyclic = int(np.ceil(share * k))
    seen = np.zeros(n, dtype=bool)
    for rnd in range(1, int(np.ceil(n / cyclic)) + 1):
        mask = top_mask(rng.normal(size=n), k, share)
        coords = RoundCoordinates(shared_seed(5, rnd), fraction, cyclic_share=share,
                                  masks={"w": pack_mask(mask)})  # fmt: skip
        idx = coords.indices("w", n)
        assert idx.size == k and np.all(mask[idx].sum() == k - cyclic)
        seen[idx] = True
    assert seen.all()


def test_support_masks_travel_as_bits() -> None:
    mask = np.random.default_rng(0).random(21) < 0.3
    packed = pack_mask(mask)
    assert len(packed) == 3 and np.array_equal(unpack_mask(packed, 21), mask)
    with pytest.raises(ValueError, match="support mask"):
        unpack_mask(packed, 30)


# --- shared-k under SecAgg+ -----------------------------------------------------------


def _last_update_coordinates(x: dict[str, np.ndarray], fraction: float) -> RoundCoordinates:
    """Round 4's coordinates as the server announces them after a random global update."""
    rng = np.random.default_rng(4)
    masks = {
        k: pack_mask(top_mask(rng.normal(size=v.shape), kept_count(v.size, fraction), 0.25))
        for k, v in x.items()
    }
    return RoundCoordinates(shared_seed(11, 4), fraction, cyclic_share=0.25, masks=masks)


@pytest.mark.parametrize(("support", "ring_bits"),
                         [("cyclic", 32), ("last-update", 32), ("last-update", 16)])  # fmt: skip
def test_shared_k_secure_sum_equals_the_plaintext_sum(support: str, ring_bits: int) -> None:
    """Every client's shared-k values sit on the same coordinates, so SecAgg+ can sum them:
    the unmasked sum decodes to the plaintext sum of the sparsified updates (in the 16-bit
    ring within its coarser step)."""
    x = _model(0)
    shapes = {k: v.shape for k, v in x.items()}
    c = codec("shared-k", 0.1)
    coords = (
        RoundCoordinates(shared_seed(11, 4), 0.1)
        if support == "cyclic"
        else _last_update_coordinates(x, 0.1)
    )
    rng = np.random.default_rng(9)
    deltas = [{k: 0.05 * rng.normal(size=v.shape) for k, v in x.items()} for _ in range(5)]
    wires = [encode_arrays(d, c, rng=rng, coordinates=coords) for d in deltas]
    assert all(
        sum(w.size for w in wire.values()) < 0.11 * sum(v.size for v in x.values())
        for wire in wires
    )  # fmt: skip — what is masked and sent shrinks
    dropped = {3}
    total, _ = run_secagg_round(wires, threshold=3, clip_range=1.0, dropouts=dropped,
                                ring_bits=ring_bits)  # fmt: skip
    assert isinstance(total, dict)
    secure = decode_arrays(total, shapes, c, coordinates=coords)
    plain = [decode_arrays(w, shapes, c, coordinates=coords) for w in wires]
    step = 1 / QuantizationSpec(clip=1.0, num_clients=len(wires), bits=ring_bits).scale
    for k in x:
        expect = sum(p[k] for i, p in enumerate(plain) if i not in dropped)
        assert np.allclose(secure[k], expect, atol=max(1e-6, 4 * step))
        assert np.count_nonzero(expect) == kept_count(x[k].size, 0.1)


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["compression.method=topk", "secure.aggregation=secagg+"], "does not fit secure"),
        (["compression.method=q8", "secure.aggregation=ckks"], "does not fit secure"),
        (["compression.method=q4", "privacy.mode=client"], "does not fit privacy.mode"),
        (["compression.method=shared-k", "secure.aggregation=ckks"], "does not fit secure"),
        (
            ["compression.method=shared-k", "secure.aggregation=secagg+", "privacy.mode=client"],
            "not support differential privacy",
        ),
        (["compression.fraction=0"], "compression.fraction"),
        (["compression.support=largest"], "compression.support"),
        (["compression.method=zip"], "compression.method"),
        (["compression.method=q8", "compression.value_bits=16"], "applies to shared-k only"),
        (["compression.method=shared-k", "compression.value_bits=12"], "value_bits"),
        (
            [
                "compression.method=shared-k",
                "compression.value_bits=8",
                "secure.aggregation=secagg+",
            ],
            "8-bit ring",
        ),
        (
            [
                "compression.method=shared-k",
                "compression.value_bits=16",
                "secure.aggregation=secagg+",
                "federation.num_clients=300",
                "data.n_train=3000",
                "data.min_client_size=1",
            ],
            "levels per client",
        ),
    ],
)
def test_incompatible_compression_is_one_config_error(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config("smoke", overrides=overrides)


def test_cli_refuses_top_k_under_secagg_with_exit_2(tmp_path: Path) -> None:
    args = ["--preset", "smoke", "--set", "compression.method=topk",
            "--set", "secure.aggregation=secagg+", "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "umbra.cli", "run", *args],
                          capture_output=True, text=True, env={"PYTHONPATH": str(SRC),
                          "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "compression.method = 'topk'" in lines[0]


# --- shared-k through the real ClientApp and the SecAgg+ workflow ---------------------


@pytest.mark.parametrize(("support", "ring_bits"),
                         [("cyclic", 32), ("last-update", 32), ("last-update", 16)])  # fmt: skip
def test_shared_k_under_secagg_matches_the_plaintext_round(
    support: str, ring_bits: int, tmp_path: Path
) -> None:
    """The same round, once in the clear and once under SecAgg+: with shared-k both hand
    the strategy the same model (up to the ring's quantisation), and the masked vectors
    carry only the kept coordinates (``last-update``: round 2, after a global update;
    ``value_bits = 16``: in the 16-bit ring, half the masked bytes)."""
    from test_secure_flower import N_CLIENTS, TRANSPORTS, FakeGrid, _client_spec, _secure, _strategy
    from umbra.data.sources.synthetic import make_synthetic
    from umbra.federation.client_app import make_client_app
    from umbra.federation.client_data import write_federation_data
    from umbra.federation.common import from_record
    from umbra.federation.rounds import PlainTrainRound
    from umbra.federation.secure_round import SecureTrainRound
    from umbra.federation.server_app import initial_arrays
    from umbra.models import ModelSpec
    from umbra.secure.contribution import DEFAULT_WEIGHT_SCALE

    data = make_synthetic(n=120, num_classes=3, modalities=("image", "audio", "text"), seed=3)
    parts = [np.arange(i, 120, N_CLIENTS) for i in range(N_CLIENTS)]
    write_federation_data(
        tmp_path / "train", data, parts, [np.ones((len(p), 3), bool) for p in parts]
    )
    fed = {
        "root": tmp_path,
        "model_spec": ModelSpec.from_data(data, hidden=8, embed_dim=8).to_dict(),
    }
    x = initial_arrays(fed["model_spec"], seed=1)
    shared = Compression(method="shared-k", fraction=0.2, run_seed=5, support=support,
                         value_bits=ring_bits)  # fmt: skip
    rnd = 2
    rng = np.random.default_rng(2)  # round 1's global model: x minus a global update
    shared.coordinates(1, {k: v - 0.1 * rng.normal(size=v.shape) for k, v in x.items()})

    def secure_round(compression: Compression) -> tuple[dict[str, np.ndarray], int]:
        secure = _secure("secagg+")
        grid = FakeGrid(make_client_app(_client_spec(fed, secure)), N_CLIENTS)
        transport = TRANSPORTS.get("secagg+").server(secure)
        out = SecureTrainRound(transport, timeout_s=60.0, compression=compression)(
            _strategy("fedavg"), cast(Grid, grid), rnd, x
        )
        assert out.record is not None, out.note
        return from_record(out.record), out.bytes_up

    plain_spec = _client_spec(fed, _secure("secagg+"))
    plain_app = make_client_app(replace(plain_spec, transports=()))
    plain = PlainTrainRound(timeout_s=60.0, compression=shared)(
        _strategy("fedavg"), cast(Grid, FakeGrid(plain_app, N_CLIENTS)), rnd, x
    )
    assert plain.record is not None
    assert bool(shared.coordinates(rnd).masks) == (support == "last-update")
    want = from_record(plain.record)
    got, sparse_bytes = secure_round(shared)
    _, dense_bytes = secure_round(Compression())
    # a ring step per client in weighted units (n_i / B, B = DEFAULT_WEIGHT_SCALE in a
    # transport's first round), divided by the summed weights
    step = 1 / QuantizationSpec(clip=4.0, num_clients=N_CLIENTS, bits=ring_bits).scale
    weights = sum(len(p) for p in parts) / DEFAULT_WEIGHT_SCALE
    moved = 0
    for k in x:
        assert np.allclose(got[k], want[k], atol=max(2e-5, N_CLIENTS * step / weights)), k
        changed = got[k] != x[k]
        assert np.count_nonzero(changed) <= kept_count(x[k].size, 0.2)
        moved += int(np.count_nonzero(changed))
    assert moved > 0
    assert sparse_bytes < (0.8 if ring_bits == 32 else 0.16) * dense_bytes


def test_a_reply_whose_codes_do_not_decode_is_refused() -> None:
    x = _model(0)
    c = Compression(method="q8", run_seed=3)
    wire = encode_arrays(x, codec("q8"), rng=np.random.default_rng(0))
    for bad in (
        {k: v for k, v in wire.items() if k != "enc.b|q"},  # a tensor missing
        {**wire, "enc.b|q": wire["enc.b|q"][:-1]},
    ):  # fmt: skip — a short one
        msg = Message(RecordDict({"arrays": to_record(bad), "metrics": MetricRecord({"partition-id": 1})}),
                      dst_node_id=1, message_type="train")  # fmt: skip
        assert c.decode(msg, x, 1) is False
    ok = Message(RecordDict({"arrays": to_record(wire), "metrics": MetricRecord({"partition-id": 1})}),
                 dst_node_id=1, message_type="train")  # fmt: skip
    assert c.decode(ok, x, 1) is True
