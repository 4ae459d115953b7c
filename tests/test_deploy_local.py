"""A real Flower deployment on loopback: SuperLink + SuperNodes with TLS and SuperNode
authentication, driven by ``flwr run`` with a probe Flower App (tests/data/flwr_app) whose
ServerApp asks every node for its partition id and writes the replies to a file.

Slow (each test starts Flower's processes); every test checks by PID that nothing it
started is left running.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from deploy_checks import alive
from umbra.deploy.commands import supernode_argv
from umbra.deploy.errors import DeployError
from umbra.deploy.local_federation import RUN_OK, LocalFederation
from umbra.deploy.pki import generate_server_credentials, generate_supernode_key
from umbra.deploy.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="POSIX")]

APP = Path(__file__).parent / "data" / "flwr_app"


def _probe(fed: LocalFederation, out: Path, **config: Any) -> dict[str, Any]:
    lines: list[str] = []
    rc = fed.run_app(APP, {"out-file": str(out), **config}, timeout_s=240, on_log=lines.append)
    assert rc == RUN_OK, "\n".join(lines)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_three_nodes_with_tls_and_node_auth_reply_survive_a_kill_and_rejoin(
    tmp_path: Path,
) -> None:
    """One federation serves the whole scenario (starting Flower's processes is the cost):
    every node replies; one is killed and the others keep serving; it restarts (after the
    SuperLink has let the crashed node go) and answers again under its registered id."""
    with LocalFederation(tmp_path / "deploy", nodes=3) as fed:
        assert fed.key_dir is not None and fed.tls is not None
        key_dir = fed.key_dir
        registered = {node.node_id for node in fed.nodes}
        assert fed.online_node_ids() == registered
        secrets = [fed.tls.key.read_bytes()] + [
            node.key.private_key.read_bytes() for node in fed.nodes if node.key is not None
        ]
        result = _probe(fed, tmp_path / "replies.json", **{"min-nodes": 3})
        started = fed.supervisor.all_pids()
        timings = dict(fed.timings)
        # every socket any of our processes listens on is on loopback
        listening = [
            conn.laddr
            for pid in started
            if alive(pid)
            for conn in psutil.Process(pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert len(listening) >= 4  # SuperLink + 3 SuperNode Runtime APIs
        assert {addr.ip for addr in listening} == {"127.0.0.1"}
        # a node killed (a crash, not a shutdown) leaves the others serving
        victim = fed.supervisor.processes["supernode-1"].pid
        fed.kill_node(1)
        assert not alive(victim)
        after_kill = _probe(
            fed, tmp_path / "after-kill.json", **{"min-nodes": 2, "reply-timeout": 20.0}
        )
        assert sorted(after_kill["replies"].values()) == [0, 2]
        # restarted, it rejoins under the id it was registered with
        fed.restart_node(1)  # waits until the SuperLink has let the crashed node go
        assert fed.supervisor.processes["supernode-1"].pid != victim
        assert fed.online_node_ids() == registered
        rejoined = _probe(fed, tmp_path / "after-restart.json", **{"min-nodes": 3})
        assert rejoined["replies"] == result["replies"]
        started = fed.supervisor.all_pids()
    # every node answered with its own partition id, under the id it was registered with
    assert {int(k): v for k, v in result["replies"].items()} == {
        node.node_id: i for i, node in enumerate(fed.nodes)
    }
    assert set(map(int, result["asked"])) == registered
    # the ClientApps ran in processes outside this test's process
    assert len(set(result["pids"].values())) == 3
    # nothing started is left, the throwaway keys are gone, each process has its log
    assert len(started) >= 4 and victim in started
    assert [pid for pid in started if alive(pid)] == []
    assert not any(alive(int(pid)) for pid in result["pids"].values())
    assert not key_dir.exists()
    # no private key material in the output folder (logs, Flower's home, results)
    for path in (tmp_path / "deploy").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data, path
            assert not any(secret.strip() in data for secret in secrets), path
    logs = {p.name for p in (tmp_path / "deploy" / "logs").iterdir()}
    assert {"superlink.log", "supernode-0.log", "supernode-1.log", "supernode-2.log"} <= logs
    assert any(name.startswith("run-") for name in logs)
    assert "https://127.0.0.1:" in (tmp_path / "deploy" / "logs" / "superlink.log").read_text()
    print(
        f"timings: {timings}, round trip of one message to 3 nodes: {result['round_trip_s']:.2f} s"
    )


def _wait_exit(fed: LocalFederation, name: str, timeout_s: float = 90) -> int:
    proc = fed.supervisor.processes[name]
    deadline = time.monotonic() + timeout_s
    while proc.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not proc.running(), f"{name} still running"
    return int(proc.popen.returncode)


def test_unregistered_key_and_foreign_ca_are_refused(tmp_path: Path) -> None:
    with LocalFederation(tmp_path / "deploy", nodes=1) as fed:
        assert fed.superlink_port is not None and fed.key_dir is not None
        (good,) = fed.online_node_ids()
        # 1. a key the SuperLink operator never registered
        rogue = generate_supernode_key(tmp_path / "rogue", "rogue")
        fed.supervisor.start(
            "rogue",
            supernode_argv(
                superlink_port=fed.superlink_port,
                runtime_port=free_port(),
                root_cert=fed.tls.ca_cert if fed.tls else None,
                auth_key=rogue.private_key,
                node_config={"partition-id": 9},
            ),
            env=fed.env,
        )
        # 2. a registered key, but trusting another CA: the SuperLink's certificate fails
        stranger = generate_supernode_key(tmp_path / "stranger", "stranger")
        stranger_id = fed.register(stranger.public_key)
        other_ca = generate_server_credentials(tmp_path / "other-ca").ca_cert
        argv = supernode_argv(
            superlink_port=fed.superlink_port,
            runtime_port=free_port(),
            root_cert=other_ca,
            auth_key=stranger.private_key,
            node_config={"partition-id": 8},
        )
        fed.supervisor.start("stranger", [*argv, "--max-retries", "1"], env=fed.env)

        assert _wait_exit(fed, "rogue") != 0
        assert _wait_exit(fed, "stranger") != 0
        assert fed.online_node_ids() == {good}
        rogue_log = (tmp_path / "deploy" / "logs" / "rogue.log").read_text()
        assert "Failed to activate SuperNode" in rogue_log
        link_log = (tmp_path / "deploy" / "logs" / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in link_log
        stranger_log = (tmp_path / "deploy" / "logs" / "stranger.log").read_text()
        assert (
            "CERTIFICATE_VERIFY_FAILED" in stranger_log
            or "certificate verify failed" in stranger_log
        )
        assert stranger_id not in fed.online_node_ids()
        started = fed.supervisor.all_pids()
    assert [pid for pid in started if alive(pid)] == []


def test_insecure_federation_runs_without_tls_or_registration(tmp_path: Path) -> None:
    with LocalFederation(tmp_path / "deploy", nodes=2, insecure=True) as fed:
        assert fed.tls is None and all(node.key is None for node in fed.nodes)
        result = _probe(fed, tmp_path / "replies.json", **{"min-nodes": 2})
        assert sorted(result["replies"].values()) == [0, 1]
        # a ServerApp that raises ends the run as failed: run_app says so
        failed = fed.run_app(APP, {"out-file": str(tmp_path / "f.json"), "fail": True})
        assert failed != RUN_OK
        # a run that outlives its time limit is stopped and reported in one line
        waiting = {"out-file": str(tmp_path / "w.json"), "min-nodes": 5, "wait-timeout": 120.0}
        with pytest.raises(DeployError, match=r"did not finish within 5 s \(log: .*run-"):
            fed.run_app(APP, waiting, timeout_s=5)
        started = fed.supervisor.all_pids()
    link_log = (tmp_path / "deploy" / "logs" / "superlink.log").read_text()
    assert "http://127.0.0.1:" in link_log and "https://" not in link_log
    assert [pid for pid in started if alive(pid)] == []
