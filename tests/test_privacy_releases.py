"""What the server may see under DP, and what each observer's ε is.

- replies and info answers under DP carry only what the zero-out relation keeps public
  (the real ClientApp, driven through the real round with a fake Grid);
- ε per observer against dp-accounting computed here, independently;
- tabular standardisation that does not couple records under DP;
- resuming refuses a ledger that does not cover the checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from umbra.config import FederationConfig, PrivacyConfig, load_config
from umbra.data.sources.synthetic import make_synthetic
from umbra.errors import ConfigError, ResumeError
from umbra.federation.checkpoint import save_checkpoint
from umbra.federation.client_app import ClientSpec, make_client_app, public_metrics
from umbra.federation.client_data import write_federation_data
from umbra.federation.rounds import PlainTrainRound
from umbra.federation.server_app import initial_arrays, query_clients
from umbra.federation.strategies import build_strategy
from umbra.federation.train import TrainSettings
from umbra.models import ModelSpec, MultimodalNet, parameter_groups, parameter_modality
from umbra.privacy.controller import PrivacyController
from umbra.privacy.ledger import (
    LedgerContents,
    PrivacyLedger,
    Release,
    check_coverage,
    ledger_digest,
    read_ledger,
)
from umbra.privacy.observers import observer_epsilons, observer_views
from umbra.privacy.round_dp import RoundDP, poisson_client_sample

N_CLIENTS = 4
MODS = ("image", "audio", "text")
UMBRA = [sys.executable, "-m", "umbra.cli"]


class FakeGrid:
    """Delivers messages to the real ClientApp in-process and keeps every reply."""

    def __init__(self, app: Any, num_nodes: int, node_config: dict[int, dict[str, Any]]) -> None:
        self.app = app
        self.node_ids = [500 + 3 * i for i in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": i, **node_config.get(i, {})},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            torch.manual_seed(msg.metadata.dst_node_id)
            reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            self.received.append(reply)
            replies.append(reply)
        return replies


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fed")
    data = make_synthetic(n=120, num_classes=3, modalities=MODS, seed=5)
    parts = [np.arange(i, 120, N_CLIENTS) for i in range(N_CLIENTS)]
    masks = [np.ones((len(p), len(MODS)), dtype=bool) for p in parts]
    masks[0][:, 1] = False  # client 0 holds no audio
    masks[2][:7, 2] = False  # 7 of client 2's records lack text
    write_federation_data(root / "train", data, parts, masks)
    spec = ModelSpec.from_data(data, hidden=8, embed_dim=8).to_dict()
    truth = {
        i: {"n": len(p), "audio": int(m[:, 1].sum()), "text": int(m[:, 2].sum())}
        for i, (p, m) in enumerate(zip(parts, masks, strict=True))
    }
    return {"root": root, "model_spec": spec, "truth": truth}


def _client_app(federation: dict[str, Any], unit: str, state: Path) -> Any:
    return make_client_app(
        ClientSpec(
            data_dir=str(federation["root"] / "train"),
            state_dir=str(state),
            model_spec=federation["model_spec"],
            settings=TrainSettings(epochs=1, batch_size=10, lr=0.05),
            seed=3,
            privacy_unit=unit,
        )
    )


def _dp_round(federation: dict[str, Any], unit: str, tmp_path: Path) -> FakeGrid:
    """One real plaintext round under DP ``unit``; returns the grid with every reply."""
    grid = FakeGrid(_client_app(federation, unit, tmp_path / "state"), N_CLIENTS, {})
    strategy = build_strategy(
        "fedavg",
        FederationConfig.model_validate({"num_clients": N_CLIENTS}),
        key_modality=parameter_modality,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_evaluate_nodes=0,
        min_available_nodes=1,
    )
    privacy = PrivacyConfig.model_validate(
        {"mode": unit, "epsilon": 20.0, "delta": 1e-3, "client_rate": 1.0}
    )
    model = MultimodalNet(ModelSpec.from_dict(federation["model_spec"]))
    ctl = PrivacyController(
        privacy,
        groups=list(parameter_groups(model)),
        rounds=2,
        batch_size=10,
        local_epochs=1.0,
        num_clients=N_CLIENTS,
        ledger_path=tmp_path / "ledger.jsonl",
    )
    info = query_clients(cast(Grid, grid), 60.0)  # the real info query
    ctl.plan_clients({pid: n for pid, n in info.values()})
    dp = RoundDP(ctl, {node: pid for node, (pid, _) in info.items()})
    x = initial_arrays(federation["model_spec"], seed=1)
    out = PlainTrainRound(dp=dp, timeout_s=60.0)(strategy, cast(Grid, grid), 1, x)
    assert out.record is not None and out.clients == N_CLIENTS
    return grid


def _metrics(msg: Message) -> dict[str, Any]:
    return dict(next(iter(msg.content.metric_records.values())))


def test_example_dp_replies_reveal_only_public_counts(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    grid = _dp_round(federation, "example", tmp_path)
    truth = federation["truth"]
    assert len(grid.received) == 2 * N_CLIENTS  # info answers, then train replies
    for reply in grid.received:
        m = _metrics(reply)
        pid = int(m["partition-id"])
        # record count: public under zero-out; per-modality counts are NOT the true ones
        assert m["num-examples"] == truth[pid]["n"]
        assert m.get("n-audio") in (None, truth[pid]["n"])
        assert m.get("n-text") in (None, truth[pid]["n"])
        assert not any(k.startswith("train-") for k in m), m  # no loss, no batch sizes
        assert set(m) <= {
            "partition-id",
            "num-examples",
            "n-image",
            "n-audio",
            "n-text",
            "steps",
            "dp-unweighted",
        }
    # the counts the server would otherwise have learnt differ from what it got
    assert truth[0]["audio"] == 0 and truth[2]["text"] == truth[2]["n"] - 7


def test_client_dp_replies_reveal_nothing_but_the_party(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    grid = _dp_round(federation, "client", tmp_path)
    assert len(grid.received) == 2 * N_CLIENTS
    info, train = grid.received[:N_CLIENTS], grid.received[N_CLIENTS:]
    assert all(set(_metrics(r)) == {"partition-id"} for r in info)
    # no loss, no count, no update norm (it is not noised): the clipped update only
    assert all(set(_metrics(r)) == {"partition-id", "dp-unweighted"} for r in train)


def test_without_dp_replies_keep_their_metrics(federation: dict[str, Any], tmp_path: Path) -> None:
    """The reference behaviour the DP cases remove (so those tests can fail)."""
    m = public_metrics(
        "none",
        partition_id=0,
        num_examples=30,
        counts={"image": 30, "audio": 0},
        metrics={"train-total": 1.5},
    )
    assert m == {
        "num-examples": 30,
        "partition-id": 0,
        "n-image": 30,
        "n-audio": 0,
        "train-total": 1.5,
    }
    with pytest.raises(ValueError, match="privacy unit"):
        public_metrics("record", partition_id=0, num_examples=1, counts={}, metrics={})


def test_dp_replies_keep_the_public_sensitivities_the_secure_mods_read() -> None:
    """Under DP the local train reply keeps the per-group sensitivities (functions of public
    clip norms, lr and record count) that SecAgg+'s integer noise needs, and nothing private."""
    m = public_metrics(
        "example",
        partition_id=3,
        num_examples=30,
        counts={"image": 20},
        metrics={"dp-sens-image": 0.25, "dp-sens-shared": 0.5, "train-total": 1.5},
    )
    assert m == {
        "partition-id": 3,
        "num-examples": 30,
        "n-image": 30,
        "dp-sens-image": 0.25,
        "dp-sens-shared": 0.5,
    }


