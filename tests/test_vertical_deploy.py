"""Vertical federation on the Deployment Engine: Umbra's Flower App (``umbra.apps``) runs
the label holder's ServerApp and one ClientApp per party, each node reading only its own
party folder; PSI alignment over the messages; the same epochs as the simulation.

The fast tests drive the real apps in-process (a grid that calls the module-level
ClientApp with each node's own node config, recording every message a node receives);
the simulation side is `run_vertical` with Flower's simulation engine replaced by the
same in-process grid. The slow test runs ``umbra deploy local --preset vertical`` (SuperLink,
SuperNodes, TLS and node authentication) against ``umbra run --preset vertical``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

import umbra.apps.server as app_server
from umbra.apps import client_app
from umbra.apps.run_config import AppRunConfig, join_overrides
from umbra.config import Config, resolve_config
from umbra.errors import UmbraError
from umbra.federation.client_data import write_federation_data
from umbra.federation.common import from_record
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data
from umbra.vertical import protocol as P
from umbra.vertical.errors import VerticalError
from umbra.vertical.party_folder import read_features, write_party_folder, write_vertical_folders

SETS = ["data.source=synthetic", "data.n_train=160", "data.n_test=40", "federation.batch_size=32",
        "federation.rounds=2", 'vertical.parties=[["image"], ["audio", "tabular"], ["text"]]']  # fmt: skip


class NodeGrid:
    """Nodes in this process: each message goes to ``app`` with the destination node's own
    Context (its node config only); ``received[party]`` records what each node got."""

    def __init__(self, app: Any, node_configs: list[dict[str, Any]],
                 run_config: dict[str, Any]) -> None:  # fmt: skip
        self.app = app
        self.ids = [700 + 13 * i for i in range(len(node_configs))]
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config=dict(c),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for n, c in zip(self.ids, node_configs, strict=True)
        }
        self.received: dict[int, list[tuple[str, dict[str, Any], dict[str, np.ndarray]]]] = {
            i: [] for i in range(len(node_configs))
        }

    def get_node_ids(self) -> list[int]:
        return list(self.ids)

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            record = msg.content.array_records.get("arrays")
            arrays = from_record(record) if record is not None else {}
            config = dict(msg.content.config_records["config"])
            self.received[self.ids.index(node)].append((msg.metadata.message_type, config, arrays))
            out.append(self.app(msg, self.contexts[node]))
        return out


def _config(*extra: str) -> Config:
    return resolve_config(preset="vertical", overrides=[*SETS, *extra]).config


def _deployed(tmp: Path, cfg: Config, prep: PreparedData, sets: list[str]) -> tuple[NodeGrid, Path]:
    """The deployed run, in-process: folders as `umbra deploy local` writes them, the
    ServerApp's main over a grid of the module-level ClientApp."""
    folders, labels = write_vertical_folders(tmp / "fed", cfg, prep.train)
    test = tmp / "fed" / "test"
    write_federation_data(test, prep.test, [np.arange(len(prep.test))], [prep.test.mask])
    out = tmp / "deployed"
    run_config = {"preset": "vertical", "overrides": join_overrides(sets), "out": str(out),
                  "test-dir": str(test), "vertical-labels": str(labels)}  # fmt: skip
    nodes = [{"partition-id": i, "data-dir": str(f), "state-dir": str(tmp / "state")}
             for i, f in enumerate(folders)]  # fmt: skip
    grid = NodeGrid(client_app, nodes, run_config)
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    app_server.main(grid, ctx)  # type: ignore[arg-type]
    return grid, out


