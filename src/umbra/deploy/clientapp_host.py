"""A SuperNode's SuperExec that keeps torch and Umbra imported and runs ClientApp tasks
without starting a process per message.

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process:
with ``--isolation subprocess`` (the default) the SuperNode starts a ``flower-superexec``,
which asks the SuperNode's Runtime API for tasks (``AcquireTask``, every second) and starts
``flwr-clientapp --token ...`` for each. That process imports Python, Flower, torch and
Umbra again (seconds of CPU), loads the organisation's records and builds the model,
handles one message and exits; ``flwr-clientapp`` cannot serve a second message (it ends
with ``flwr_exit``).

``flower-supernode --isolation process`` starts no SuperExec: it waits for an external one
to connect to its Runtime API. This module is that SuperExec (``python -m
umbra.deploy.clientapp_host --runtime-api-address 127.0.0.1:PORT``). It imports torch and
``umbra.apps`` once and runs each task one of two ways:

* ``in-process`` (the default): the host itself runs the task with Flower's own pieces of
  ``flwr-clientapp`` (`run_task`: ``pull_task_input``, ``install_from_fab``, the FAB's
  ``ClientApp`` loaded by Flower's loader, ``push_message``, ``push_task_output``, a task
  heartbeat), everything ``run_clientapp`` does except exiting the process. Tasks run one
  at a time, as the SuperNode hands out one message at a time. What the ClientApp caches
  between messages (its spec: config, records, model size; see `umbra.apps.client`) stays
  in memory as it does in Flower's simulation engine, where a ClientApp actor serves many
  messages. The process belongs to the organisation and runs only Umbra's app.
* ``fork``: for each task the host forks itself; the child runs Flower's own
  ``run_clientapp`` and exits. Each message runs in a fresh copy of memory, exactly as with
  ``flwr-clientapp``, without the imports. The parent never runs a task and never touches
  torch's thread pools, so forking is safe.

With ``--wake-port`` it asks for a task when its SuperNode says one is ready (a datagram,
`umbra.deploy.node_wakeup`) and otherwise only every `FALLBACK_POLL_S`; without, it polls
every `TASK_POLL_INTERVAL_S` (Flower's SuperExec: 1 s). It exits when its SuperNode
(``--parent-pid``) exits, or on SIGTERM / SIGINT (after stopping its children, or
finishing the task in hand).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import ClassVar

from umbra.deploy.flower_timing import shorten_pull_backoff
from umbra.deploy.node_wakeup import FALLBACK_POLL_S, WakeListener

__all__ = [
    "ISOLATION_MODES",
    "TASK_POLL_INTERVAL_S",
    "ForkExecutor",
    "InProcessExecutor",
    "main",
    "run_task",
    "serve",
    "wake_listener",
]

#: Seconds between two ``AcquireTask`` requests to the SuperNode's Runtime API (without a
#: wake-up port).
TASK_POLL_INTERVAL_S = 0.1
#: How a task runs: in the host itself, or in a fork of it (module docstring).
ISOLATION_MODES = ("in-process", "fork")
#: Modules imported once by the host, so that no ClientApp task imports them again.
PRELOAD = ("torch", "torch._dynamo", "umbra.apps.client", "flwr.supernode.runtime.run_clientapp")


def _run_child(runtime_api_address: str, token: str, parent_pid: int) -> int:
    """Body of a forked task process: Flower's ``flwr-clientapp`` without the imports."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # run_clientapp installs its own handlers
    try:
        run_clientapp(
            runtime_api_address=runtime_api_address,
            token=token,
            insecure=True,
            certificates=None,
            parent_pid=parent_pid,
            runtime_dependency_install=False,
        )
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # a task must never return into the parent's loop
        traceback.print_exc()
        return 1
    return 0