def test_client_sample_is_poisson_from_the_os() -> None:
    """Mean and spread of the CSPRNG sample match Binomial(n, q); no seed makes it repeat."""
    nodes = list(range(200))
    sizes = np.array([len(poisson_client_sample(nodes, 0.3)) for _ in range(400)])
    assert abs(sizes.mean() - 60) < 4 * np.sqrt(200 * 0.3 * 0.7 / 400)
    assert abs(sizes.std() - np.sqrt(200 * 0.3 * 0.7)) < 1.5
    np.random.seed(0)
    a = poisson_client_sample(nodes, 0.5)
    np.random.seed(0)
    assert poisson_client_sample(nodes, 0.5) != a


# --------------------------------------------------------------------------- SCAFFOLD state


def test_scaffold_state_stays_in_the_nodes_folder(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    run_dir, own = tmp_path / "run", tmp_path / "node1-own"
    run_dir.mkdir()
    app = _client_app(federation, "none", tmp_path / "client-side")
    grid = FakeGrid(app, N_CLIENTS, {1: {"state-dir": str(own)}})
    strategy = build_strategy(
        "scaffold",
        FederationConfig.model_validate({"num_clients": N_CLIENTS, "strategy": "scaffold"}),
        key_modality=parameter_modality,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=N_CLIENTS,
        min_evaluate_nodes=0,
        min_available_nodes=N_CLIENTS,
    )
    x = initial_arrays(federation["model_spec"], seed=1)
    out = PlainTrainRound(timeout_s=60.0)(strategy, cast(Grid, grid), 1, x)
    assert out.record is not None
    assert (own / "client_1" / "scaffold_r1.npz").is_file()
    for c in (0, 2, 3):
        assert (tmp_path / "client-side" / f"client_{c}" / "scaffold_r1.npz").is_file()
    assert not list(run_dir.rglob("*"))


def test_client_state_root_is_outside_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from umbra.run.folder import client_state_root

    run_dir = tmp_path / "run"
    monkeypatch.setenv("UMBRA_CLIENT_STATE", str(tmp_path / "clients"))
    root = client_state_root(run_dir)
    assert root.parent == (tmp_path / "clients").resolve()
    assert root == client_state_root(tmp_path / "x" / ".." / "run")  # stable for resume
    monkeypatch.setenv("UMBRA_CLIENT_STATE", str(run_dir / "inside"))
    with pytest.raises(ConfigError, match="inside the run folder"):
        client_state_root(run_dir)


# --------------------------------------------------------------------------- ε per observer


def _pld_epsilon(event: dp_event.DpEvent, delta: float) -> float:
    acc = PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def _client_ledger(q: float, sigma: float, rounds: int) -> LedgerContents:
    rel = [
        Release.dpsgd(
            round=r,
            party="server",
            sample_rate=q,
            steps=1,
            noise_multipliers={"all": sigma},
            clip_norms={"all": 1.0},
        )
        for r in range(1, rounds + 1)
    ]
    return LedgerContents(unit="client", delta=1e-5, accountant="pld", releases=rel)


@pytest.mark.parametrize(
    ("noise", "secure"), [("distributed", "secagg+"), ("central", "none"), ("central", "secagg+")]
)
def test_client_level_epsilon_per_observer_against_dp_accounting(noise: str, secure: str) -> None:
    q, sigma, rounds = 0.25, 1.3, 12
    got = observer_epsilons(
        _client_ledger(q, sigma, rounds),
        observer_views(unit="client", noise=noise, secure=secure),
    )
    amplified = _pld_epsilon(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds
        ),
        1e-5,
    )
    plain = _pld_epsilon(
        dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma), rounds), 1e-5
    )
    assert plain > 1.5 * amplified  # the difference matters
    # the model holder never sees the sample
    assert got["model_holder"]["epsilon"]["total"] == pytest.approx(amplified, rel=1e-6)
    assert got["model_holder"]["amplified"] is True
    # the server draws the sample: no amplification; with central noise no ε at all
    if noise == "central":
        assert got["server"]["epsilon"] is None
    else:
        assert got["server"]["epsilon"]["total"] == pytest.approx(plain, rel=1e-6)
        assert got["server"]["amplified"] is False
    # other organisations learn the participants under secure aggregation
    want_other = plain if secure != "none" else amplified
    assert got["other_clients"]["epsilon"]["total"] == pytest.approx(want_other, rel=1e-6)


