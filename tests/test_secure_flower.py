"""SecAgg+ and CKKS over Flower: the workflows driven through a fake Grid that runs the
real ClientApp in-process (no Ray), compared against the plaintext modality-aware rule."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid

from umbra.config import FederationConfig
from umbra.data.sources.synthetic import make_synthetic
from umbra.federation.client_app import ClientSpec, make_client_app
from umbra.federation.client_data import write_federation_data
from umbra.federation.common import SecureSettings, from_record, to_record
from umbra.federation.secure_round import SecureTrainRound
from umbra.federation.server_app import initial_arrays
from umbra.federation.strategies import ModalityFedAvg, build_strategy
from umbra.federation.train import TrainSettings
from umbra.models import ModelSpec, parameter_modality
from umbra.secure import transports
from umbra.secure.contribution import int_template, make_contribution, payload_template
from umbra.secure.identity import generate_identities
from umbra.secure.secagg import crypto
from umbra.secure.secagg.errors import ProtocolViolation
from umbra.secure.secagg.quantize import PayloadLayout
from umbra.secure.transport import decode_proto

N_CLIENTS = 4
MODS = ("image", "audio", "text")


class FakeGrid:
    """Delivers messages to the real ClientApp in-process, one persistent Context per node.

    Records every message the server received (``received``), the stage, round and nodes
    of every message exchange (``exchanges``), the last request each node got
    (``last_request``) and the secret-bearing client state after every call
    (``client_states``, with the pre-keys also in ``prekey_states``);
    ``tamper(stage, node, reply)`` may rewrite a reply.
    """

    def __init__(self, app: Any, num_nodes: int) -> None:
        self.app = app
        self.node_ids = [1000 + 7 * i for i in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self.received: list[Message] = []
        self.client_states: list[dict[str, Any]] = []
        self.prekey_states: list[dict[str, Any]] = []
        self.exchanges: list[tuple[int, str, list[int]]] = []
        self.last_request: dict[int, Message] = {}
        self.tamper: Callable[[str, int, Message], Message] | None = None

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        replies = []
        messages = list(messages)
        if messages:
            cfg = messages[0].content.config_records["config"]
            rnd = int(cfg["server-round"])  # type: ignore[arg-type]
            nodes = sorted(m.metadata.dst_node_id for m in messages)
            self.exchanges.append((rnd, str(cfg.get("stage", "")), nodes))
        for msg in messages:
            node = msg.metadata.dst_node_id
            ctx = self.contexts[node]
            self.last_request[node] = msg
            # nn.Dropout draws from torch's global RNG: seed it per node so that the
            # plaintext reference and the secure round train identically
            torch.manual_seed(node)
            try:
                reply = self.app(msg, ctx)
            except Exception as err:  # the simulation engine turns these into error replies
                reply = Message(Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            for name in ("secagg-state", "ckks-state", "secagg-next"):
                if name in ctx.state:
                    self.client_states.append(dict(ctx.state.config_records[name]))
            if "secagg-next" in ctx.state:
                self.prekey_states.append(dict(ctx.state.config_records["secagg-next"]))
            if self.tamper is not None and not reply.has_error():
                reply = self.tamper(str(msg.content["config"].get("stage", "")), node, reply)
            self.received.append(reply)
            replies.append(reply)
        return replies


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fed")
    data = make_synthetic(n=160, num_classes=3, modalities=MODS, seed=3)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))
    parts = [np.sort(p) for p in np.array_split(order, N_CLIENTS)]
    masks = []
    for i, p in enumerate(parts):
        mk = np.ones((len(p), len(MODS)), dtype=bool)
        if i == 0:
            mk[:, 1] = False  # client 0 has no audio
        if i == 2:
            mk[: len(p) // 2, 2] = False  # half of client 2's records lack text
        masks.append(mk)
    masks[3][:, 1] = False  # nobody but clients 1 and 2 hold audio
    write_federation_data(root / "train", data, parts, masks)
    model_spec = ModelSpec.from_data(data, hidden=8, embed_dim=8).to_dict()
    return {"root": root, "model_spec": model_spec}


#: threshold CKKS identities of this test federation (fresh OS randomness per session)
_IDENTITY, _ROSTER = generate_identities(range(N_CLIENTS))


#: the registry of secure round transports, as the run assembly builds it
TRANSPORTS = transports()


def _client_spec(federation: dict[str, Any], secure: SecureSettings) -> ClientSpec:
    return ClientSpec(
        data_dir=str(federation["root"] / "train"),
        state_dir=str(federation["root"] / "state"),
        model_spec=federation["model_spec"],
        settings=TrainSettings(epochs=1, batch_size=16, lr=0.05),
        seed=7,
        transports=(TRANSPORTS.get(secure.aggregation),),
        secure=secure,
        identities=_IDENTITY,
    )


def _strategy(name: str) -> ModalityFedAvg:
    fed = FederationConfig.model_validate({"strategy": name, "num_clients": N_CLIENTS})
    return build_strategy(
        name,
        fed,
        key_modality=parameter_modality,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=N_CLIENTS,
        min_evaluate_nodes=0,
        min_available_nodes=N_CLIENTS,
    )


def _train_round(secure: SecureSettings) -> SecureTrainRound:
    """One run's secure rounds, as the server loop builds them from the registry."""
    return SecureTrainRound(TRANSPORTS.get(secure.aggregation).server(secure), timeout_s=60.0)


