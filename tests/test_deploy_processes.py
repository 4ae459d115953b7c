"""Process supervision, loopback ports and Flower command lines for a local deployment.

The supervisor is exercised with small Python processes that behave like Flower's: one
that starts a helper in a new session (as SuperLink starts ``flower-superexec``), one that
ignores SIGTERM, one that dies at start-up. Every test checks by PID that nothing is left.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from flwr.common.config import parse_config_args

from deploy_checks import alive
from umbra.deploy import clientapp_host
from umbra.deploy.clientapp_host import ForkExecutor
from umbra.deploy.commands import (
    SuperLinkTLS,
    clientapp_host_argv,
    flwr_config_toml,
    flwr_env,
    format_config_pairs,
    superlink_argv,
    supernode_argv,
)
from umbra.deploy.errors import CertificateError, DeployError, PortInUseError
from umbra.deploy.local_federation import LocalFederation
from umbra.deploy.pki import generate_server_credentials
from umbra.deploy.ports import check_port_free, free_port
from umbra.deploy.processes import ProcessSupervisor
from umbra.errors import DataError

# Starts a grandchild in a new session (it leaves our process group, like flower-superexec),
# writes its PID to argv[1], then sleeps.
FORKER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    open(sys.argv[1], "w").write(str(child.pid))
    print("helper started", flush=True)
    time.sleep(600)
    """
)
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"


def _wait_for_file(path: Path, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} not written")


def _start_forker(sup: ProcessSupervisor, tmp_path: Path, name: str) -> tuple[int, int]:
    pid_file = tmp_path / f"{name}.pid"
    proc = sup.start(name, [sys.executable, "-c", FORKER, str(pid_file)])
    grandchild = _wait_for_file(pid_file)
    sup.record_descendants()
    return proc.pid, grandchild


def test_normal_exit_stops_every_process_and_helper(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path / "logs", grace_s=2) as sup:
        parent, helper = _start_forker(sup, tmp_path, "a")
        _, helper_b = _start_forker(sup, tmp_path, "b")
        assert {parent, helper, helper_b} <= set(sup.all_pids())
        assert os.getpgid(helper) != os.getpgid(parent)  # the helper left the group
        assert all(alive(p) for p in (parent, helper, helper_b))
    assert not any(alive(p) for p in (parent, helper, helper_b))
    assert sup.alive_pids() == set()
    assert "helper started" in (tmp_path / "logs" / "a.log").read_text()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_and_ctrl_c_stop_everything(tmp_path: Path, error: BaseException) -> None:
    pids: list[int] = []
    with pytest.raises(type(error)), ProcessSupervisor(tmp_path / "logs", grace_s=2) as sup:
        pids.extend(_start_forker(sup, tmp_path, "a"))
        raise error
    assert pids and not any(alive(p) for p in pids)


def test_sigterm_to_the_supervising_program_stops_its_processes(tmp_path: Path) -> None:
    pid_file = tmp_path / "children.pid"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from umbra.deploy.processes import ProcessSupervisor
        with ProcessSupervisor(Path({str(tmp_path)!r}) / "logs", grace_s=2) as sup:
            proc = sup.start("sleeper", [sys.executable, "-c", {FORKER!r}, {str(tmp_path / "g.pid")!r}])
            while not Path({str(tmp_path / "g.pid")!r}).exists():
                time.sleep(0.05)
            time.sleep(0.3)
            sup.record_descendants()
            Path({str(pid_file)!r}).write_text(" ".join(map(str, sup.all_pids())))
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    program = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        children = [int(p) for p in pid_file.read_text().split()]
        assert len(children) == 2 and all(alive(p) for p in children)
        program.send_signal(signal.SIGTERM)
        program.wait(timeout=30)
    finally:
        if program.poll() is None:
            program.kill()
    assert not any(alive(p) for p in children)


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path / "logs", grace_s=0.5) as sup:
        proc = sup.start("stubborn", [sys.executable, "-c", STUBBORN])
        deadline = time.monotonic() + 30
        while "up" not in proc.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert proc.popen.returncode == -signal.SIGKILL
    assert not alive(proc.pid)