def test_example_level_epsilon_is_amplified_for_every_observer() -> None:
    rel = [
        Release.dpsgd(
            round=r,
            party=str(c),
            sample_rate=0.05 * (c + 1),
            steps=20,
            noise_multipliers={"image": 1.1, "text": 1.4},
            clip_norms={"image": 1.0, "text": 1.0},
        )
        for r in (1, 2)
        for c in range(3)
    ]
    contents = LedgerContents(unit="example", delta=1e-5, accountant="pld", releases=rel)
    got = observer_epsilons(
        contents, observer_views(unit="example", noise="central", secure="none")
    )
    sigma_eff = (1.1**-2 + 1.4**-2) ** -0.5
    worst = _pld_epsilon(  # client 2 has the largest rate
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(0.15, dp_event.GaussianDpEvent(sigma_eff)), 40
        ),
        1e-5,
    )
    for name in ("server", "other_clients", "model_holder"):
        assert got[name]["amplified"] is True
        assert got[name]["epsilon"]["total"] == pytest.approx(worst, rel=1e-6)


# --------------------------------------------------------------------------- tabular


def _tab_manifest(path: Path, first: float) -> Path:
    rng = np.random.default_rng(4)
    lines = ["id,client,label,tab:a,tab:b"]
    for i in range(60):
        a = first if i == 0 else float(rng.normal(5, 2))
        lines.append(f"r{i},{'ab'[i % 2]},{i % 3},{a:.6f},{rng.normal(-1, 3):.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepared(path: Path, *sets: str) -> Any:
    from umbra.run.prepare import prepare_data

    cfg = load_config(
        "smoke",
        overrides=[
            "data.source=manifest",
            f"data.manifest={path}",
            "federation.num_clients=2",
            "data.test_fraction=0.2",
            *sets,
        ],
    )
    return prepare_data(cfg)


def _features_of(prep: Any, record: str) -> np.ndarray:
    i = list(prep.train.ids).index(record)
    return np.asarray(prep.train.features["tabular"][i])


def test_per_client_standardisation_is_refused_under_dp(tmp_path: Path) -> None:
    path = _tab_manifest(tmp_path / "m.csv", 1.0)
    with pytest.raises(ConfigError, match=r"per-client.*differential privacy"):
        _prepared(
            path, "privacy.mode=example", "privacy.delta=1e-3", "data.tabular_stats=per-client"
        )


@pytest.mark.parametrize("stats", ["identity", "{a = [5.0, 2.0], b = [-1.0, 3.0]}", "file"])
def test_tabular_features_under_dp_use_no_other_record(tmp_path: Path, stats: str) -> None:
    """Changing one record's value leaves every other record's features unchanged."""
    if stats == "file":
        (tmp_path / "stats.json").write_text(json.dumps({"tab:a": [5.0, 2.0], "b": [-1.0, 3.0]}))
        stats = "stats.json"  # relative to the manifest
    dp = ["privacy.mode=example", "privacy.delta=1e-3"]
    a = _prepared(_tab_manifest(tmp_path / "m1.csv", 1.0), *dp, f"data.tabular_stats={stats}")
    b = _prepared(_tab_manifest(tmp_path / "m2.csv", 99.0), *dp, f"data.tabular_stats={stats}")
    others = [r for r in a.train.ids if r != "r0"]
    for r in others[:20]:
        np.testing.assert_array_equal(_features_of(a, r), _features_of(b, r))
    raw = np.array([[1.0, 0.0]])
    if stats == "identity":
        assert a.extra["tabular_standardization"] == "identity"
        assert _features_of(a, "r0")[0] == pytest.approx(1.0)
    else:
        assert a.extra["tabular_standardization"] == "public"
        assert _features_of(a, "r0")[0] == pytest.approx((raw[0, 0] - 5.0) / 2.0)


def test_per_client_standardisation_couples_records_without_dp(tmp_path: Path) -> None:
    """Why it is refused under DP: one record moves the others' features (old default)."""
    a = _prepared(_tab_manifest(tmp_path / "m1.csv", 1.0), "data.tabular_stats=per-client")
    b = _prepared(_tab_manifest(tmp_path / "m2.csv", 99.0), "data.tabular_stats=per-client")
    moved = [
        r
        for r in a.train.ids
        if r != "r0" and not np.allclose(_features_of(a, r), _features_of(b, r))
    ]
    assert len(moved) > 10


# --------------------------------------------------------------------------- resume


def _dp_run_folder(root: Path, rounds: int = 2) -> Path:
    """A run folder as the server leaves it after ``rounds`` client-level DP rounds."""
    cfg = load_config("smoke", overrides=["privacy.mode=client", "privacy.epsilon=8"])
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    led = PrivacyLedger(root / "ledger.jsonl", unit="client", delta=cfg.privacy.delta)
    for r in range(1, rounds + 1):
        led.record(
            Release.dpsgd(
                round=r,
                party="server",
                sample_rate=1.0,
                steps=1,
                noise_multipliers={"all": 1.0},
                clip_norms={"all": 1.0},
            )
        )
        save_checkpoint(
            root / "checkpoints",
            server_round=r,
            arrays={"w": np.zeros(2, np.float32)},
            strategy={},
            state={"history": [], "ledger": ledger_digest(root / "ledger.jsonl")},
        )
    return root


def _resume(run: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*UMBRA, "run", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_with_a_truncated_ledger_is_refused(tmp_path: Path) -> None:
    run = _dp_run_folder(tmp_path / "run")
    data = (run / "ledger.jsonl").read_bytes()
    (run / "ledger.jsonl").write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])
    _one_line_exit_2(_resume(run), "shorter")