def _secure(mode: str, **kw: Any) -> SecureSettings:
    base: dict[str, Any] = {
        "aggregation": mode,
        "threshold": 0.67,
        "clip_range": 4.0,
        "dropout_clients": (),
        "roster": _ROSTER if mode == "ckks" else {},  # SecAgg+ signs with one: `signed=True`
        "rounds": 1,
    }
    base.update(kw)
    base["dropout_clients"] = tuple(base["dropout_clients"])
    return SecureSettings(**base)


def _plain_replies(
    grid: FakeGrid, strategy: ModalityFedAvg, rnd: int, x: dict[str, np.ndarray]
) -> dict[int, Message]:
    """Plaintext train replies per partition id (the reference's inputs)."""
    msgs = list(strategy.configure_train(rnd, to_record(x), ConfigRecord(), cast(Grid, grid)))
    out = {}
    for reply in grid.send_and_receive(msgs):
        metrics = next(iter(reply.content.metric_records.values()))
        out[int(metrics["partition-id"])] = reply  # type: ignore[arg-type]
    return out


def _reference(
    strategy_name: str,
    replies: dict[int, Message],
    keep: Iterable[int],
    rnd: int,
    x: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The plaintext strategy's aggregate of the kept clients' replies."""
    strategy = _strategy(strategy_name)
    list(
        strategy.configure_train(
            rnd, to_record(x), ConfigRecord(), cast(Grid, FakeGrid(None, N_CLIENTS))
        )
    )
    record, _ = strategy.aggregate_train(rnd, [replies[i] for i in keep])
    assert record is not None
    return from_record(record)


def _rel_err(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], x: dict[str, np.ndarray]
) -> tuple[float, float]:
    """(max relative error of the update, relative error of the model), over all keys."""
    num = sum(float(np.sum((got[k].astype(np.float64) - want[k]) ** 2)) for k in want)
    upd = sum(float(np.sum((want[k].astype(np.float64) - x[k]) ** 2)) for k in want)
    mod = sum(float(np.sum(want[k].astype(np.float64) ** 2)) for k in want)
    return float(np.sqrt(num / upd)), float(np.sqrt(num / mod))


def _run(
    federation: dict[str, Any], mode: str, strategy_name: str, **secure_kw: Any
) -> dict[str, Any]:
    secure = _secure(mode, **secure_kw)
    app = make_client_app(_client_spec(federation, secure))
    grid = FakeGrid(app, N_CLIENTS)
    x = initial_arrays(federation["model_spec"], seed=1)
    strategy = _strategy(strategy_name)
    train_round = _train_round(secure)
    outcome = train_round(strategy, cast(Grid, grid), 1, x)
    return {"outcome": outcome, "grid": grid, "x": x, "app": app, "strategy": strategy,
            "transport": train_round.transport}  # fmt: skip


@pytest.mark.parametrize("mode", ["secagg+", "ckks"])
@pytest.mark.parametrize("strategy_name", ["fedavg", "fedadam"])
def test_secure_aggregate_matches_plaintext(
    federation: dict[str, Any], mode: str, strategy_name: str
) -> None:
    run = _run(federation, mode, strategy_name)
    outcome = run["outcome"]
    assert outcome.record is not None, outcome.note
    assert outcome.clients == N_CLIENTS
    replies = _plain_replies(run["grid"], _strategy(strategy_name), 1, run["x"])
    want = _reference(strategy_name, replies, range(N_CLIENTS), 1, run["x"])
    got = from_record(outcome.record)
    assert set(got) == set(want)
    upd_err, model_err = _rel_err(got, want, run["x"])
    assert upd_err < 1e-4 and model_err < 1e-5, (upd_err, model_err)
    # the audio encoder moved only by clients 1 and 2: check that the rule is modality-aware
    audio = [k for k in want if parameter_modality(k) == "audio"]
    fedavg_plain = {
        k: np.mean(
            [from_record(replies[i].content.array_records["arrays"])[k] for i in range(N_CLIENTS)],
            axis=0,
        )
        for k in audio
    }  # type: ignore[arg-type]
    if strategy_name == "fedavg":
        assert any(not np.allclose(want[k], fedavg_plain[k], atol=1e-6) for k in audio)
    # byte accounting: every client, both directions, real serialized sizes
    assert set(outcome.per_client) == set(range(N_CLIENTS))
    assert all(v["up"] > 0 and v["down"] > 0 for v in outcome.per_client.values())
    assert outcome.bytes_up == sum(v["up"] for v in outcome.per_client.values())
    sent_up = sum(
        message_to_proto(m).ByteSize()
        for m in run["grid"].received[: len(run["grid"].received) - N_CLIENTS]
    )
    assert outcome.bytes_up == sent_up
    assert outcome.metrics is not None and "train-total" in outcome.metrics


@pytest.mark.parametrize("mode", ["secagg+", "ckks"])
def test_dropout_after_masking_is_recovered(federation: dict[str, Any], mode: str) -> None:
    run = _run(federation, mode, "fedavg", dropout_clients=[1])
    outcome = run["outcome"]
    assert outcome.record is not None, outcome.note
    assert outcome.clients == N_CLIENTS - 1
    if mode == "secagg+":  # the round names its dropout: partition 1's node
        assert outcome.dropped_nodes == (run["grid"].node_ids[1],)
        assert [outcome.partitions[n] for n in outcome.dropped_nodes] == [1]
    replies = _plain_replies(run["grid"], _strategy("fedavg"), 1, run["x"])
    want = _reference("fedavg", replies, [0, 2, 3], 1, run["x"])
    upd_err, _ = _rel_err(from_record(outcome.record), want, run["x"])
    assert upd_err < 1e-4


@pytest.mark.parametrize("mode", ["secagg+", "ckks"])
def test_below_threshold_aborts_and_keeps_model(
    federation: dict[str, Any], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        run = _run(federation, mode, "fedavg", dropout_clients=[1, 2])
    outcome = run["outcome"]
    assert outcome.record is None
    assert (outcome.note and "threshold" in outcome.note) or "< 3" in (outcome.note or "")
    assert outcome.bytes_up > 0
    assert "aborted" in caplog.text


def test_signed_secagg_matches_plaintext_and_excludes_a_bad_signature(
    federation: dict[str, Any],
) -> None:
    """With a roster every advertisement is signed, no pre-key is issued, the sum is the
    plaintext one; a client whose signature fails is excluded by the server (with a roster)
    and the others still finish the round."""
    run = _run(federation, "secagg+", "fedavg", roster=_ROSTER)
    outcome, grid = run["outcome"], run["grid"]
    assert outcome.record is not None, outcome.note
    adverts = [decode_proto(m.content) for m in grid.received if not m.has_error()]
    adverts = [a for a in adverts if "pk_c" in a]
    assert sorted(int(a["identity"]) for a in adverts) == list(range(N_CLIENTS))
    assert all(isinstance(a["signature"], bytes) and len(a["signature"]) == 64 for a in adverts)
    assert not any("next_pk_c" in decode_proto(m.content) for m in grid.received
                   if not m.has_error())  # fmt: skip
    replies = _plain_replies(grid, _strategy("fedavg"), 1, run["x"])
    want = _reference("fedavg", replies, range(N_CLIENTS), 1, run["x"])
    upd_err, _ = _rel_err(from_record(outcome.record), want, run["x"])
    assert upd_err < 1e-4

    class RunGrid(FakeGrid):  # a grid that knows its run id, so the server checks too
        run = type("Run", (), {"run_id": 1})()  # as the messages carry

    secure = _secure("secagg+", roster=_ROSTER)
    grid = RunGrid(make_client_app(_client_spec(federation, secure)), N_CLIENTS)
    bad = grid.node_ids[2]

    def tamper(stage: str, node: int, reply: Message) -> Message:
        if stage == "advertise_keys" and node == bad:
            cfg = reply.content.config_records["secure"]
            sig = bytearray(cast(bytes, cfg["signature"]))
            sig[0] ^= 1
            cfg["signature"] = bytes(sig)
        return reply

    grid.tamper = tamper
    x = run["x"]
    outcome = _train_round(secure)(_strategy("fedavg"), cast(Grid, grid), 1, x)
    assert outcome.record is not None, outcome.note
    assert outcome.clients == N_CLIENTS - 1
    replies = _plain_replies(grid, _strategy("fedavg"), 1, x)
    want = _reference("fedavg", replies, [0, 1, 3], 1, x)
    assert _rel_err(from_record(outcome.record), want, x)[0] < 1e-4


def test_ckks_key_swapped_by_the_server_is_refused(
    federation: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An active server that replaces client 2's advertised X25519 key (to open the key
    shares sent to it) is caught by every receiver's signature check: the round aborts
    and the log names the client."""
    secure = _secure("ckks")
    grid = FakeGrid(make_client_app(_client_spec(federation, secure)), N_CLIENTS)
    target = grid.node_ids[2]

    def tamper(stage: str, node: int, reply: Message) -> Message:
        if stage == "advertise" and node == target:
            cfg = reply.content.config_records["secure"]
            cfg["pk"] = crypto.generate_keypair().public
        return reply

    grid.tamper = tamper
    x = initial_arrays(federation["model_spec"], seed=1)
    with caplog.at_level(logging.WARNING):
        outcome = _train_round(secure)(_strategy("fedavg"), cast(Grid, grid), 1, x)
    assert outcome.record is None
    assert "did not reveal" in (outcome.note or "")
    assert "client 2: bad signature on its advertise message" in caplog.text


def test_malformed_masked_vector_excluded(
    federation: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    secure = _secure("secagg+")
    app = make_client_app(_client_spec(federation, secure))
    grid = FakeGrid(app, N_CLIENTS)
    bad = grid.node_ids[3]

    def tamper(stage: str, node: int, reply: Message) -> Message:
        if stage == "collect_masked" and node == bad:
            arr = reply.content.array_records["secure-arrays"]
            masked = arr["masked"].numpy()
            arr["masked"] = type(arr["masked"])(masked[:-1].copy())
        return reply

    grid.tamper = tamper
    x = initial_arrays(federation["model_spec"], seed=1)
    with caplog.at_level(logging.WARNING):
        outcome = _train_round(secure)(_strategy("fedavg"), cast(Grid, grid), 1, x)
    assert outcome.record is not None
    assert outcome.clients == N_CLIENTS - 1
    assert "client 3 excluded: masked vector has shape" in caplog.text
    grid.tamper = None
    replies = _plain_replies(grid, _strategy("fedavg"), 1, x)
    want = _reference("fedavg", replies, [0, 1, 2], 1, x)
    assert _rel_err(from_record(outcome.record), want, x)[0] < 1e-4


def _secret_values(states: list[dict[str, Any]]) -> set[bytes]:
    keys = {"c_key", "s_key", "self_seed", "x25519", "keyring", "sigma", "own"}
    return {bytes(v) for st in states for k, v in st.items() if k in keys}


def _all_received_bytes(grid: FakeGrid) -> bytes:
    return b"".join(message_to_proto(m).SerializeToString() for m in grid.received)


@pytest.mark.parametrize("mode", ["secagg+", "ckks"])
def test_server_never_holds_an_update_or_a_secret(
    federation: dict[str, Any], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        run = _run(federation, mode, "fedavg")
    grid, outcome = run["grid"], run["outcome"]
    secrets = _secret_values(grid.client_states)
    assert len(secrets) >= N_CLIENTS + 1
    wire = _all_received_bytes(grid)
    stored = pickle.dumps((outcome, run["strategy"].state_arrays(), run["strategy"].global_arrays))
    for s in secrets:
        chunk = s[len(s) // 2 - 16 : len(s) // 2 + 16]  # a serialized keyring starts with a header
        assert chunk not in wire
        assert chunk not in stored
        assert chunk.hex() not in caplog.text and repr(chunk) not in caplog.text

    replies = _plain_replies(grid, _strategy("fedavg"), 1, run["x"])
    if mode == "secagg+":
        # masked vectors are uncorrelated with the encoded contributions they hide
        shapes = {k: v.shape for k, v in run["x"].items()}
        layout = PayloadLayout.from_arrays(
            payload_template(shapes), int_template(), clip=4.0, num_clients=N_CLIENTS
        )
        masked = [
            decode_proto(m.content)["masked"]
            for m in grid.received
            if not m.has_error() and "masked" in m.content.array_records.get("secure-arrays", {})
        ]
        assert len(masked) == N_CLIENTS
        for pid, reply in replies.items():
            metrics: dict[str, Any] = dict(next(iter(reply.content.metric_records.values())))
            c = make_contribution(
                run["x"],
                from_record(reply.content.array_records["arrays"]),
                metrics,
                key_modality=parameter_modality,
                weight_scale=1000.0,
            )
            enc = layout.encode(c.floats, c.ints, rng=np.random.default_rng(0)).astype(np.float64)
            for m in masked:
                corr = np.corrcoef(enc, m.astype(np.float64))[0, 1]
                assert abs(corr) < 0.1, (pid, corr)
        # the pre-keys for the next round: public halves on the wire, private halves only
        # in the node's Context (their absence from the wire is checked above)
        sent_ahead = {
            (bytes(p["next_pk_c"]), bytes(p["next_pk_s"]))
            for m in grid.received
            if not m.has_error() and "next_pk_c" in m.content.config_records.get("secure", {})
            for p in [decode_proto(m.content)]
        }
        held = {
            (
                crypto.public_from_private_bytes(p["c_key"]),
                crypto.public_from_private_bytes(p["s_key"]),
            )
            for p in grid.prekey_states
        }
        assert len(sent_ahead) == N_CLIENTS and held == sent_ahead
        assert set(run["transport"].prekeys.values()) == sent_ahead  # public only
    else:
        # threshold CKKS: every holder kept a Shamir share of the collective secret, none of
        # which (nor the shares sent to it) crossed the server in the clear; and every
        # decryption share the server received was flooded (Li & Micciancio 2021)
        sigmas = [bytes(st["sigma"]) for st in grid.client_states if "sigma" in st]
        assert len({*sigmas}) == N_CLIENTS
        shares = [
            decode_proto(m.content)
            for m in grid.received
            if not m.has_error() and "shares" in m.content.config_records.get("secure", {})
        ]
        assert len(shares) == 3  # t = ceil(0.67 * 4) holders decrypted


# ------------------------------------------------------------------ pre-keys (SecAgg+)

ROUND_STAGES = ("advertise_keys", "share_keys", "collect_masked", "unmask")


def _secure_rounds(
    federation: dict[str, Any],
    rounds: int,
    *,
    before: Callable[[int, FakeGrid], None] | None = None,
    **secure_kw: Any,
) -> dict[str, Any]:
    """``rounds`` consecutive SecAgg+ FedAvg rounds on one grid and one strategy (one run);
    ``before(rnd, grid)`` runs ahead of each round (tamper hooks, Context edits)."""
    secure = _secure("secagg+", **secure_kw)
    grid = FakeGrid(make_client_app(_client_spec(federation, secure)), N_CLIENTS)
    strategy = _strategy("fedavg")
    x = initial_arrays(federation["model_spec"], seed=1)
    inputs, outcomes = [], []
    train_round = _train_round(secure)  # one run: its transport keeps the pre-keys
    for rnd in range(1, rounds + 1):
        if before is not None:
            before(rnd, grid)
        inputs.append(x)
        outcome = train_round(strategy, cast(Grid, grid), rnd, x)
        outcomes.append(outcome)
        if outcome.record is not None:
            x = from_record(outcome.record)
    grid.tamper = None
    return {"grid": grid, "inputs": inputs, "outcomes": outcomes}


def _stages(grid: FakeGrid, rnd: int) -> list[tuple[str, list[int]]]:
    """The SecAgg+ message exchanges of round ``rnd``: (stage, nodes), in order."""
    return [(s, nodes) for r, s, nodes in grid.exchanges if r == rnd and s in ROUND_STAGES]


def _check_plaintext(run: dict[str, Any], rnd: int, keep: Iterable[int]) -> None:
    """Round ``rnd``'s secure aggregate equals the plaintext FedAvg of the kept clients."""
    outcome, x = run["outcomes"][rnd - 1], run["inputs"][rnd - 1]
    assert outcome.record is not None, outcome.note
    replies = _plain_replies(run["grid"], _strategy("fedavg"), rnd, x)
    want = _reference("fedavg", replies, keep, rnd, x)
    upd_err, model_err = _rel_err(from_record(outcome.record), want, x)
    assert upd_err < 1e-4 and model_err < 1e-5, (rnd, upd_err, model_err)


def test_prekeys_save_the_advertise_exchange_after_the_first_round(
    federation: dict[str, Any],
) -> None:
    run = _secure_rounds(federation, 3)
    grid = run["grid"]
    assert [s for s, _ in _stages(grid, 1)] == list(ROUND_STAGES)
    for rnd in (2, 3):
        assert [s for s, _ in _stages(grid, rnd)] == list(ROUND_STAGES[1:]), rnd
        assert all(nodes == sorted(grid.node_ids) for _, nodes in _stages(grid, rnd))
        assert run["outcomes"][rnd - 1].clients == N_CLIENTS
    # every round's pre-keys are fresh: no public key reappears in a later round
    sent_ahead = [
        decode_proto(m.content)["next_pk_s"]
        for m in grid.received
        if not m.has_error() and "next_pk_s" in m.content.config_records.get("secure", {})
    ]
    assert len(sent_ahead) == 3 * N_CLIENTS and len(set(sent_ahead)) == len(sent_ahead)
    for rnd in (1, 2, 3):
        _check_plaintext(run, rnd, range(N_CLIENTS))


def _drop_at_masking(node_index: int, in_round: int) -> Callable[[int, FakeGrid], None]:
    """Before-hook: in round ``in_round``, the masked input of that node never arrives."""

    def before(rnd: int, grid: FakeGrid) -> None:
        bad = grid.node_ids[node_index]

        def tamper(stage: str, node: int, reply: Message) -> Message:
            if stage == "collect_masked" and node == bad:
                del reply.content["secure"]  # undecodable: the server sees a dropout
            return reply

        grid.tamper = tamper if rnd == in_round else None

    return before


def test_node_dropped_last_round_gets_an_advertise_exchange(federation: dict[str, Any]) -> None:
    run = _secure_rounds(federation, 2, before=_drop_at_masking(1, in_round=1))
    grid = run["grid"]
    assert run["outcomes"][0].clients == N_CLIENTS - 1
    # round 2: only the node without pre-keys is asked to advertise; then all four stages
    stages = _stages(grid, 2)
    assert stages[0] == ("advertise_keys", [grid.node_ids[1]])
    assert [s for s, _ in stages[1:]] == list(ROUND_STAGES[1:])
    assert all(nodes == sorted(grid.node_ids) for _, nodes in stages[1:])
    assert run["outcomes"][1].clients == N_CLIENTS
    _check_plaintext(run, 2, range(N_CLIENTS))


def test_prekeys_are_single_use(
    federation: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    refused: list[str] = []

    def before(rnd: int, grid: FakeGrid) -> None:
        node = grid.node_ids[2]
        if rnd == 2:
            # replay the share_keys request right after the node consumed its pre-keys

            def tamper(stage: str, n: int, reply: Message) -> Message:
                if stage == "share_keys" and n == node:
                    with pytest.raises(ProtocolViolation, match="pre-keys") as err:
                        grid.app(grid.last_request[node], grid.contexts[node])
                    refused.append(str(err.value))
                return reply

            grid.tamper = tamper
        if rnd == 3:
            grid.tamper = None
            del grid.contexts[node].state["secagg-next"]  # e.g. the node lost its Context

    with caplog.at_level(logging.WARNING):
        run = _secure_rounds(federation, 3, before=before)
    grid = run["grid"]
    assert len(refused) == 1
    assert run["outcomes"][1].clients == N_CLIENTS  # the replay changed nothing
    _check_plaintext(run, 2, range(N_CLIENTS))
    # round 3: the server used the node's pre-keys, the node holds none: it refuses
    # share_keys with an error reply, which the server treats as a dropout
    assert [s for s, _ in _stages(grid, 3)] == list(ROUND_STAGES[1:])
    assert "pre-keys it does not hold" in caplog.text
    outcome = run["outcomes"][2]
    assert outcome.record is not None and outcome.clients == N_CLIENTS - 1
    _check_plaintext(run, 3, [0, 1, 3])


def test_prekeys_off_keeps_four_exchanges(federation: dict[str, Any]) -> None:
    run = _secure_rounds(federation, 2, prekeys=False)
    grid = run["grid"]
    for rnd in (1, 2):
        assert [s for s, _ in _stages(grid, rnd)] == list(ROUND_STAGES), rnd
        assert run["outcomes"][rnd - 1].clients == N_CLIENTS
    assert not grid.prekey_states
    assert not any(
        "next_pk_c" in m.content.config_records.get("secure", {})
        for m in grid.received
        if not m.has_error()
    )


# ----------------------------------------------------------------------------- graph


@pytest.fixture(scope="module")
def federation8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fed8")
    data = make_synthetic(n=240, num_classes=3, modalities=MODS, seed=4)
    parts = [np.sort(p) for p in np.array_split(np.random.default_rng(1).permutation(240), 8)]
    masks = [np.ones((len(p), len(MODS)), dtype=bool) for p in parts]
    write_federation_data(root / "train", data, parts, masks)
    model_spec = ModelSpec.from_data(data, hidden=8, embed_dim=8).to_dict()
    return {"root": root, "model_spec": model_spec}


def test_two_of_eight_dropouts_complete_over_flower(federation8: dict[str, Any]) -> None:
    """threshold 0.67 of 8 = 6: the n - t = 2 dropouts of the fault injection are recovered
    and the aggregate is the plaintext FedAvg of the other six."""
    n = 8
    secure = _secure("secagg+", dropout_clients=[1, 5])
    grid = FakeGrid(make_client_app(_client_spec(federation8, secure)), n)
    fed = FederationConfig.model_validate({"strategy": "fedavg", "num_clients": n})
    kw = {"key_modality": parameter_modality, "fraction_train": 1.0, "fraction_evaluate": 0.0}
    strategy = build_strategy(
        "fedavg", fed, **kw, min_train_nodes=n, min_evaluate_nodes=0, min_available_nodes=n
    )
    x = initial_arrays(federation8["model_spec"], seed=1)
    outcome = _train_round(secure)(strategy, cast(Grid, grid), 1, x)
    assert outcome.record is not None, outcome.note
    assert outcome.clients == n - 2
    reference = build_strategy(
        "fedavg", fed, **kw, min_train_nodes=n, min_evaluate_nodes=0, min_available_nodes=n
    )
    msgs = list(reference.configure_train(1, to_record(x), ConfigRecord(), cast(Grid, grid)))
    replies = {}
    for reply in grid.send_and_receive(msgs):
        metrics = next(iter(reply.content.metric_records.values()))
        replies[int(metrics["partition-id"])] = reply  # type: ignore[arg-type]
    record, _ = reference.aggregate_train(1, [replies[i] for i in (0, 2, 3, 4, 6, 7)])
    assert record is not None
    upd_err, model_err = _rel_err(from_record(outcome.record), from_record(record), x)
    # 32-bit fixed point over 8 clients; any other set of clients is off by O(0.1)
    assert upd_err < 1e-3 and model_err < 1e-5


def test_sparse_graph_over_flower_fixes_the_seed_by_commit_reveal(
    federation: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse graph (forced here at n = 4: degree 2, threshold 2) adds the reveal exchange,
    goes without pre-keys, and every client derives the server's graph from the reveals."""
    from umbra.secure.secagg import client, config
    from umbra.secure.secagg.graph import GraphParameters

    for module in (config, client):  # the server's parameters and each client's check
        monkeypatch.setattr(
            module, "graph_parameters", lambda n, t: GraphParameters(2, 2, False, 0.0, 0.0)
        )
    run = _secure_rounds(federation, 2)
    grid = run["grid"]
    stages = ("advertise_keys", "reveal_seed", "share_keys", "collect_masked", "unmask")
    for rnd in (1, 2):
        got = [s for r, s, _ in grid.exchanges if r == rnd and s in stages]
        assert got == list(stages), rnd
        assert run["outcomes"][rnd - 1].clients == N_CLIENTS
        _check_plaintext(run, rnd, range(N_CLIENTS))
    graphs = [st for st in grid.client_states if "graph.ids" in st and "roster" in st]
    assert graphs  # the clients stored the roster and the commitments between stages
    assert not grid.prekey_states


def test_clients_refuse_a_server_that_lowers_the_threshold(
    federation: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The organisations configured 0.9 (t = 4 of 4); a server asking for 0.67 (t = 3)
    gets no key advertisement and the round aborts before any share exists."""
    clients_secure = _secure("secagg+", threshold=0.9)
    grid = FakeGrid(make_client_app(_client_spec(federation, clients_secure)), 4)
    x = initial_arrays(federation["model_spec"], seed=1)
    with caplog.at_level(logging.WARNING):
        outcome = _train_round(_secure("secagg+"))(_strategy("fedavg"), cast(Grid, grid), 1, x)
    assert outcome.record is None
    assert "0 valid key advertisements < threshold 3" in (outcome.note or "")
    assert "threshold 3 of 4 is below the configured 0.9" in caplog.text
    assert not any(s == "share_keys" for _, s, _ in grid.exchanges)
