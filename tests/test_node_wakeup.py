"""Wake-ups between a SuperNode and its ClientApp host (umbra.deploy.node_wakeup).

The datagram path is exercised on loopback; the patches of Flower's SuperNode run in a
child interpreter, so this test process keeps Flower's modules as they are.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from umbra.deploy.commands import clientapp_host_argv, supernode_argv
from umbra.deploy.flower_timing import CappedSleep
from umbra.deploy.node_wakeup import WakeListener, send_wakeup
from umbra.deploy.ports import free_udp_port


def test_a_wakeup_reaches_the_listener_and_a_burst_wakes_once() -> None:
    port = free_udp_port()
    listener = WakeListener(port)
    try:
        assert listener.wait(0.01) is False  # nothing sent: times out
        for _ in range(3):
            send_wakeup(port)
        assert listener.wait(2.0) is True
        assert listener.wait(0.01) is False  # the burst was read at once
    finally:
        listener.close()


def test_other_datagrams_do_not_wake_the_host() -> None:
    port = free_udp_port()
    listener = WakeListener(port)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"not a wake-up", ("127.0.0.1", port))
        time.sleep(0.05)
        assert listener.wait(0.2) is False
    finally:
        listener.close()


def test_a_wakeup_to_nobody_is_not_an_error() -> None:
    send_wakeup(free_udp_port())  # nothing listens: the host's fallback poll covers it


def test_listener_refuses_a_taken_or_invalid_port() -> None:
    port = free_udp_port()
    first = WakeListener(port)
    try:
        with pytest.raises(ValueError, match=f"127.0.0.1:{port} is not free"):
            WakeListener(port)
    finally:
        first.close()
    with pytest.raises(ValueError, match="1-65535"):
        WakeListener(0)


def test_capped_sleep_ends_when_woken() -> None:
    capped = CappedSleep(5.0)
    threading.Timer(0.05, capped.wake).start()
    t0 = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - t0 < 2.0  # woken, neither the cap nor Flower's 3 s
    capped.wake()  # a wake with nobody sleeping ends the next sleep at once ...
    t0 = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - t0 < 1.0
    capped = CappedSleep(0.05)  # ... and only that one
    t0 = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - t0 >= 0.04


def test_supernode_patches_wake_the_loop_and_tell_the_host() -> None:
    port = free_udp_port()
    code = textwrap.dedent(
        f"""
        import time
        import flwr.supernode.start_client_internal as sci
        from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
        from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
        from umbra.deploy.flower_timing import cap_supernode_sleep
        from umbra.deploy.node_wakeup import WakeListener, install_supernode_wakeups

        results = iter([None, 7])  # no message, then a message of run 7 fully stored
        sci._pull_and_store_message = lambda **kw: next(results)
        sleeper = cap_supernode_sleep(5.0)
        install_supernode_wakeups(sleeper, {port})
        install_supernode_wakeups(sleeper, {port})  # idempotent: wrapped once
        assert not getattr(InMemoryNodeState.store_message.__wrapped__, "__umbra_wakeup__", False)
        listener = WakeListener({port})
        assert sci._pull_and_store_message() is None
        assert listener.wait(0.2) is False  # nothing received: the host is not woken
        assert sci._pull_and_store_message() == 7
        assert listener.wait(2.0) is True
        # a message or an object stored in the node ends the loop's sleep at once
        import threading
        from types import SimpleNamespace as NS
        state = InMemoryNodeState(InMemoryObjectStore())
        store = NS(verify=False, lock_store=threading.Lock(),
                   store=dict(o1=NS(is_available=False, content=b"")))
        stores = [lambda: state.store_message(NS(metadata=NS(message_id="m1"))),
                  lambda: InMemoryObjectStore.put(store, "o1", b"x")]
        for stored in stores:
            threading.Timer(0.05, stored).start()
            t0 = time.monotonic(); sci.time.sleep(3)
            assert time.monotonic() - t0 < 2.0, time.monotonic() - t0
        assert "m1" in state.msg_store and store.store["o1"].is_available
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": "src"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_command_lines_carry_the_wake_port() -> None:
    node = supernode_argv(superlink_port=9092, runtime_port=9094, root_cert=None, auth_key=None,
                          node_config={}, idle_poll_s=0.25, wake_port=9099)  # fmt: skip
    assert node[:8] == [sys.executable, "-m", "umbra.deploy.supernode", "--idle-poll-s",
                        "0.25", "--wake-port", "9099", "--"]  # fmt: skip
    host = clientapp_host_argv(runtime_port=9094, supernode_pid=1234, wake_port=9099)
    assert host[-2:] == ["--wake-port", "9099"]
    assert "--wake-port" not in clientapp_host_argv(runtime_port=9094, supernode_pid=1234)


def test_host_polls_when_its_wake_port_was_taken(capsys: pytest.CaptureFixture[str]) -> None:
    from umbra.deploy.clientapp_host import wake_listener

    assert wake_listener(None) is None
    port = free_udp_port()
    taken = WakeListener(port)
    try:
        assert wake_listener(port) is None
        assert "asking for tasks every 0.1 s instead" in capsys.readouterr().out
    finally:
        taken.close()
    listener = wake_listener(port)
    assert listener is not None
    listener.close()