def _simulated(tmp: Path, cfg: Config, prep: PreparedData, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`run_vertical` (the simulation's runner) with Flower's simulation engine replaced by
    the same in-process grid of the simulation's own ClientApp."""
    import flwr.simulation

    import umbra.vertical.server_app as sa
    from umbra.federation.server_app import RunResult
    from umbra.vertical.runner import run_vertical

    def fake_app(spec: sa.VerticalServerSpec) -> Any:
        return spec

    def fake_run(*, server_app: Any, client_app: Any, num_supernodes: int, **_: Any) -> None:
        nodes = [{"partition-id": i} for i in range(num_supernodes)]
        sa.run_label_holder(NodeGrid(client_app, nodes, {}), server_app)  # type: ignore[arg-type]

    monkeypatch.setattr(sa, "make_vertical_server_app", fake_app)
    monkeypatch.setattr(flwr.simulation, "run_simulation", fake_run)
    monkeypatch.setenv("UMBRA_CLIENT_STATE", str(tmp / "sim-state"))
    out = tmp / "simulated"
    out.mkdir()
    result: RunResult = run_vertical(cfg, out, prep, model_spec_for(cfg, prep.train), None)
    return result, out


def test_deployed_apps_train_as_the_simulation_and_nodes_see_only_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config()
    prep = prepare_data(cfg)
    grid, out = _deployed(tmp_path, cfg, prep, SETS)
    sim, sim_out = _simulated(tmp_path, cfg, prep, monkeypatch)
    rows = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert len(rows) == len(sim.history) == 2
    for dep, ref in zip(rows, sim.history, strict=True):
        for key in ("round", "steps", "round_trips", "bytes_down", "bytes_up", "clients"):
            assert dep[key] == ref[key], key
        for key in ("train_loss", "accuracy", "macro_f1", "loss"):
            assert dep[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    from umbra.apps.outcome import read_outcome

    outcome = read_outcome(out)
    assert outcome is not None
    assert set(outcome.arrays) == set(sim.arrays)
    for k, v in sim.arrays.items():
        np.testing.assert_allclose(outcome.arrays[k], v, rtol=0, atol=1e-6, err_msg=k)
    dep_v = json.loads((out / "vertical.json").read_text())
    sim_v = json.loads((sim_out / "vertical.json").read_text())
    for key in ("aligned_entities", "held_by_all", "held_by", "label_party", "parties"):
        assert dep_v[key] == sim_v[key], key
    assert dep_v["psi"]["bytes"] > 0 and dep_v["alignment_messages"]["round_trips"] == 2
    assert [a["party"] for a in dep_v["label_leakage"]] == [0, 1]
    for dep_a, sim_a in zip(dep_v["label_leakage"], sim_v["label_leakage"], strict=True):
        assert dep_a["records"] == sim_a["records"]
        assert dep_a["direction_auc"] == pytest.approx(sim_a["direction_auc"], abs=1e-9)

    # what each node received: PSI requests, its shared ids' digests, row positions and
    # gradients at its own rows (width embed_dim) -- never features of any party
    embed = cfg.model.embed_dim
    allowed = {P.POSITIONS, P.SLOTS, P.GRAD, P.DIGESTS}
    for party, got in grid.received.items():
        kinds = {t for t, _, _ in got}
        assert f"query.{P.ALIGN}" in kinds and f"train.{P.STEP_ACTION}" in kinds
        assert (f"query.{P.PSI}" in kinds) == (party != 2)  # the label holder's own node: none
        names = {k for _, _, arrays in got for k in arrays}
        assert names <= allowed, (party, names)
        floats = [a for _, _, arrays in got for a in arrays.values() if a.dtype.kind == "f"]
        assert floats and all(a.ndim == 2 and a.shape[1] == embed for a in floats)
        digests = [a[P.DIGESTS] for t, _, a in got if t == f"query.{P.ALIGN}"]
        assert len(digests) == 1 and digests[0].shape == (dep_v["held_by"][f"party-{party}"], 32)
    # each node's folder holds its own modalities only
    for party, mods in enumerate(cfg.vertical.parties):
        folder = read_features(tmp_path / "fed" / f"party-{party}")
        assert set(folder.features) == set(mods) and folder.labels is None
        with np.load(tmp_path / "fed" / f"party-{party}" / "features.npz") as z:
            assert set(z.files) == set(mods)


def test_deployed_label_and_embedding_dp_are_in_the_ledger_as_in_the_simulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dp = ['vertical.label_dp="randomized-response"', "vertical.label_epsilon=2.0",
          "vertical.embedding_noise=2.0", "federation.rounds=1"]  # fmt: skip
    cfg = _config(*dp)
    prep = prepare_data(cfg)
    _, out = _deployed(tmp_path, cfg, prep, [*SETS, *dp])
    _, sim_out = _simulated(tmp_path, cfg, prep, monkeypatch)
    lines = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    sim_lines = [json.loads(x) for x in (sim_out / "ledger.jsonl").read_text().splitlines()]
    assert len(lines) == len(sim_lines) and any("label" in json.dumps(x) for x in lines)
    dep_p = json.loads((out / "vertical.json").read_text())["privacy"]
    sim_p = json.loads((sim_out / "vertical.json").read_text())["privacy"]
    assert dep_p["ledger"] == "ledger.jsonl"
    assert dep_p["per_party"] == sim_p["per_party"] and dep_p["observers"] == sim_p["observers"]


def test_secure_sum_over_the_deployed_apps_sends_only_masked_shares(tmp_path: Path) -> None:
    sets = [*SETS, "federation.rounds=1", "vertical.secure_sum=true"]
    cfg = _config(*sets[len(SETS) :])
    prep = prepare_data(cfg)
    grid, out = _deployed(tmp_path, cfg, prep, sets)
    v = json.loads((out / "vertical.json").read_text())
    assert v["secure_sum"] and v["aligned_entities"] == v["held_by"]["party-2"]
    rows = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0.0 <= rows[0]["accuracy"] <= 1.0
    # every node did the key set-up and was told the others' public keys only
    for got in grid.received.values():
        peers = [c for t, c, _ in got if t == f"query.{P.PEERS}"]
        assert len(peers) == 1 and sorted(peers[0]) == [P.PEERS_PREFIX + str(p) for p in range(3)]


def _context(node_config: dict[str, Any], sets: list[str] | None = None) -> Context:
    run_config = {"preset": "vertical", "overrides": join_overrides(sets or SETS)}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=run_config)  # fmt: skip


def _hello(node_config: dict[str, Any]) -> Message:
    from flwr.app import ConfigRecord

    msg = Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
                  message_type=f"query.{P.HELLO}")  # fmt: skip
    return client_app(msg, _context(node_config))


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"party": 0, "modalities": []}, "declares no modality"),
        ({"modalities": ["image"]}, "declares no party id"),
        ({"party": 0, "modalities": ["audio"]}, "the run gives party 0 ['image']"),
        ({"party": 7, "modalities": ["image"]}, "the run has parties 0..2"),
    ],
)
def test_a_bad_party_folder_is_one_line_at_the_node(
    tmp_path: Path, meta: dict[str, Any], needle: str
) -> None:
    folder = write_party_folder(tmp_path / "p", 0, ("a", "b"),
                                features={"image": np.zeros((2, 3)), "audio": np.zeros((2, 3))},
                                modalities=("image",))  # fmt: skip
    (folder / "party.json").write_text(json.dumps(meta))
    # the node's hello handler raises it (Flower turns it into the reply's error, which
    # the label holder's ServerApp reports in one line: test_a_party_error_reaches_...)
    with pytest.raises(VerticalError) as err:
        _hello({"data-dir": str(folder), "state-dir": str(tmp_path / "s")})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_missing_or_bad_party_is_one_line_at_the_label_holder(tmp_path: Path) -> None:
    sets = [*SETS, "federation.reply_timeout_s=1"]
    cfg = _config(*sets[len(SETS) :])
    prep = prepare_data(cfg)
    folders, labels = write_vertical_folders(tmp_path / "fed", cfg, prep.train)
    test = tmp_path / "fed" / "test"
    write_federation_data(test, prep.test, [np.arange(len(prep.test))], [prep.test.mask])
    run_config = {"preset": "vertical", "overrides": join_overrides(sets),
                  "out": str(tmp_path / "out"), "test-dir": str(test),
                  "vertical-labels": str(labels)}  # fmt: skip
    run = AppRunConfig.from_run_config(run_config)
    from umbra.vertical.deployed_run import run_deployed_vertical

    def fails(parties: list[int]) -> str:
        nodes = [{"data-dir": str(folders[p]), "state-dir": str(tmp_path / "s")} for p in parties]
        with pytest.raises(UmbraError) as err:
            run_deployed_vertical(NodeGrid(client_app, nodes, run_config), run, lambda r: None)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "two nodes say they are party 0" in fails([0, 0, 2])
    assert "only 2 of 3 parties connected" in fails([0, 2])  # party 1's node never came
    # party 1's folder declares no party id: its node's error, one line at the label holder
    meta = folders[1] / "party.json"
    meta.write_text(json.dumps({"modalities": ["audio", "tabular"]}))
    assert "declares no party id" in fails([0, 1, 2])
    assert not (tmp_path / "out" / "vertical.json").exists()


