"""The deployed runner: a run on Flower's Deployment Engine on loopback, as separate
organisations would run it (``umbra deploy local``).

`DeployedRunner` is a `umbra.experiment.Runner`: given the prepared data it writes each
organisation's records into a folder of its own (nothing of another organisation's
records is in it; for a manifest with a ``client`` column, the organisation's own rows as a
manifest with its media files, which the node reads and prepares itself against the
schema `plan_local` published in the run config) and the held-out test set into the
server's folder, writes the Flower
App folder (`write_app_folder`), starts a SuperLink and one SuperNode per organisation
(`umbra.deploy.LocalFederation`: TLS and SuperNode authentication unless ``insecure``;
then each SuperNode's authentication key is also its identity key, named with the roster
copy in its node config, and the ServerApp gets the roster file through the run config),
launches the run with ``flwr run``, streams each round's row from ``progress.jsonl`` to
``on_round``, and returns the ServerApp's `RunResult`. Every process is stopped when it
returns, raises or is interrupted; their logs are in ``<run folder>/logs/``.

A vertical run (``federation.layout = 'vertical'``) starts one SuperNode per party: node i
gets party i's own folder (its ids and its modalities' features,
`umbra.vertical.party_folder`), the ServerApp the label holder's ids and labels
(run config ``vertical-labels``) and the test set; nothing else is written.
"""

from __future__ import annotations

import json
import shutil
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from umbra.apps.outcome import ProgressReader, read_outcome
from umbra.apps.run_config import RUN_CONFIG_DEFAULTS, join_overrides, parse_overrides
from umbra.apps.server import ERROR_PREFIX
from umbra.config import Config
from umbra.deploy.commands import DEFAULT_IDLE_POLL_S
from umbra.deploy.errors import DeployError
from umbra.deploy.link_wait import DEFAULT_HOLD_S
from umbra.deploy.local_federation import LocalFederation
from umbra.deploy.pki import ServerCredentials, verify_server_credentials
from umbra.errors import ConfigError, ResumeError
from umbra.federation.client_data import write_federation_data
from umbra.federation.server_app import RunResult
from umbra.run.folder import client_state_root
from umbra.run.prepare import PreparedData
from umbra.run.simulation import RoundCallback, secure_transport

__all__ = [
    "APP_FOLDER",
    "PARTY_DATA",
    "DeployedRunner",
    "LocalPlan",
    "app_pyproject",
    "plan_local",
    "saved_run_config",
    "schema_overrides",
    "write_app_folder",
    "write_party_data",
    "write_party_manifests",
]

#: The Flower App folder ``flwr run`` packs, inside the run folder.
APP_FOLDER = "app"
#: Where the organisations' and the server's data folders go, inside the run folder
#: (removed after a completed run, as the simulation's are).
PARTY_DATA = ".federation"


def app_pyproject(defaults: dict[str, str] | None = None) -> str:
    """The ``pyproject.toml`` of a minimal Flower App whose components are the installed
    ``umbra.apps`` (the FAB then carries no code: every party runs its own installed Umbra).
    """
    config = {**RUN_CONFIG_DEFAULTS, **(defaults or {})}
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "umbra-app"',
        'version = "1.0.0"',
        'description = "Umbra: privacy-preserving multimodal federated learning"',
        'dependencies = ["umbra"]',
        "",
        "[tool.flwr.app]",
        'publisher = "umbra"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "umbra.apps:server_app"',
        'clientapp = "umbra.apps:client_app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {json.dumps(value)}" for key, value in config.items()),
    ]
    return "\n".join(lines) + "\n"


def write_app_folder(run_dir: Path, run_config: dict[str, str] | None = None) -> Path:
    """Write the app folder into ``run_dir`` with ``run_config`` as its defaults and return
    it (works the same from a source checkout and from an installed wheel: only the
    pyproject is packed). ``flwr run <run folder>/app`` relaunches the same run."""
    folder = run_dir / APP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(app_pyproject(run_config), encoding="utf-8")
    return folder


