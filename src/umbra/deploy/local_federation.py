"""A whole Flower deployment on loopback: one SuperLink, N SuperNodes, ``flwr run``.

`LocalFederation` is what ``umbra deploy local`` drives. It

1. makes throwaway key material in a private folder (mode 0700, removed on `stop`): a CA,
   the SuperLink's TLS certificate for 127.0.0.1, one authentication key per SuperNode;
2. writes ``$FLWR_HOME/config.toml`` (inside the output folder) naming the SuperLink as
   the ``flwr`` CLI's default connection;
3. starts ``flower-superlink`` with TLS and ``--enable-supernode-auth``, waits until it
   accepts connections, registers each node's public key (``flwr supernode register``),
   starts one ``flower-supernode`` per node with its own ``--node-config`` and, beside
   each, the node's SuperExec (`umbra.deploy.clientapp_host`: torch and Umbra imported
   once, each message handled in that process, instead of a fresh ``flwr-clientapp``
   process per message), and waits until the SuperLink lists every node online;
4. runs a Flower App with ``flwr run`` and follows its log until the run finishes;
5. stops every process it started, by PID, on `stop`, on leaving a ``with`` block, on an
   exception, on Ctrl-C and on SIGTERM (`ProcessSupervisor`).

With ``node_identities=True`` (and not insecure) each SuperNode's authentication key is
also its protocol identity (`umbra.secure.identity`): the public keys go into a roster file
(``<partition id> <OpenSSH public key>`` per node), a copy of which is written into each
node's own folder of the key folder, as a coordinator would hand it out out of band; each
node's ``--node-config`` names its key file and its roster copy (``umbra-identity-key``,
``umbra-roster``: paths, never key bytes), and `roster_file` is the server's copy.

``insecure=True`` drops TLS and node authentication (nodes then self-register). Each
process logs to ``<out_dir>/logs/<name>.log``; the run's own log (ServerApp and
ClientApps, as the SuperLink collects it) to ``<out_dir>/logs/run-<id>.log``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from umbra.deploy.commands import (
    CONNECTION_NAME,
    DEFAULT_IDLE_POLL_S,
    NodeConfigValue,
    SuperLinkTLS,
    clientapp_host_argv,
    flwr_config_toml,
    flwr_env,
    format_config_pairs,
    superlink_argv,
    supernode_argv,
    venv_executable,
)
from umbra.deploy.errors import DeployError
from umbra.deploy.link_wait import DEFAULT_HOLD_S
from umbra.deploy.pki import (
    IDENTITY_KEY_NODE_CONFIG,
    ROSTER_NODE_CONFIG,
    ServerCredentials,
    SuperNodeKey,
    generate_server_credentials,
    generate_supernode_key,
    verify_server_credentials,
    write_roster,
)
from umbra.deploy.ports import check_port_free, free_port, free_udp_port
from umbra.deploy.processes import ProcessSupervisor, tail
from umbra.errors import DataError

__all__ = ["RUN_OK", "LocalFederation", "NodeSpec"]

#: Node-config keys that name a folder the node reads its data from: checked to exist
#: before any process starts, so a typo is one clear line, not a ClientApp traceback.
DATA_PATH_KEYS = ("data-dir",)
#: Node-config keys that name a file the node reads its data from (its own manifest).
DATA_FILE_KEYS = ("manifest",)
#: Node-config keys that name a file the node reads (its identity key and roster copy).
FILE_PATH_KEYS = (IDENTITY_KEY_NODE_CONFIG, ROSTER_NODE_CONFIG)
#: Name of a roster file (the server's copy in the key folder, each node's in its own).
ROSTER_FILE = "roster.txt"
#: Return code of `LocalFederation.run_app` when the run finished as completed.
RUN_OK = 0
_RUN_FAILED = 1


@dataclass
class NodeSpec:
    """One SuperNode: its process name, ``--node-config``, key pair (None when insecure),
    the node id the SuperLink assigned at registration, its Runtime API port, and the
    loopback UDP port on which it wakes its ClientApp host (None: the host polls)."""

    name: str
    node_config: dict[str, NodeConfigValue]
    key: SuperNodeKey | None
    node_id: int | None = None
    runtime_port: int = 0
    wake_port: int | None = None


class LocalFederation:
    """SuperLink + ``nodes`` SuperNodes on 127.0.0.1 (see the module docstring).

    ``node_configs[i]`` is merged over the default ``partition-id=i num-partitions=N`` of
    node ``i``. ``superlink_port=None`` picks a free port. ``tls_credentials`` uses an
    existing CA and server certificate instead of throwaway ones (checked before anything
    starts: unreadable, expired or mismatched files are one-line `CertificateError`s).
    ``warm_clientapps=False`` keeps Flower's own SuperExec on each SuperNode (a new
    ``flwr-clientapp`` process per message: slower, for comparison); ``idle_poll_s``
    is how often an idle SuperNode asks for work (`umbra.deploy.supernode`; ``None``:
    Flower's own 3 s); ``hold_s`` is how long the SuperLink holds a pull with nothing to
    answer (`umbra.deploy.superlink`; ``None``: Flower's own, which answers at once).
    ``node_identities`` makes the SuperNode keys the nodes' protocol identities (see the
    module docstring; ignored when insecure). Timeouts are in seconds.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        nodes: int,
        insecure: bool = False,
        node_configs: Sequence[Mapping[str, NodeConfigValue]] | None = None,
        superlink_port: int | None = None,
        tls_credentials: ServerCredentials | None = None,
        node_identities: bool = False,
        startup_timeout_s: float = 120.0,
        grace_s: float = 5.0,
        warm_clientapps: bool = True,
        idle_poll_s: float | None = DEFAULT_IDLE_POLL_S,
        hold_s: float | None = DEFAULT_HOLD_S,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        if insecure and tls_credentials is not None:
            raise ValueError("tls_credentials: not used with insecure=True; give one or the other")
        if node_configs is not None and len(node_configs) != nodes:
            raise ValueError(
                f"node_configs has {len(node_configs)} entries for {nodes} nodes; give one per node"
            )
        self.out_dir = Path(out_dir)
        self.insecure = insecure
        self.warm_clientapps = warm_clientapps
        self.idle_poll_s = idle_poll_s
        self.hold_s = hold_s
        self.startup_timeout_s = startup_timeout_s
        self.log_dir = self.out_dir / "logs"
        self.flwr_home = self.out_dir / "flwr_home"
        self.superlink_port = superlink_port
        self.nodes: list[NodeSpec] = []
        for i in range(nodes):
            config: dict[str, NodeConfigValue] = {"partition-id": i, "num-partitions": nodes}
            config.update(node_configs[i] if node_configs is not None else {})
            format_config_pairs(config)  # reject malformed keys and values now
            self.nodes.append(NodeSpec(name=f"supernode-{i}", node_config=config, key=None))
        self.tls_credentials = tls_credentials
        self.node_identities = node_identities and not insecure
        #: the server's copy of the identity roster (with ``node_identities``, once started)
        self.roster_file: Path | None = None
        self.supervisor = ProcessSupervisor(self.log_dir, grace_s=grace_s)
        self.key_dir: Path | None = None
        self.tls: SuperLinkTLS | None = None
        self.timings: dict[str, float] = {}
        self.env: dict[str, str] = {}
        self._started = False
        self._halted: set[str] = set()  # nodes stopped or killed on purpose

    # -- set-up -------------------------------------------------------------------------
    def _check_inputs(self) -> int:
        for node in self.nodes:
            for key in DATA_PATH_KEYS:
                if key in node.node_config and not Path(str(node.node_config[key])).is_dir():
                    raise DataError(
                        f"{node.name}: node config {key}={node.node_config[key]} is not a folder"
                    )
            for key in (*DATA_FILE_KEYS, *FILE_PATH_KEYS):
                if key in node.node_config and not Path(str(node.node_config[key])).is_file():
                    raise DataError(
                        f"{node.name}: node config {key}={node.node_config[key]} is not a file"
                    )
        if self.tls_credentials is not None:
            verify_server_credentials(self.tls_credentials)
        port = self.superlink_port if self.superlink_port is not None else free_port()
        check_port_free(port, purpose="SuperLink")
        return port

    def _make_keys(self) -> None:
        self.key_dir = Path(tempfile.mkdtemp(prefix="umbra-deploy-keys-"))  # mode 0700
        if self.insecure:
            return
        creds = self.tls_credentials or generate_server_credentials(self.key_dir)
        verify_server_credentials(creds)
        self.tls = SuperLinkTLS(ca_cert=creds.ca_cert, cert=creds.cert, key=creds.key)
        for node in self.nodes:
            node.key = generate_supernode_key(self.key_dir, node.name)
        if self.node_identities:
            self._write_rosters()

    def _write_rosters(self) -> None:
        """The roster of the nodes' authentication keys: the server's copy, one copy in
        each node's own folder, and each node's node config naming its key and roster."""
        assert self.key_dir is not None
        public = {}
        for node in self.nodes:
            assert node.key is not None
            public[int(node.node_config["partition-id"])] = node.key.public_key
        self.roster_file = write_roster(self.key_dir / ROSTER_FILE, public)
        for node in self.nodes:
            assert node.key is not None
            own = self.key_dir / node.name
            own.mkdir(mode=0o700)
            shutil.copyfile(self.roster_file, own / ROSTER_FILE)
            node.node_config[IDENTITY_KEY_NODE_CONFIG] = str(node.key.private_key)
            node.node_config[ROSTER_NODE_CONFIG] = str(own / ROSTER_FILE)

    def start(self) -> LocalFederation:
        """Start the SuperLink and every SuperNode; return once all nodes are online."""
        if self._started:
            raise DeployError("this federation is already started")
        t0 = time.monotonic()
        port = self._check_inputs()
        self.superlink_port = port
        self._started = True
        self.supervisor.__enter__()
        try:
            self._make_keys()
            self.flwr_home.mkdir(parents=True, exist_ok=True)
            (self.flwr_home / "config.toml").write_text(
                flwr_config_toml(
                    port=port, root_cert=None if self.tls is None else self.tls.ca_cert
                ),
                encoding="utf-8",
            )
            self.env = flwr_env(self.flwr_home)
            self.supervisor.start(
                "superlink",
                superlink_argv(
                    port=port, tls=self.tls, node_auth=not self.insecure, hold_s=self.hold_s
                ),
                env=self.env,
            )
            self.supervisor.wait_for_port("superlink", port, timeout_s=self.startup_timeout_s)
            self.timings["superlink_ready_s"] = time.monotonic() - t0
            keys = [node.key.public_key for node in self.nodes if node.key is not None]
            for node, node_id in zip(self.nodes, self.register_all(keys), strict=False):
                node.node_id = node_id
            self.timings["nodes_registered_s"] = time.monotonic() - t0
            for i in range(len(self.nodes)):
                self._start_node(i)
            for i in range(len(self.nodes)):
                self._start_host(i)
            self.wait_for_nodes(len(self.nodes))
            self.timings["all_nodes_online_s"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def register_all(self, public_keys: Sequence[Path]) -> list[int]:
        """Register several SuperNode public keys at once (one ``flwr`` process each, in
        parallel: most of a CLI call is interpreter start-up); their node ids, in order."""
        with ThreadPoolExecutor(max_workers=max(1, len(public_keys))) as pool:
            return list(pool.map(self.register, public_keys))

    def register(self, public_key: Path) -> int:
        """Register a SuperNode public key with the SuperLink; return its node id."""
        out = self._flwr(
            ["supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"]
        )
        try:
            return int(_last_json(out)["node-id"])
        except (KeyError, ValueError) as err:
            raise DeployError(
                f"flwr supernode register gave no node id: {out.strip()[-200:]}"
            ) from err

    def _start_node(self, i: int) -> None:
        node = self.nodes[i]
        self._halted.discard(node.name)
        node.runtime_port = free_port()
        wakes = self.warm_clientapps and self.idle_poll_s is not None
        node.wake_port = free_udp_port() if wakes else None
        self.supervisor.start(
            node.name,
            supernode_argv(
                superlink_port=self._port(),
                runtime_port=node.runtime_port,
                root_cert=None if self.tls is None else self.tls.ca_cert,
                auth_key=None if node.key is None else node.key.private_key,
                node_config=node.node_config,
                external_superexec=self.warm_clientapps,
                idle_poll_s=self.idle_poll_s,
                wake_port=node.wake_port,
            ),
            env=self.env,
        )

    def _start_host(self, i: int) -> None:
        """Start node ``i``'s SuperExec once its Runtime API accepts connections (only
        with ``warm_clientapps``)."""
        if not self.warm_clientapps:
            return
        node = self.nodes[i]
        self.supervisor.wait_for_port(
            node.name, node.runtime_port, timeout_s=self.startup_timeout_s
        )
        self.supervisor.start(
            _host_name(node),
            clientapp_host_argv(
                runtime_port=node.runtime_port,
                supernode_pid=self.supervisor.processes[node.name].pid,
                wake_port=node.wake_port,
            ),
            env=self.env,
        )

    def _port(self) -> int:
        if self.superlink_port is None:
            raise DeployError("the federation is not started")
        return self.superlink_port

    # -- queries ------------------------------------------------------------------------
    def _flwr(self, args: list[str], *, timeout_s: float = 60.0) -> str:
        """Run the ``flwr`` CLI against this SuperLink; its stdout, or a `DeployError`."""
        try:
            done = subprocess.run(
                [venv_executable("flwr"), *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeployError(f"flwr {args[0]} did not answer within {timeout_s:.0f} s") from None
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            raise DeployError(
                f"flwr {' '.join(args[:2])} failed (exit {done.returncode}): "
                f"{lines[-1].strip() if lines else 'no output'}"
            )
        return done.stdout

    def node_statuses(self) -> dict[int, str]:
        """Every node the SuperLink knows, with its status (``registered``, ``online``,
        ``offline``)."""
        listing = _last_json(self._flwr(["supernode", "ls", CONNECTION_NAME, "--format", "json"]))
        return {int(n["node-id"]): str(n.get("status")) for n in listing.get("nodes", [])}

    def online_node_ids(self) -> set[int]:
        """Node ids the SuperLink currently lists as online."""
        return {node_id for node_id, status in self.node_statuses().items() if status == "online"}

    def _raise_if_exited(self, node: NodeSpec) -> None:
        """A SuperNode that exited on its own (not killed by us) is a `DeployError` naming
        it and the last line of its log (e.g. a refused key or certificate)."""
        if node.name in self._halted:
            return
        for name in (node.name, _host_name(node)):
            proc = self.supervisor.processes.get(name)
            if proc is not None and not proc.running():
                raise DeployError(
                    f"{name} exited with code {proc.popen.returncode} "
                    f"(log: {proc.log_path}): {tail(proc.log_path)}"
                )

    def wait_for_nodes(self, count: int, *, timeout_s: float | None = None) -> set[int]:
        """Block until ``count`` nodes are online; a node process that exits meanwhile is
        a `DeployError` naming it and the last line of its log."""
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        online: set[int] = set()
        while time.monotonic() < deadline:
            for node in self.nodes:
                self._raise_if_exited(node)
            online = self.online_node_ids()
            if len(online) >= count:
                return online
            time.sleep(0.5)
        raise DeployError(
            f"only {len(online)} of {count} SuperNodes came online within "
            f"{timeout_s or self.startup_timeout_s:.0f} s (logs: {self.log_dir})"
        )

    # -- runs ---------------------------------------------------------------------------
    def run_app(
        self,
        app_dir: Path,
        run_config: Mapping[str, NodeConfigValue] | None = None,
        *,
        timeout_s: float = 600.0,
        on_log: Callable[[str], None] | None = None,
    ) -> int:
        """Run the Flower App in ``app_dir`` (``flwr run``) and wait until it finishes.

        Returns `RUN_OK` (0) when the SuperLink reports the run ``finished:completed`` and
        1 otherwise. ``on_log`` gets each line of the run's log as it arrives (called from
        a reader thread); the log is also kept in ``<out_dir>/logs/run-<id>.log``. A run
        still going after ``timeout_s`` is stopped (``flwr stop``) and reported as a
        `DeployError`.
        """
        if not (Path(app_dir) / "pyproject.toml").is_file():
            raise DeployError(f"{app_dir} is not a Flower App (no pyproject.toml)")
        args = ["run", str(Path(app_dir).resolve()), CONNECTION_NAME, "--format", "json"]
        if run_config:
            args += ["--run-config", format_config_pairs(run_config)]
        run_id = int(_last_json(self._flwr(args, timeout_s=120.0))["run-id"])
        deadline = time.monotonic() + timeout_s
        log_path = self.log_dir / f"run-{run_id}.log"
        with log_path.open("w", encoding="utf-8") as log:
            streamer = subprocess.Popen(
                [venv_executable("flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                status = self._follow(streamer, run_id, log, on_log, deadline)
            finally:
                if streamer.poll() is None:
                    streamer.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    streamer.wait(timeout=5)
        if status is None:
            with contextlib.suppress(DeployError):
                self._flwr(["stop", str(run_id), CONNECTION_NAME])
            raise DeployError(
                f"run {run_id} did not finish within {timeout_s:.0f} s (log: {log_path})"
            )
        return RUN_OK if status == "finished:completed" else _RUN_FAILED

    def _follow(
        self,
        streamer: subprocess.Popen[str],
        run_id: int,
        log: TextIO,
        on_log: Callable[[str], None] | None,
        deadline: float,
    ) -> str | None:
        """Copy the streamed log (in a thread, so a silent run cannot hold us past the
        deadline) until it ends, then poll the run's status until it is finished; None
        when the deadline passes first."""
        stdout = streamer.stdout
        if stdout is None:
            raise DeployError("flwr log: no output stream")

        def copy() -> None:
            with contextlib.suppress(ValueError):  # the log closed after a timeout
                for line in stdout:
                    log.write(line)
                    log.flush()
                    if on_log is not None:
                        on_log(line.rstrip("\n"))

        reader = threading.Thread(target=copy, name=f"umbra-run-{run_id}-log", daemon=True)
        reader.start()
        with contextlib.suppress(subprocess.TimeoutExpired):
            streamer.wait(timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                if streamer.poll() is not None:
                    reader.join(timeout=5)  # the last lines of the log
                return status
            time.sleep(1.0)
        return None

    def run_status(self, run_id: int) -> str:
        """The SuperLink's status of a run, e.g. ``running`` or ``finished:completed``; a
        `DeployError` when the SuperLink cannot say (``flwr ls`` exits 0 even then)."""
        out = _last_json(
            self._flwr(["ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"])
        )
        if out.get("success") is False:
            lines = str(out.get("error-message", "")).strip().splitlines()
            raise DeployError(f"flwr ls failed: {lines[-1].strip() if lines else 'no reason'}")
        runs = out.get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    # -- faults -------------------------------------------------------------------------
    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` and its helpers, as a crash would."""
        node = self.nodes[i]
        self._halted.add(node.name)
        self.supervisor.kill(node.name)
        if _host_name(node) in self.supervisor.processes:
            self.supervisor.kill(_host_name(node))

    def restart_node(self, i: int, *, timeout_s: float = 180.0) -> None:
        """Start SuperNode ``i`` again with the same key and node config (its log file
        continues) and wait until it is online.

        A running node is stopped first (it signs off, so it can rejoin at once). After a
        crash (`kill_node`) the SuperLink keeps the node online until two missed heartbeats
        (Flower's SuperNode heartbeat is every 30 s, not configurable in 1.42) and refuses
        a second activation of the same key meanwhile; so this waits for the SuperLink to
        list the node offline first: up to about a minute.
        """
        node = self.nodes[i]
        proc = self.supervisor.processes.get(node.name)
        if proc is not None and proc.running():
            self._halted.add(node.name)
            self.supervisor.stop(node.name)
        if _host_name(node) in self.supervisor.processes:
            self.supervisor.stop(_host_name(node))
        deadline = time.monotonic() + timeout_s
        if node.node_id is not None:
            while self.node_statuses().get(node.node_id) == "online":
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"{node.name}: the SuperLink still lists node {node.node_id} online "
                        f"after {timeout_s:.0f} s"
                    )
                time.sleep(2.0)
        self._start_node(i)
        self._start_host(i)
        if node.node_id is not None:
            while self.node_statuses().get(node.node_id) != "online":
                self._raise_if_exited(node)
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"{node.name} did not come back online within {timeout_s:.0f} s "
                        f"(log: {self.log_dir / (node.name + '.log')})"
                    )
                time.sleep(1.0)

    # -- tear-down ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this federation started and delete its key folder."""
        if self._started:
            self.supervisor.__exit__(None, None, None)
            self._started = False
        if self.key_dir is not None:
            shutil.rmtree(self.key_dir, ignore_errors=True)
            self.key_dir = None
            self.roster_file = None

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _host_name(node: NodeSpec) -> str:
    """Process name of a node's SuperExec (`umbra.deploy.clientapp_host`)."""
    return f"clientapp-host-{node.name.removeprefix('supernode-')}"


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` call printed (after any warnings)."""
    start = text.find("{")
    while start != -1:
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(text[start:])
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    raise DeployError(f"flwr printed no JSON: {text.strip()[-200:]}")