def test_resume_with_a_missing_ledger_is_refused(tmp_path: Path) -> None:
    run = _dp_run_folder(tmp_path / "run")
    (run / "ledger.jsonl").unlink()
    _one_line_exit_2(_resume(run), "ledger")


def test_ledger_coverage_checks(tmp_path: Path) -> None:
    run = _dp_run_folder(tmp_path / "run", rounds=3)
    path = run / "ledger.jsonl"
    digest = json.loads((run / "checkpoints" / "round_0003" / "state.json").read_text())["ledger"]
    check_coverage(path, through_round=3, digest=digest)  # intact: fine
    with pytest.raises(ResumeError, match=r"delta = 1e-05, the run.s config 0\.001"):
        check_coverage(path, through_round=3, header={"unit": "client", "delta": 1e-3})
    with path.open("a") as f:  # releases appended after the checkpoint are fine
        f.write(
            json.dumps(
                {
                    "type": "release",
                    "release": "x",
                    "round": 4,
                    "party": "server",
                    "group": "all",
                    "mechanism": "poisson_gaussian",
                    "noise_multiplier": 1.0,
                    "sample_rate": 1.0,
                    "steps": 1,
                    "clip_norm": 1.0,
                }
            )
            + "\n"
        )
    check_coverage(path, through_round=3, digest=digest)
    lines = path.read_text().splitlines()
    # a round deleted from the middle, with or without the checkpoint's digest
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    assert {r.round for r in read_ledger(path).releases} == {1, 3, 4}
    with pytest.raises(ResumeError, match=r"round\(s\) 2"):
        check_coverage(path, through_round=3)
    with pytest.raises(ResumeError, match=r"shorter|altered"):
        check_coverage(path, through_round=3, digest=digest)
    # same length, one number changed
    path.write_text("\n".join(lines) + "\n")
    path.write_text(
        path.read_text().replace('"noise_multiplier": 1.0', '"noise_multiplier": 9.0', 1)
    )
    with pytest.raises(ResumeError, match="altered"):
        check_coverage(path, through_round=3, digest=digest)