def saved_run_config(run_dir: Path) -> dict[str, str]:
    """The run config a deployed run folder was launched with (its app folder's defaults)."""
    path = run_dir / APP_FOLDER / "pyproject.toml"
    if not path.is_file():
        raise ResumeError(f"{run_dir} was not made by umbra deploy local (no {path})")
    config = tomllib.loads(path.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    return {key: str(config.get(key, default)) for key, default in RUN_CONFIG_DEFAULTS.items()}


@dataclass
class LocalPlan:
    """A checked ``umbra deploy local``: the config, its run folder and the runner."""

    cfg: Config
    run_dir: Path
    runner: DeployedRunner


#: SuperNodes one machine runs at most (each is a few processes and a Python interpreter).
MAX_LOCAL_NODES = 64


def plan_local(
    *,
    preset: str | None,
    overrides: Sequence[str],
    nodes: int | None,
    out: Path | None,
    resume: Path | None,
    insecure: bool = False,
    port: int | None = None,
    certificates: Path | None = None,
) -> LocalPlan:
    """Resolve and check what ``umbra deploy local`` runs, before any process starts.

    ``nodes`` sets ``federation.num_clients`` (default: the config's); ``resume`` continues
    a deployed run folder with the preset and overrides it was launched with (plus
    ``overrides``, e.g. more rounds); ``certificates`` is a folder holding ``ca.crt``,
    ``server.crt`` and ``server.key`` to use instead of throwaway ones (checked now).
    Bad input is a one-line `UmbraError`.
    """
    from umbra.config import load_config
    from umbra.deploy.ports import check_port_free
    from umbra.run.folder import resume_config

    extra = list(overrides)
    if nodes is not None:
        if not 1 <= nodes <= MAX_LOCAL_NODES:
            raise ConfigError(f"--nodes {nodes}: give 1 to {MAX_LOCAL_NODES} SuperNodes")
        if not _vertical_overrides(preset, extra):
            extra.append(f"federation.num_clients={nodes}")
    if resume is not None:
        if preset is not None or out is not None:
            raise ConfigError("--resume takes the run folder's own preset and folder; drop "
                              "--preset/--out")  # fmt: skip
        saved = saved_run_config(resume)
        preset = saved["preset"]
        base = parse_overrides(saved["overrides"])
        requested = load_config(preset, overrides=[*base, *extra])
        if requested.federation.layout == "vertical":
            raise ResumeError(f"{resume} holds a vertical run, which cannot be resumed; start "
                              "it again with another --out")  # fmt: skip
        cfg = resume_config(resume, requested)
        run_dir, all_overrides = resume, [*base, *extra]
    else:
        preset = preset or "default"
        cfg = load_config(preset, overrides=extra)
        published = schema_overrides(cfg)  # each node then reads its own manifest
        if published:
            extra += published
            cfg = load_config(preset, overrides=extra)
        run_dir, all_overrides = out or Path("runs") / f"deploy-{preset}", extra
    if cfg.federation.mode == "centralized":
        raise ConfigError("federation.mode = 'centralized' trains no federation; use umbra run")
    transport = secure_transport(cfg)
    if insecure and transport is not None and transport.identity_required:
        raise ConfigError(
            f"secure.aggregation = {cfg.secure.aggregation!r} needs node keys (the SuperNode "
            "authentication keys sign its key set-up); run without --insecure"
        )
    n = cfg.federation.num_clients
    if cfg.federation.layout == "vertical":  # one node per party (docs/vertical.md)
        n = _vertical_nodes(cfg, nodes=nodes, run_dir=run_dir)
    if n > MAX_LOCAL_NODES:
        raise ConfigError(f"federation.num_clients = {n}: at most {MAX_LOCAL_NODES} local nodes")
    if port is not None:
        check_port_free(port, purpose="SuperLink")
    credentials = None
    if certificates is not None:
        if insecure:
            raise ConfigError("--certificates: not used with --insecure; give one or the other")
        credentials = ServerCredentials(ca_cert=certificates / "ca.crt",
                                        cert=certificates / "server.crt",
                                        key=certificates / "server.key")  # fmt: skip
        verify_server_credentials(credentials)
    runner = DeployedRunner(preset=preset, overrides=tuple(all_overrides), nodes=n,
                            insecure=insecure, superlink_port=port,
                            tls_credentials=credentials)  # fmt: skip
    return LocalPlan(cfg=cfg, run_dir=run_dir, runner=runner)


def _vertical_overrides(preset: str | None, overrides: Sequence[str]) -> bool:
    """Whether ``preset`` + ``overrides`` make a vertical run (``--nodes`` is then the
    parties' count, not ``federation.num_clients``)."""
    from umbra.config import load_config

    if preset is None:
        return False
    return load_config(preset, overrides=list(overrides)).federation.layout == "vertical"


def _vertical_nodes(cfg: Config, *, nodes: int | None, run_dir: Path) -> int:
    """A vertical deployment's node count (one per party), after its checks (one line)."""
    from umbra.vertical.runner import check_vertical_config

    parties = len(cfg.vertical.parties)
    if nodes is not None and nodes != parties:
        raise ConfigError(f"--nodes {nodes}: a vertical run has one node per party "
                          f"({parties} in vertical.parties)")  # fmt: skip
    if len(cfg.vertical.label_parties) != 1:
        raise ConfigError(f"vertical.label_parties = {cfg.vertical.label_parties}: a deployment "
                          "runs with one label party")  # fmt: skip
    check_vertical_config(cfg, run_dir)
    return parties


def write_party_data(run_dir: Path, prep: PreparedData) -> tuple[list[Path], Path]:
    """Write organisation i's records (only its own: partition i, with its presence mask,
    the features of its absent modalities zeroed) into a folder of its own, and the
    held-out test set into the server's folder; returns the organisations' folders and the
    server's."""
    root = run_dir / PARTY_DATA
    orgs = []
    for i, (idx, mask) in enumerate(zip(prep.parts, prep.masks, strict=True)):
        folder = root / f"org-{i}"
        own = prep.train.subset(idx).with_mask(mask)  # an absent modality is not held at all
        write_federation_data(folder, own, [np.arange(len(idx))], [mask])
        orgs.append(folder)
    return orgs, _write_test(root, prep)


def _write_test(root: Path, prep: PreparedData) -> Path:
    test = root / "server-test"
    write_federation_data(test, prep.test, [np.arange(len(prep.test))], [prep.test.mask])
    return test


def write_party_manifests(
    run_dir: Path, cfg: Config, prep: PreparedData
) -> tuple[list[Path], Path]:
    """Write organisation i's training rows of the manifest (those its ``client`` column
    gives it, less the held-out test rows) as a manifest of its own, with its media files,
    into a folder of its own; the held-out test set into the server's folder. Returns the
    organisations' manifests and the server's folder."""
    from umbra.data.manifest import write_manifest_subset

    if prep.source_records is None:
        raise ConfigError("the data has no client column: each node needs a prepared folder")
    root = run_dir / PARTY_DATA
    source = Path(str(cfg.data.manifest))
    manifests = [
        write_manifest_subset(source, prep.source_records[idx].tolist(), root / f"org-{i}")
        for i, idx in enumerate(prep.parts)
    ]
    return manifests, _write_test(root, prep)


def schema_overrides(cfg: Config) -> list[str]:
    """The overrides that publish a manifest's schema in the run config (labels,
    modalities, ``tab:`` columns; public ``data.tabular_stats`` from a file written out)
    so each node can read its own manifest; none unless ``cfg`` reads a manifest with a
    ``client`` column and declares no schema yet."""
    from umbra.data.manifest import DataSchema, tabular_stats_table
    from umbra.data.manifest.table import read_table

    if cfg.data.source != "manifest" or cfg.data.labels:
        return []
    path = Path(str(cfg.data.manifest))
    if "client" not in read_table(path).columns:
        return []
    schema = DataSchema.of_manifest(path)
    out = schema.overrides()
    stats = cfg.data.tabular_stats
    if (
        isinstance(stats, str)
        and stats not in ("identity", "per-client")
        and schema.tabular_columns
    ):
        table = tabular_stats_table(stats, schema.tabular_columns, base=path.parent)
        pairs = ", ".join(f"{json.dumps(c)} = {json.dumps(v)}" for c, v in table.items())
        out.append(f"data.tabular_stats={{{pairs}}}")
    return out


@dataclass
class DeployedRunner:
    """Runs a prepared config on a loopback deployment (see the module docstring).

    ``preset`` and ``overrides`` are what both sides resolve the config from (they must
    give the config the caller prepared); ``nodes`` SuperNodes, one per organisation.
    """

    preset: str
    overrides: Sequence[str]
    nodes: int
    insecure: bool = False
    superlink_port: int | None = None
    tls_credentials: ServerCredentials | None = None
    timeout_s: float = 7 * 24 * 3600.0
    poll_s: float = 0.5
    #: Flower's own SuperExec (a fresh ``flwr-clientapp`` per message) and 3 s idle poll,
    #: instead of Umbra's warm ClientApp host and 0.25 s poll (for comparison)
    stock_flower: bool = False
    #: every PID the deployment started (for checks that none is left)
    started_pids: set[int] = field(default_factory=set)
    #: the running deployment while a run is in flight (None otherwise): its processes,
    #: e.g. to crash and restart a SuperNode (`LocalFederation.kill_node`)
    federation: LocalFederation | None = field(default=None, repr=False, compare=False)

    def run_config(self, run_dir: Path, test_dir: Path) -> dict[str, str]:
        """The run config of ``flwr run`` (``overrides`` quoted so each stays one item)."""
        return {
            "preset": self.preset,
            "overrides": join_overrides(self.overrides),
            "out": str(run_dir.resolve()),
            "test-dir": str(test_dir.resolve()),
        }

    def __call__(
        self,
        cfg: Config,
        run_dir: Path,
        prep: PreparedData,
        model_spec: dict[str, Any],
        on_round: RoundCallback | None,
    ) -> RunResult:
        vertical = cfg.federation.layout == "vertical"
        if vertical and len(cfg.vertical.parties) != self.nodes:
            raise DeployError(f"vertical.parties has {len(cfg.vertical.parties)} parties but "
                              f"{self.nodes} nodes")  # fmt: skip
        if not vertical and cfg.federation.num_clients != self.nodes:
            raise DeployError(
                f"federation.num_clients = {cfg.federation.num_clients} but {self.nodes} nodes"
            )
        state = client_state_root(run_dir)
        extra_config: dict[str, str] = {}
        if vertical:  # each node one party's own folder; the label holder's for the ServerApp
            from umbra.vertical.party_folder import write_vertical_folders

            folders, labels = write_vertical_folders(run_dir / PARTY_DATA, cfg, prep.train)
            test = _write_test(run_dir / PARTY_DATA, prep)
            node_configs = [{"data-dir": str(f.resolve()), "state-dir": str(state)}
                            for f in folders]  # fmt: skip
            extra_config["vertical-labels"] = str(labels.resolve())
        elif prep.source_records is not None and cfg.data.labels:  # each reads its own manifest
            manifests, test = write_party_manifests(run_dir, cfg, prep)
            node_configs = [{"manifest": str(m.resolve()), "state-dir": str(state)}
                            for m in manifests]  # fmt: skip
        else:
            orgs, test = write_party_data(run_dir, prep)
            node_configs = [{"data-dir": str(o.resolve()), "state-dir": str(state)}
                            for o in orgs]  # fmt: skip
        run_config = {**self.run_config(run_dir, test), **extra_config}
        app_dir = write_app_folder(run_dir, run_config)
        progress = ProgressReader(run_dir)
        log_lines: list[str] = []
        done = threading.Event()

        def stream() -> None:
            while not done.wait(self.poll_s):
                for row in progress.new_rows():
                    if on_round is not None:
                        on_round(row)

        fed = LocalFederation(run_dir, nodes=self.nodes, insecure=self.insecure,
                              node_configs=node_configs, superlink_port=self.superlink_port,
                              tls_credentials=self.tls_credentials,
                              warm_clientapps=not self.stock_flower,
                              idle_poll_s=None if self.stock_flower else DEFAULT_IDLE_POLL_S,
                              hold_s=None if self.stock_flower else DEFAULT_HOLD_S,
                              node_identities=True)  # fmt: skip
        streamer = threading.Thread(target=stream, name="umbra-progress", daemon=True)
        with fed:
            self.federation = fed
            if fed.roster_file is not None:  # the server's copy of the nodes' public keys
                run_config = {**run_config, "roster": str(fed.roster_file)}
            streamer.start()
            try:
                fed.run_app(app_dir, run_config,
                                 timeout_s=self.timeout_s, on_log=log_lines.append)  # fmt: skip
            except DeployError as err:
                superlink = fed.supervisor.processes.get("superlink")
                if superlink is None or superlink.running():
                    raise
                raise DeployError(
                    f"the SuperLink exited mid-run ({err}); the run folder keeps every "
                    f"completed round: continue with umbra deploy local --resume {run_dir}"
                ) from err
            finally:
                self.federation = None
                self.started_pids |= set(fed.supervisor.all_pids())
                done.set()
                streamer.join(timeout=5)
        for row in progress.new_rows():  # the rows the streamer had not read yet
            if on_round is not None:
                on_round(row)
        # a run whose every round aborted fails in Flower but still has its outcome:
        # run_experiment writes its results.json before reporting it
        outcome = read_outcome(run_dir)
        if outcome is None:
            errors = [ln.split(ERROR_PREFIX, 1)[1] for ln in log_lines if ERROR_PREFIX in ln]
            if errors:
                raise DeployError(errors[-1])
            raise DeployError(f"the run failed (logs: {fed.log_dir})")
        shutil.rmtree(run_dir / PARTY_DATA, ignore_errors=True)
        if vertical:  # the parties' aligned rows and mask keys (a run is not resumed)
            shutil.rmtree(state / "vertical", ignore_errors=True)
        return outcome