def test_kill_and_restart_keep_track_of_old_and_new_pids(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path / "logs", grace_s=2) as sup:
        old, old_helper = _start_forker(sup, tmp_path, "node")
        sup.kill("node")
        assert not alive(old) and not alive(old_helper)
        new, new_helper = _start_forker(sup, tmp_path, "node")
        assert new != old
        assert {old, old_helper, new, new_helper} <= set(sup.all_pids())
        with pytest.raises(DeployError, match="already running"):
            sup.start("node", [sys.executable, "-c", "pass"])
    assert not alive(new) and not alive(new_helper)


def test_wait_for_port_names_the_log_of_a_process_that_died(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path / "logs") as sup:
        sup.start("link", [sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(3)"])
        with pytest.raises(DeployError) as info:
            sup.wait_for_port("link", free_port(), timeout_s=30)
    message = str(info.value)
    assert "link exited with code 3" in message
    assert str(tmp_path / "logs" / "link.log") in message and "bad flag --x" in message


def test_wait_for_port_times_out_with_the_log_path(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path / "logs") as sup:
        sup.start("link", [sys.executable, "-c", "import time; time.sleep(60)"])
        with pytest.raises(DeployError, match=r"did not accept connections .* within 1 s \(log: "):
            sup.wait_for_port("link", free_port(), timeout_s=1)


def test_wait_for_port_returns_once_the_server_listens(tmp_path: Path) -> None:
    port = free_port()
    server = f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); time.sleep(60)"
    with ProcessSupervisor(tmp_path / "logs") as sup:
        sup.start("link", [sys.executable, "-c", server])
        sup.wait_for_port("link", port, timeout_s=30)


def test_port_in_use_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(
            PortInUseError, match=f"SuperLink port 127.0.0.1:{port} is already in use"
        ):
            check_port_free(port, purpose="SuperLink")
    check_port_free(port)  # free again once the listener is closed
    with pytest.raises(PortInUseError, match="not a TCP port"):
        check_port_free(70000)


def test_config_pairs_parse_back_with_flowers_parser() -> None:
    config = {
        "partition-id": 2,
        "num-partitions": 3,
        "data-dir": '/data/with space/and "quote"',
        "name": "back\\slash, ünï and 'apostrophe'",
        "lr": 0.05,
        "dp": True,
    }
    assert parse_config_args([format_config_pairs(config)]) == config
    with pytest.raises(ValueError, match="cannot hold both quote characters"):
        format_config_pairs({"x": 'it\'s "both"'})
    with pytest.raises(ValueError, match="config key"):
        format_config_pairs({"bad key": 1})


def test_command_lines_bind_loopback_and_carry_tls_and_auth(tmp_path: Path) -> None:
    tls = SuperLinkTLS(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    link = superlink_argv(port=9100, tls=tls, node_auth=True)
    assert link[link.index("--host") + 1] == "127.0.0.1"
    assert link[link.index("--port") + 1] == "9100"
    assert link[link.index("--ssl-keyfile") + 1] == str(tls.key)
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    with pytest.raises(ValueError, match="requires TLS"):
        superlink_argv(port=9100, tls=None, node_auth=True)
    assert "--insecure" in superlink_argv(port=9100, tls=None, node_auth=False)
    node = supernode_argv(
        superlink_port=9100,
        runtime_port=9200,
        root_cert=tls.ca_cert,
        auth_key=tmp_path / "n.key",
        node_config={"partition-id": 0},
    )
    assert node[node.index("--superlink") + 1] == "127.0.0.1:9100"
    assert node[node.index("--host") + 1] == "127.0.0.1"
    assert node[node.index("--root-certificates") + 1] == str(tls.ca_cert)
    assert node[node.index("--node-config") + 1] == "partition-id=0"
    toml = flwr_config_toml(port=9100, root_cert=tls.ca_cert)
    assert 'address = "127.0.0.1:9100"' in toml and "root-certificates" in toml
    assert "insecure = true" in flwr_config_toml(port=9100, root_cert=None)
    assert "--isolation" not in node


def test_warm_clientapps_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = supernode_argv(
        superlink_port=9100,
        runtime_port=9200,
        root_cert=None,
        auth_key=None,
        node_config={},
        external_superexec=True,
    )
    assert node[node.index("--isolation") + 1] == "process"
    host = clientapp_host_argv(runtime_port=9200, supernode_pid=4321)
    assert host[:3] == [sys.executable, "-m", "umbra.deploy.clientapp_host"]
    assert host[host.index("--runtime-api-address") + 1] == "127.0.0.1:9200"
    assert host[host.index("--parent-pid") + 1] == "4321"
    # the SuperLink's SuperExec keeps Flower's 1 s task poll: it polls the whole run long
    assert "FLWR_SUPEREXEC_TASK_POLL_INTERVAL" not in flwr_env(
        tmp_path, base={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
    )


def test_fork_executor_runs_each_task_in_a_reaped_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def child(address: str, token: str, parent_pid: int) -> int:
        (tmp_path / token).write_text(f"{os.getpid()} {parent_pid} {address}")
        if token == "slow":
            time.sleep(60)
        return 0

    monkeypatch.setattr(clientapp_host, "_run_child", child)
    executor = ForkExecutor()
    pids = [executor.launch("127.0.0.1:9200", token) for token in ("a", "b")]
    deadline = time.monotonic() + 30
    while executor.children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.05)
    assert executor.children == set()
    for token, pid in zip(("a", "b"), pids, strict=True):
        assert (tmp_path / token).read_text() == f"{pid} {os.getpid()} 127.0.0.1:9200"
        assert not psutil.pid_exists(pid)  # reaped, not a zombie
    slow = executor.launch("127.0.0.1:9200", "slow")
    while not (tmp_path / "slow").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    executor.close(grace_s=2.0)
    assert not psutil.pid_exists(slow) and executor.children == set()


def test_bad_federation_input_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = generate_server_credentials(
        tmp_path / "old", not_before=past, validity=datetime.timedelta(days=1)
    )
    fed = LocalFederation(tmp_path, nodes=1, tls_credentials=expired)
    with pytest.raises(CertificateError, match="expired on"):
        fed.start()
    assert fed.supervisor.processes == {}
    with pytest.raises(ValueError, match="tls_credentials: not used with insecure=True"):
        LocalFederation(tmp_path, nodes=1, insecure=True, tls_credentials=expired)
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        LocalFederation(tmp_path, nodes=0)
    with pytest.raises(ValueError, match="node_configs has 1 entries for 2 nodes"):
        LocalFederation(tmp_path, nodes=2, node_configs=[{}])
    missing = tmp_path / "no-such-data"
    fed = LocalFederation(tmp_path, nodes=2, node_configs=[{}, {"data-dir": str(missing)}])
    with pytest.raises(
        DataError, match=f"supernode-1: node config data-dir={missing} is not a folder"
    ):
        fed.start()
    assert fed.supervisor.processes == {}
    no_manifest = tmp_path / "no-such.csv"
    fed = LocalFederation(tmp_path, nodes=1, node_configs=[{"manifest": str(no_manifest)}])
    with pytest.raises(
        DataError, match=f"supernode-0: node config manifest={no_manifest} is not a file"
    ):
        fed.start()
    assert fed.supervisor.processes == {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        fed = LocalFederation(tmp_path, nodes=1, superlink_port=port)
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}"):
            fed.start()
    assert fed.supervisor.processes == {}


def test_capped_sleep_shortens_only_sleep() -> None:
    from umbra.deploy.flower_timing import CappedSleep

    capped = CappedSleep(0.01)
    t0 = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - t0 < 1.0  # not Flower's 3 s
    assert capped.time is time.time and capped.monotonic is time.monotonic
    with pytest.raises(ValueError, match="idle poll"):
        CappedSleep(0)


def test_flower_timing_patches_the_idle_sleep_and_the_pull_backoff_only() -> None:
    # in a child interpreter, so this test process keeps Flower's module as it is
    code = textwrap.dedent(
        """
        import inspect, time
        import flwr.supernode.start_client_internal as sci
        assert sci.time is time
        # the patch point: the idle branch of the SuperNode loop sleeps through `time`
        assert "time.sleep(3)" in inspect.getsource(sci)
        from umbra.deploy.flower_timing import CappedSleep, cap_supernode_sleep, shorten_pull_backoff
        capped = cap_supernode_sleep(0.05)
        assert sci.time is capped and isinstance(capped, CappedSleep)
        assert time.sleep is not capped.sleep  # the real module is untouched
        t0 = time.monotonic(); sci.time.sleep(3); assert time.monotonic() - t0 < 1.0
        import flwr.supercore.inflatable.inflatable_utils as iu
        assert iu.pull_objects.__kwdefaults__["initial_backoff"] == 1
        shorten_pull_backoff(0.05, 0.5)
        for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
            d = fn.__kwdefaults__
            assert (d["initial_backoff"], d["backoff_cap"], d["max_tries_per_object"]) == (0.05, 0.5, None)
            assert d["max_time"] == 7200  # Flower's overall limit is kept
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": "src"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_supernode_argv_through_the_launcher() -> None:
    argv = supernode_argv(superlink_port=9092, runtime_port=9094, root_cert=None,
                          auth_key=None, node_config={}, idle_poll_s=0.25)  # fmt: skip
    assert argv[:6] == [sys.executable, "-m", "umbra.deploy.supernode", "--idle-poll-s",
                        "0.25", "--"]  # fmt: skip
    assert argv[6:10] == ["--superlink", "127.0.0.1:9092", "--host", "127.0.0.1"]
    stock = supernode_argv(superlink_port=9092, runtime_port=9094, root_cert=None,
                           auth_key=None, node_config={})  # fmt: skip
    assert stock[0].endswith("flower-supernode") and stock[1] == "--superlink"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--idle-poll-s", "0"], "error: idle poll must be > 0 seconds, got 0.0"),
        (["--wake-port", "0"], "error: --wake-port must be 1-65535, got 0"),
    ],
)
def test_supernode_launcher_refuses_a_bad_option_with_one_line(
    option: list[str], message: str
) -> None:
    done = subprocess.run([sys.executable, "-m", "umbra.deploy.supernode", *option,
                           "--", "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": "src"})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == message


def test_clientapp_host_refuses_an_unknown_isolation() -> None:
    with pytest.raises(ValueError, match="isolation must be one of"):
        clientapp_host.serve("127.0.0.1:1", isolation="thread")
    with pytest.raises(SystemExit) as done:
        clientapp_host.main(["--runtime-api-address", "127.0.0.1:1", "--isolation", "thread"])
    assert done.value.code == 2


def test_process_tree_matches_psutil_descendants() -> None:
    from umbra.deploy.processes import ProcessTree

    # a child that starts a grandchild in a session of its own, as SuperLink does
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(child.pid).children(recursive=True)) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        expected = {
            p.pid: p.create_time() for p in psutil.Process(os.getpid()).children(recursive=True)
        }
        found = ProcessTree.now().descendants(os.getpid())
        assert child.pid in found and len(found) >= 2
        assert {pid: found[pid] for pid in expected if pid in found} == expected
        assert set(expected) <= set(found) | {p for p in expected if not psutil.pid_exists(p)}
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()
