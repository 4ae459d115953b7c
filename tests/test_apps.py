"""Umbra's Flower App: run config -> Config (against ``load_config`` with the same
``--set`` list), the app folder ``flwr run`` packs, each organisation's own data folder,
and the ServerApp's one-line error on a bad run config. No processes are started."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_files
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

import umbra.apps
from umbra.apps.client import client_spec, node_identity
from umbra.apps.outcome import ProgressReader, append_progress, read_outcome, write_outcome
from umbra.apps.run_config import (
    AppRunConfig,
    config_from_run_config,
    join_overrides,
    parse_overrides,
)
from umbra.apps.server import ERROR_PREFIX, server_app, server_spec
from umbra.config import load_config
from umbra.deploy.pki import (
    IDENTITY_KEY_NODE_CONFIG,
    ROSTER_NODE_CONFIG,
    generate_supernode_key,
    write_roster,
)
from umbra.errors import ConfigError
from umbra.federation.client_data import load_client_data
from umbra.federation.server_app import RunResult
from umbra.run.deploy import (
    app_pyproject,
    plan_local,
    saved_run_config,
    write_app_folder,
    write_party_data,
)
from umbra.run.prepare import prepare_data
from umbra.secure import identity, transports
from umbra.secure.identity import IdentityError


def test_run_config_resolves_like_set() -> None:
    overrides = "federation.rounds=2 secure.aggregation=secagg+ data.missing.audio=0.5"
    got = config_from_run_config({"preset": "smoke", "overrides": overrides})
    want = load_config("smoke", overrides=["federation.rounds=2", "secure.aggregation=secagg+",
                                           "data.missing.audio=0.5"])  # fmt: skip
    assert got == want
    assert got.federation.rounds == 2 and got.secure.aggregation == "secagg+"


def test_run_config_quoted_value_keeps_its_spaces() -> None:
    assert parse_overrides('data.manifest="/data/my org/m.csv" federation.rounds=3') == [
        "data.manifest=/data/my org/m.csv",
        "federation.rounds=3",
    ]


@pytest.mark.parametrize(
    ("run_config", "needle"),
    [
        ({"preset": "smoke", "rounds": "2"}, "unknown run config key(s) ['rounds']"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"preset": ""}, "run config preset is empty"),
        ({"preset": 3}, "run config preset must be a string"),
        ({"preset": "smoke", "overrides": "federation.colour=1"}, "federation.colour"),
        ({"preset": "smoke", "overrides": "federation.rounds"}, "expected section.key=value"),
        ({"preset": "smoke", "overrides": "data.alpha=0"}, "data.alpha"),
        ({"preset": "smoke", "overrides": 'data.manifest="x'}, "No closing quotation"),
    ],
)
def test_bad_run_config_is_one_config_error(run_config: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_run_config(run_config)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_server_run_config_needs_absolute_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run config out is empty"):
        AppRunConfig.from_run_config({"preset": "smoke", "test-dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="must be an absolute path"):
        AppRunConfig.from_run_config({"preset": "smoke", "out": "runs/x", "test-dir": "t"})
    with pytest.raises(ConfigError, match="holds no test set"):
        AppRunConfig.from_run_config({"preset": "smoke", "out": str(tmp_path),
                                      "test-dir": str(tmp_path)})  # fmt: skip


def test_server_app_logs_one_line_and_fails_on_a_bad_run_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"preset": "smoke", "overrides": "federation.rounds=0"})  # fmt: skip
    main = server_app._main
    assert main is not None
    with pytest.raises(ConfigError):
        main(None, context)  # type: ignore[arg-type]  # fails before touching the grid
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and "federation.rounds" in lines[0]


def test_app_folder_is_a_flower_app_of_the_installed_components(tmp_path: Path) -> None:
    folder = write_app_folder(tmp_path, {"preset": "baseline", "overrides": "federation.rounds=2"})
    text = (folder / "pyproject.toml").read_text()
    config = tomllib.loads(text)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "umbra.apps:server_app",
        "clientapp": "umbra.apps:client_app",
    }
    assert isinstance(umbra.apps.server_app, ServerApp)
    assert isinstance(umbra.apps.client_app, ClientApp)
    fab, _ = build_fab_from_files({"pyproject.toml": text.encode()})  # Flower accepts it
    assert fab
    assert saved_run_config(tmp_path) == {"preset": "baseline", "overrides": "federation.rounds=2",
                                          "out": "", "test-dir": "", "roster": "",
                                          "vertical-labels": ""}  # fmt: skip


def test_project_pyproject_declares_the_same_app() -> None:
    root = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    app = root["tool"]["flwr"]["app"]
    ours = tomllib.loads(app_pyproject())["tool"]["flwr"]["app"]
    assert app["components"] == ours["components"]
    assert set(app["config"]) == set(ours["config"])
    deps = " ".join(root["project"]["dependencies"])
    for name in ("flwr[simulation]", "torch", "opacus", "dp-accounting", "tenseal", "typer"):
        assert name in deps


def test_each_organisation_folder_holds_only_its_records(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=["data.source=synthetic", "data.n_train=600",
                                          "data.n_test=200", "federation.num_clients=3"])  # fmt: skip
    prep = prepare_data(cfg)
    orgs, test = write_party_data(tmp_path, prep)
    assert len(orgs) == 3
    for i, folder in enumerate(orgs):
        part = prep.parts[i]
        own = load_client_data(str(folder), 0)
        assert len(own) == len(part)  # nothing beyond its partition is stored
        np.testing.assert_array_equal(own.labels, prep.train.labels[part])
        np.testing.assert_array_equal(own.mask, prep.masks[i])
        for j, m in enumerate(prep.train.modalities):
            stored = np.load(folder / f"features_{m}.npy")
            present = prep.masks[i][:, j]
            assert stored.shape[0] == len(part)
            np.testing.assert_array_equal(stored[present], prep.train.features[m][part][present])
            assert not stored[~present].any()  # an absent modality is not held at all
    assert len(load_client_data(str(test), 0)) == len(prep.test)


def test_outcome_and_progress_round_trip(tmp_path: Path) -> None:
    reader = ProgressReader(tmp_path)
    append_progress(tmp_path, {"round": 1, "accuracy": 0.5})
    (tmp_path / "progress.jsonl").open("a").write('{"round": 2')  # a row being written
    assert reader.new_rows() == [{"round": 1, "accuracy": 0.5}]
    assert reader.new_rows() == []
    result = RunResult(arrays={"a.w": np.arange(3.0)}, history=[{"round": 1}], stopped=None,
                       privacy={"mode": "none"})  # fmt: skip
    write_outcome(tmp_path, result)
    back = read_outcome(tmp_path)
    assert back is not None and back.history == result.history and back.privacy == result.privacy
    np.testing.assert_array_equal(back.arrays["a.w"], result.arrays["a.w"])
    assert read_outcome(tmp_path) is None  # read once


def test_plan_local_sets_the_node_count_and_refuses_ckks_without_node_keys(
    tmp_path: Path,
) -> None:
    plan = plan_local(preset="smoke", overrides=["federation.rounds=2"], nodes=3,
                      out=tmp_path / "r", resume=None)  # fmt: skip
    assert plan.cfg.federation.num_clients == 3 and plan.runner.nodes == 3
    assert plan.runner.overrides == ("federation.rounds=2", "federation.num_clients=3")
    assert config_from_run_config(plan.runner.run_config(tmp_path, tmp_path)) == plan.cfg
    ckks = ["secure.aggregation=ckks"]
    plan = plan_local(preset="smoke", overrides=ckks, nodes=None, out=tmp_path / "r", resume=None)
    assert plan.cfg.secure.aggregation == "ckks" and not plan.runner.insecure
    with pytest.raises(ConfigError, match="'ckks' needs node keys") as err:
        plan_local(preset="smoke", overrides=ckks, nodes=None, out=tmp_path / "r", resume=None,
                   insecure=True)  # fmt: skip
    assert "\n" not in str(err.value)
    sa = plan_local(preset="smoke", overrides=["secure.aggregation=secagg+"], nodes=None,
                    out=tmp_path / "r", resume=None, insecure=True)  # fmt: skip
    assert sa.runner.insecure  # SecAgg+ runs unsigned without node keys


def test_run_config_survives_flowers_own_parser(tmp_path: Path) -> None:
    """What ``flwr run --run-config`` receives resolves to the config the CLI prepared,
    also for a ``--set`` value with spaces and quotes."""
    from flwr.common.config import parse_config_args

    from umbra.deploy.commands import format_config_pairs

    sets = ["federation.rounds=2", "data.missing={image=0.0, audio=0.5, text=0.25}",
            'federation.strategy="fedprox"']  # fmt: skip
    plan = plan_local(preset="smoke", overrides=sets, nodes=2, out=tmp_path / "r", resume=None)
    text = format_config_pairs(plan.runner.run_config(tmp_path / "r", tmp_path / "t"))
    received = parse_config_args([text])
    assert received["out"] == str((tmp_path / "r").resolve())
    cfg = config_from_run_config(received)
    assert cfg == plan.cfg == load_config("smoke", overrides=[*sets, "federation.num_clients=2"])
    assert cfg.data.missing == {"image": 0.0, "audio": 0.5, "text": 0.25}
    assert cfg.federation.strategy == "fedprox"


@pytest.mark.parametrize(
    "assignments",
    [
        ["federation.rounds=2"],
        ["data.missing={image=0.0, audio=0.5}", 'federation.strategy="fedprox"'],
        ["data.manifest=/data/my org/a\\b.csv", "run.seed=3"],
        ["data.manifest=/data/o'neil.csv"],
    ],
)
def test_overrides_join_and_split_back(assignments: list[str]) -> None:
    from flwr.common.config import parse_config_args

    from umbra.deploy.commands import format_config_pairs

    text = join_overrides(assignments)
    assert parse_overrides(text) == assignments
    carried = parse_config_args([format_config_pairs({"overrides": text})])["overrides"]
    assert parse_overrides(str(carried)) == assignments


def test_overrides_with_both_quote_kinds_are_refused() -> None:
    with pytest.raises(ConfigError, match="both quote characters"):
        join_overrides(["data.manifest=/o'neil.csv", 'federation.strategy="fedprox"'])


def _node_keys(folder: Path, n: int) -> tuple[dict[int, Path], dict[int, Path]]:
    """SuperNode key pairs as `umbra deploy local` makes them: private and public files."""
    keys = {i: generate_supernode_key(folder, f"supernode-{i}") for i in range(n)}
    return {i: k.private_key for i, k in keys.items()}, {i: k.public_key for i, k in keys.items()}


def test_client_app_reads_its_identity_from_the_files_its_node_config_names(
    tmp_path: Path,
) -> None:
    private, public = _node_keys(tmp_path, 3)
    roster_file = write_roster(tmp_path / "roster.txt", public)
    secagg, ckks = transports().get("secagg+"), transports().get("ckks")
    node = {"partition-id": 1, IDENTITY_KEY_NODE_CONFIG: str(private[1]),
            ROSTER_NODE_CONFIG: str(roster_file)}  # fmt: skip
    keys, roster = node_identity(node, ckks)
    assert list(keys) == [1] and keys[1] == private[1].read_bytes()
    assert roster == {i: public[i].read_bytes().strip() for i in range(3)}
    assert node_identity(node, None) == ({}, {})  # a plaintext run reads nothing
    # without identity files: SecAgg+ unsigned, CKKS refused in one line
    assert node_identity({"partition-id": 1}, secagg) == ({}, {})
    with pytest.raises(ConfigError, match="'ckks' needs this node's identity key and roster"):
        node_identity({"partition-id": 1}, ckks)
    # a roster that lacks the node, a key that is not the node's, a missing file
    lacking = write_roster(tmp_path / "lacking.txt", {0: public[0], 2: public[2]})
    with pytest.raises(IdentityError, match="client 1: not in its own identity roster"):
        node_identity({**node, ROSTER_NODE_CONFIG: str(lacking)}, secagg)
    with pytest.raises(IdentityError, match="client 1: its identity key does not match"):
        node_identity({**node, IDENTITY_KEY_NODE_CONFIG: str(private[2])}, secagg)
    absent = tmp_path / "absent.key"
    with pytest.raises(IdentityError, match=f"cannot read identity key {absent}"):
        node_identity({**node, IDENTITY_KEY_NODE_CONFIG: str(absent)}, secagg)
    with pytest.raises(ConfigError, match="not umbra-roster"):
        node_identity({"partition-id": 1, IDENTITY_KEY_NODE_CONFIG: str(private[1])}, secagg)


def test_deployed_specs_take_the_roster_from_each_partys_own_file(tmp_path: Path) -> None:
    """The ClientApp's spec carries the node's key and its own roster copy (whatever the
    run config says); the ServerApp's roster comes from the run config's file, and CKKS
    without one is refused."""
    private, public = _node_keys(tmp_path / "keys", 2)
    roster_file = write_roster(tmp_path / "roster.txt", public)
    overrides = ["data.source=synthetic", "data.n_train=200", "data.n_test=60",
                 "federation.num_clients=2", "secure.aggregation=ckks"]  # fmt: skip
    cfg = load_config("smoke", overrides=overrides)
    orgs, test = write_party_data(tmp_path, prepare_data(cfg))
    other = write_roster(tmp_path / "server-roster.txt", {0: public[1], 1: public[0]})
    run_config = {"preset": "smoke", "overrides": join_overrides(overrides),
                  "out": str(tmp_path / "run"), "test-dir": str(test), "roster": str(other)}  # fmt: skip
    node_config = {"partition-id": 0, "data-dir": str(orgs[0]),
                   IDENTITY_KEY_NODE_CONFIG: str(private[0]),
                   ROSTER_NODE_CONFIG: str(roster_file)}  # fmt: skip
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    spec = client_spec(context)
    assert spec.secure.roster == identity.read_roster(roster_file)  # its own, not the server's
    assert spec.action_spec().identities == {0: private[0].read_bytes()}
    assert private[0].read_bytes().hex() not in repr(spec)
    run = AppRunConfig.from_run_config(run_config)
    assert run.roster == other
    assert server_spec(run).secure.roster == identity.read_roster(other)
    with pytest.raises(ConfigError, match="'ckks' needs node identity keys"):
        server_spec(AppRunConfig.from_run_config({**run_config, "roster": ""}))
    with pytest.raises(IdentityError, match="cannot read roster"):
        server_spec(AppRunConfig.from_run_config({**run_config, "roster": str(tmp_path / "x")}))
