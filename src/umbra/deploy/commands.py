"""Command lines and configuration files for Flower 1.42's deployment processes.

Pure functions: they build argv lists and file contents and start nothing, so each flag
is testable without a network. Executables come from the virtual environment that runs
Umbra (the folder of ``sys.executable``), never from whatever ``PATH`` happens to hold.

Flower 1.42 in brief (docs/deployment.md has the full picture): the SuperLink serves the
Fleet API (SuperNodes), the Control API (``flwr`` CLI) and the Runtime API (its own
``flower-superexec`` -> ``flwr-serverapp``) over HTTPS on one ``--host``/``--port``; a
SuperNode reaches it with ``--superlink host:port --root-certificates ca.crt`` and signs
every request with its ``--auth-supernode-private-key``; with
``--enable-supernode-auth`` the SuperLink accepts only keys registered through
``flwr supernode register``. The ``flwr`` CLI reads SuperLink connections from
``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from umbra.deploy.ports import LOOPBACK

__all__ = [
    "CONNECTION_NAME",
    "DEFAULT_IDLE_POLL_S",
    "NodeConfigValue",
    "SuperLinkTLS",
    "clientapp_host_argv",
    "flwr_config_toml",
    "flwr_env",
    "format_config_pairs",
    "superlink_argv",
    "supernode_argv",
    "venv_executable",
]

#: Name of the SuperLink connection in the deployment's own ``$FLWR_HOME/config.toml``.
CONNECTION_NAME = "umbra-local"

NodeConfigValue = str | int | float | bool

#: Seconds between two pulls of an idle SuperNode started through `umbra.deploy.supernode`
#: (Flower's own: 3 s).
DEFAULT_IDLE_POLL_S = 0.25


@dataclass(frozen=True)
class SuperLinkTLS:
    """The files a TLS SuperLink is started with, and that clients trust (``ca_cert``)."""

    ca_cert: Path
    cert: Path
    key: Path


def venv_executable(name: str) -> str:
    """Path of a console script installed next to the running interpreter."""
    return str(Path(sys.executable).parent / name)


def flwr_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process of the deployment.

    ``FLWR_HOME`` keeps Flower's config, installed apps and caches inside the output
    folder; the venv's ``bin`` comes first on ``PATH`` because SuperLink and SuperNode
    start ``flower-superexec`` by bare name; telemetry, the update check and runtime
    ``uv sync`` of app dependencies are off (the apps run in this venv, offline); the
    internal switches for Flower's legacy gRPC APIs are removed, as those bind 0.0.0.0.
    """
    env = dict(os.environ if base is None else base)
    for legacy in ("FLWR_INTERNAL_GRPC_FLEET_API", "FLWR_INTERNAL_GRPC_CONTROL_API"):
        env.pop(legacy, None)  # these start gRPC APIs bound to 0.0.0.0
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # The SuperLink's SuperExec asks for a ServerApp task every second (Flower's default)
    # for the whole run: 0.1 s would start the ServerApp at most 0.9 s sooner, once, at the
    # price of ten HTTPS requests a second to the SuperLink throughout.
    env.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)
    return env


def superlink_argv(
    *, port: int, tls: SuperLinkTLS | None, node_auth: bool, hold_s: float | None = None
) -> list[str]:
    """``flower-superlink`` on 127.0.0.1:``port`` (Fleet, Control and Runtime API).

    ``tls=None`` starts it without TLS (``--insecure``); node authentication needs TLS,
    as Flower itself insists. ``hold_s`` starts it through `umbra.deploy.superlink`,
    whose message pulls wait up to that many seconds for a message (`umbra.deploy.link_wait`);
    ``None`` runs ``flower-superlink`` itself.
    """
    if node_auth and tls is None:
        raise ValueError("node_auth: SuperNode authentication requires TLS")
    launcher = (
        [venv_executable("flower-superlink")]
        if hold_s is None
        else [sys.executable, "-m", "umbra.deploy.superlink", "--hold-s", repr(float(hold_s)), "--"]
    )
    argv = [
        *launcher,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        argv.append("--insecure")
    else:
        argv += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.cert),
            "--ssl-keyfile",
            str(tls.key),
        ]
    if node_auth:
        argv.append("--enable-supernode-auth")
    return argv