# --------------------------------------------------------------------------- real runs

SMOKE = ["--preset", "smoke", "--set", "run.progress=false", "--set", "federation.rounds=2"]


def _umbra(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*UMBRA, *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


CLIENT_DP = [
    *("--set", "privacy.mode=client", "--set", "privacy.epsilon=8"),
    *("--set", "privacy.client_rate=0.5", "--set", "privacy.noise_multiplier=1.0"),
]


@pytest.fixture(scope="module")
def client_dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real client-level DP smoke run: central noise, half the clients per round."""
    out = tmp_path_factory.mktemp("cdp") / "run"
    _umbra("run", *SMOKE, *CLIENT_DP, "--out", str(out),
           env={"UMBRA_CLIENT_STATE": str(out.parent / "clients")})  # fmt: skip
    return out


@pytest.mark.slow
def test_real_run_epsilon_per_observer(client_dp_run: Path) -> None:
    res = json.loads((client_dp_run / "results.json").read_text())
    p = res["privacy"]
    assert p["adjacency"] == "zero-out" and p["epsilon_observer"] == "model_holder"
    rounds = len(read_ledger(client_dp_run / "ledger.jsonl").releases)
    assert rounds == 2
    q, sigma = p["client_rate"], p["noise_multiplier"]
    want = _pld_epsilon(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds
        ),
        p["delta"],
    )
    obs = p["observers"]
    assert set(obs) == {"server", "other_clients", "model_holder"}
    assert obs["model_holder"]["epsilon"]["total"] == pytest.approx(want, rel=1e-6)
    assert p["epsilon"]["total"] == pytest.approx(want, rel=1e-6)  # the budgeted one
    assert obs["other_clients"]["epsilon"]["total"] == pytest.approx(want, rel=1e-6)
    assert obs["server"]["epsilon"] is None  # it added the noise itself
    assert all(r["train_loss"] is None for r in res["rounds"])  # never sent under DP
    # un-noised per-client statistics stay out of results.json (client level: even sizes)
    assert [set(c) for c in res["data"]["clients"]] == [{"client"}] * 4
    assert "withheld" in res["data"]["clients_withheld"]
    shown = _umbra("privacy", "ledger", str(client_dp_run)).stdout
    assert "ε per observer" in shown and "none holds" in shown and "model holder" in shown
    assert "ledger ε matches results.json" in shown  # client level: "all" vs per modality


@pytest.mark.slow
def test_report_sentences_match_a_real_run(client_dp_run: Path) -> None:
    from umbra.report import privacy_statement, summarize_ledger
    from umbra.report.format import fmt_eps

    res = json.loads((client_dp_run / "results.json").read_text())
    ledger = summarize_ledger(client_dp_run / "ledger.jsonl")
    parts = {p.title: " ".join(p.sentences) for p in privacy_statement(res, ledger)}
    eps = res["privacy"]["epsilon"]["total"]
    prot, trust, budget = (
        parts["Protections in this run"],
        parts["Trust assumptions"],
        parts["Privacy budget"],
    )
    assert "at the client level" in prot and "the server added Gaussian noise to the sum" in prot
    assert "each joined with probability 0.5" in prot
    assert "not even their record counts" in prot
    assert "Secure aggregation was off" in prot
    assert "no ε holds against the server" in trust and "authenticated" in trust
    assert f"(ε = {fmt_eps(eps)}, δ = 1e-05) for any single organisation's participation" in budget
    assert "against whoever holds the trained models" in budget
    assert "Against the server: no ε holds (it draws the client sample" in budget
    assert f"Against whoever holds the trained models: ε = {fmt_eps(eps)}, with amplif" in budget
    assert "The configured budget was ε = 8.00; the run is within it." in budget
    assert "2 releases over 2 rounds" in budget and "the same value" in budget
    html = (client_dp_run / "report.html").read_text()
    assert 'data-table="observers"' in html and "none holds" in html


@pytest.mark.slow
def test_real_run_resume_with_truncated_ledger_is_refused(
    client_dp_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(client_dp_run, run)
    data = (run / "ledger.jsonl").read_bytes()
    (run / "ledger.jsonl").write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])
    _one_line_exit_2(_resume(run), "cannot resume")


@pytest.mark.slow
def test_real_scaffold_run_keeps_client_state_out_of_the_run_folder(tmp_path: Path) -> None:
    out, clients = tmp_path / "run", tmp_path / "clients"
    _umbra(
        "run",
        *SMOKE,
        "--set",
        "federation.strategy=scaffold",
        "--out",
        str(out),
        env={"UMBRA_CLIENT_STATE": str(clients)},
    )
    assert not [p for p in out.rglob("*") if "scaffold" in p.name or "client_" in p.name]
    saved = sorted(p.name for p in clients.rglob("scaffold_r*.npz"))
    assert saved.count("scaffold_r2.npz") == 4  # every organisation keeps its own c_i


@pytest.mark.slow
def test_real_run_resume_with_its_ledger_continues(client_dp_run: Path, tmp_path: Path) -> None:
    """The positive control: an intact ledger resumes, and ε keeps counting from it."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(client_dp_run, run)
    _umbra("run", "--resume", str(run), *SMOKE, *CLIENT_DP, "--set", "federation.rounds=3")
    res = json.loads((run / "results.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3] and res["stopped"] is None
    assert sorted(r.round for r in read_ledger(run / "ledger.jsonl").releases) == [1, 2, 3]
    p = res["privacy"]
    want = _pld_epsilon(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(0.5, dp_event.GaussianDpEvent(1.0)), 3
        ),
        p["delta"],
    )
    assert p["observers"]["model_holder"]["epsilon"]["total"] == pytest.approx(want, rel=1e-6)