class ForkExecutor:
    """Starts each task as a fork of this process (`_run_child`) where Flower's
    ``SubprocessExecutor`` starts a new ``flwr-clientapp`` process, and reaps and stops
    the children."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def launch(self, runtime_api_address: str, token: str) -> int:
        """Fork a child that runs the task ``token``; its PID."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns
            code, started = 1, time.monotonic()
            try:
                code = _run_child(runtime_api_address, token, os.getppid())
            finally:
                with contextlib.suppress(Exception):
                    print(
                        f"umbra clientapp host: task {os.getpid()} ended with code {code} "
                        f"after {time.monotonic() - started:.1f} s",
                        flush=True,
                    )
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.children.add(pid)
        return pid

    def reconcile(self) -> None:
        """Reap finished children, so none lingers as a zombie."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            self.children.discard(pid)

    def close(self, grace_s: float = 5.0) -> None:
        """SIGTERM every running child, SIGKILL what is left after ``grace_s``."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.children and time.monotonic() < deadline:
            self.reconcile()
            time.sleep(0.05)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def run_task(runtime_api_address: str, token: str) -> int:
    """Run one ClientApp task in this process: ``flwr-clientapp``'s steps with Flower's own
    functions (pull the message, context, run and FAB; install the FAB; load its ClientApp;
    handle; push the reply and the task's status), without exiting. A failing ClientApp
    becomes an error reply, as in ``run_clientapp``. Returns 0, or 1 after a failure."""
    from flwr.app.error import Error
    from flwr.app.message import Message
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = reply = context = None
    sub_status, details, code = SubStatus.FAILED, "ClientApp task failed", 1
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        install_from_fab(fab.content, skip_prompt=True)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        client_app = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = client_app(message=message, context=context)
        sub_status, details, code = SubStatus.COMPLETED, "", 0
    except Exception as ex:  # the organisation's reply says what failed, as Flower's does
        traceback.print_exc()
        e_code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(ex)}:<'{ex}'>"
        if isinstance(ex, LoadClientAppError):
            e_code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reason = "An exception was raised when attempting to load `ClientApp`"
        details = reason
        if message is not None:
            reply = Message(Error(code=e_code, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:  # reported; the task still ends
            traceback.print_exc()
            code = 1
        retry_invoker.max_tries = 1
        push_task_output(client=client, context=context, sub_status=sub_status,
                         details=details)  # fmt: skip
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return code


class InProcessExecutor:
    """Runs each task in the host itself (`run_task`), one at a time."""

    def launch(self, runtime_api_address: str, token: str) -> int:
        """Run the task ``token`` to its end; this process's PID."""
        started = time.monotonic()
        code = run_task(runtime_api_address, token)
        print(
            f"umbra clientapp host: task ended with code {code} after "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        return os.getpid()

    def reconcile(self) -> None:
        """Nothing runs in the background."""

    def close(self, grace_s: float = 5.0) -> None:
        """Nothing to stop: a task in hand has finished before the loop looks again."""


class _Stop:
    """Set by SIGTERM / SIGINT or by the SuperNode exiting; ends `serve`'s loop."""

    signals: ClassVar[tuple[signal.Signals, ...]] = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in self.signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def watch_parent(self, parent_pid: int) -> None:
        def watch() -> None:
            while not self.event.wait(0.2):
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    self.event.set()
                except PermissionError:
                    continue

        threading.Thread(target=watch, name="umbra-clientapp-host-parent", daemon=True).start()


def wake_listener(wake_port: int | None) -> WakeListener | None:
    """The host's end of its node's wake-ups, or None: without a port, or when the port
    was taken since it was chosen (said in the log; the host then polls)."""
    if wake_port is None:
        return None
    try:
        return WakeListener(wake_port)
    except ValueError as err:
        print(f"umbra clientapp host: {err}; asking for tasks every "
              f"{TASK_POLL_INTERVAL_S} s instead", flush=True)  # fmt: skip
        return None


def serve(
    runtime_api_address: str,
    *,
    parent_pid: int | None = None,
    poll_interval_s: float | None = None,
    isolation: str = "in-process",
    wake_port: int | None = None,
) -> None:
    """Acquire ClientApp tasks from the SuperNode's Runtime API (plain HTTP on loopback)
    and run each in this process or in a fork (``isolation``, module docstring) until
    stopped; with ``wake_port``, when the SuperNode says a task is ready. Between two
    requests it waits ``poll_interval_s`` (default `FALLBACK_POLL_S` with a wake-up port,
    `TASK_POLL_INTERVAL_S` without)."""
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
    listener = wake_listener(wake_port)
    if poll_interval_s is None:
        poll_interval_s = TASK_POLL_INTERVAL_S if listener is None else FALLBACK_POLL_S
    for module in PRELOAD:
        importlib.import_module(module)
    shorten_pull_backoff()  # a task starts before its SuperNode holds the message's objects
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    stop = _Stop()
    if parent_pid is not None:
        stop.watch_parent(parent_pid)
    executor: ForkExecutor | InProcessExecutor = (
        ForkExecutor() if isolation == "fork" else InProcessExecutor()
    )
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    wanted = [str(TaskType.CLIENT_APP)]
    print(f"umbra clientapp host {os.getpid()} serving {runtime_api_address} ({isolation})",
          flush=True)  # fmt: skip
    try:
        while not stop.event.is_set():
            executor.reconcile()
            reply = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=wanted, agentapp_fab_hashes=[])
            )
            if reply.HasField("task") and reply.token:
                if reply.task.type in wanted:
                    executor.launch(runtime_api_address, reply.token)
                else:
                    print(f"umbra clientapp host: ignored a {reply.task.type} task", flush=True)
                continue  # another task may be waiting: ask again at once
            if listener is None:
                stop.event.wait(poll_interval_s)
            else:
                listener.wait(poll_interval_s)
    finally:
        executor.close()
        if listener is not None:
            listener.close()
        with contextlib.suppress(Exception):
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m umbra.deploy.clientapp_host --runtime-api-address HOST:PORT
    [--parent-pid PID] [--isolation in-process|fork] [--wake-port PORT]``."""
    parser = argparse.ArgumentParser(prog="python -m umbra.deploy.clientapp_host")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="in-process")
    parser.add_argument("--wake-port", type=int, default=None,
                        help="loopback UDP port on which the SuperNode says a task is ready")  # fmt: skip
    args = parser.parse_args(argv)
    serve(args.runtime_api_address, parent_pid=args.parent_pid, isolation=args.isolation,
          wake_port=args.wake_port)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