_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _toml_string(key: str, value: str) -> str:
    """A TOML string that Flower's ``key=value`` splitter keeps whole: it cuts a quoted
    value at the next quote of the same kind, escaped or not."""
    if '"' not in value:
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if "'" not in value and "\n" not in value:
        return f"'{value}'"  # TOML literal string: no escapes needed
    raise ValueError(f"config value {key} cannot hold both quote characters")


def format_config_pairs(config: Mapping[str, NodeConfigValue]) -> str:
    """``--node-config`` / ``--run-config`` text: space-separated ``key=value`` pairs, values
    in TOML syntax (strings quoted, so a path with spaces stays one value)."""
    parts = []
    for key, value in config.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"config key {key!r} must use only letters, digits, '_', '-', '.'")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            text = _toml_string(key, value)
        else:
            raise ValueError(f"config value {key} must be str, int, float or bool")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_argv(
    *,
    superlink_port: int,
    runtime_port: int,
    root_cert: Path | None,
    auth_key: Path | None,
    node_config: Mapping[str, NodeConfigValue],
    external_superexec: bool = False,
    idle_poll_s: float | None = None,
    wake_port: int | None = None,
) -> list[str]:
    """``flower-supernode`` connecting to the loopback SuperLink; its own Runtime API (for
    its SuperExec) listens on 127.0.0.1:``runtime_port``.

    ``root_cert=None`` connects without TLS; ``auth_key`` is the node's OpenSSH private key
    (without one, the node makes a key of its own and self-registers, which a SuperLink
    with node authentication refuses). ``external_superexec`` adds ``--isolation process``:
    the node starts no ``flower-superexec`` and waits for one started beside it
    (`clientapp_host_argv`). ``idle_poll_s`` starts it through `umbra.deploy.supernode`,
    which shortens Flower's 3 s idle poll to that many seconds; ``None`` runs
    ``flower-supernode`` itself. ``wake_port`` (with ``idle_poll_s``): the loopback UDP
    port on which the launcher tells the node's ClientApp host that a task is ready.
    """
    if idle_poll_s is None:
        launcher = [venv_executable("flower-supernode")]
    else:
        wake = [] if wake_port is None else ["--wake-port", str(wake_port)]
        launcher = [sys.executable, "-m", "umbra.deploy.supernode",
                    "--idle-poll-s", repr(float(idle_poll_s)), *wake, "--"]  # fmt: skip
    argv = [
        *launcher,
        "--superlink",
        f"{LOOPBACK}:{superlink_port}",
        "--host",
        LOOPBACK,
        "--port",
        str(runtime_port),
    ]
    argv += ["--insecure"] if root_cert is None else ["--root-certificates", str(root_cert)]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    if node_config:
        argv += ["--node-config", format_config_pairs(node_config)]
    if external_superexec:
        argv += ["--isolation", "process"]
    return argv


def clientapp_host_argv(
    *, runtime_port: int, supernode_pid: int, wake_port: int | None = None
) -> list[str]:
    """`umbra.deploy.clientapp_host` serving the SuperNode whose Runtime API listens on
    127.0.0.1:``runtime_port`` (plain HTTP, loopback only); it exits when that SuperNode
    (``supernode_pid``) does, and waits for the node's datagrams on ``wake_port``."""
    wake = [] if wake_port is None else ["--wake-port", str(wake_port)]
    return [
        sys.executable,
        "-m",
        "umbra.deploy.clientapp_host",
        "--runtime-api-address",
        f"{LOOPBACK}:{runtime_port}",
        "--parent-pid",
        str(supernode_pid),
        *wake,
    ]


def flwr_config_toml(*, port: int, root_cert: Path | None) -> str:
    """``$FLWR_HOME/config.toml`` naming the loopback SuperLink as the default connection
    ``umbra-local`` (address, and either its root certificate or ``insecure = true``)."""
    lines = [
        "[superlink]",
        f'default = "{CONNECTION_NAME}"',
        "",
        f"[superlink.{CONNECTION_NAME}]",
        f'address = "{LOOPBACK}:{port}"',
    ]
    if root_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(root_cert))}")
    return "\n".join(lines) + "\n"