def test_plan_local_runs_one_node_per_party_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    from umbra.errors import ConfigError, ResumeError
    from umbra.run.deploy import plan_local

    plan = plan_local(preset="vertical", overrides=SETS, nodes=None, out=tmp_path / "o",
                      resume=None)  # fmt: skip
    assert plan.runner.nodes == 3
    with pytest.raises(ConfigError, match="one node per party"):
        plan_local(preset="vertical", overrides=SETS, nodes=4, out=tmp_path / "o", resume=None)
    with pytest.raises(ConfigError, match="one label party"):
        plan_local(preset="vertical", overrides=[*SETS, "vertical.label_parties=[2, 1]"],
                   nodes=None, out=tmp_path / "o", resume=None)  # fmt: skip
    run = tmp_path / "r"
    (run / "app").mkdir(parents=True)
    from umbra.run.deploy import app_pyproject

    (run / "app" / "pyproject.toml").write_text(app_pyproject({"preset": "vertical",
                                                              "overrides": join_overrides(SETS)}))  # fmt: skip
    (run / "config.json").write_text(json.dumps(_config().model_dump(mode="json")))
    with pytest.raises(ResumeError, match="cannot be resumed"):
        plan_local(preset=None, overrides=[], nodes=None, out=None, resume=run)


def test_deploy_local_refuses_a_bad_vertical_plan_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    sets = [a for s in SETS for a in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, "-m", "umbra.cli", "deploy", "local", "--preset", "vertical", *sets,
         "--nodes", "4", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "one node per party (3 in vertical.parties)" in lines[0], lines
    assert not (tmp_path / "o" / "logs").exists()  # refused before any process started


# --- the real deployment ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="POSIX")
def test_umbra_deploy_local_vertical_equals_umbra_run(tmp_path: Path) -> None:
    """SuperLink + 3 SuperNodes (TLS, node authentication) against the simulation engine,
    same config and seed: every epoch's metrics equal (about 4.5 minutes for both runs on a
    2-core machine at load 20; most of it process start-up)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UMBRA_CLIENT_STATE": str(tmp_path / "state"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    sets = [a for s in [*SETS, "federation.rounds=1"] for a in ("--set", s)]
    results = {}
    for cmd in (["deploy", "local"], ["run"]):
        out = tmp_path / cmd[0]
        proc = subprocess.run(
            [sys.executable, "-m", "umbra.cli", *cmd, "--preset", "vertical", *sets,
             "--out", str(out)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        results[cmd[0]] = json.loads((out / "results.json").read_text())
    dep, sim = results["deploy"], results["run"]
    assert len(dep["rounds"]) == len(sim["rounds"]) == 1
    for d, s in zip(dep["rounds"], sim["rounds"], strict=True):
        for key in ("steps", "round_trips"):
            assert d[key] == s[key], key
        # the same contents; a message's metadata differs (the Deployment Engine's node ids
        # are random 64-bit varints, 9 bytes more per message down than the simulation's)
        for key in ("bytes_down", "bytes_up"):
            assert d[key] == pytest.approx(s[key], rel=0.01), key
        # equal on this machine (same torch build and thread count); 1e-6 allows for
        # another float summation order in the engines' processes
        for key in ("train_loss", "accuracy", "loss"):
            assert d[key] == pytest.approx(s[key], abs=1e-6), key
    assert dep["vertical"]["engine"] == "deployment"
    for key in ("aligned_entities", "held_by", "parties", "round_trips"):
        assert dep["vertical"][key] == sim["vertical"][key], key
    # the same PSI payloads; a Golomb-compressed set of fresh random keys varies by a byte
    assert dep["vertical"]["psi"]["bytes"] == pytest.approx(
        sim["vertical"]["psi"]["bytes"], rel=1e-3
    )
    for d_a, s_a in zip(dep["vertical"]["label_leakage"], sim["vertical"]["label_leakage"],
                        strict=True):  # fmt: skip
        assert d_a["direction_auc"] == pytest.approx(s_a["direction_auc"], abs=1e-6)
    assert dep["data"]["clients"] == sim["data"]["clients"]
    assert (tmp_path / "deploy" / "report.html").is_file()
    assert not (tmp_path / "deploy" / ".federation").exists()
    assert not list((tmp_path / "state").rglob("mask-key"))
