"""Start deployment processes and make sure every one of them stops.

`ProcessSupervisor` starts each command in its own session (so its process group id is
its PID and a Ctrl-C in the terminal reaches only the supervisor, which then stops the
children in order), sends its output to its own log file, and records every PID it
started. Flower's processes start helpers of their own (``flower-superexec``, which runs
``flwr-serverapp`` / ``flwr-clientapp``); some of those open a new session, so the
supervisor also records each child's descendants while it runs and stops them too.

`stop_all` runs on normal exit, on an exception and on KeyboardInterrupt (the context
manager), and on SIGTERM (while the context is open, SIGTERM is turned into
KeyboardInterrupt in the main thread). Stopping is SIGTERM to each process group, then
SIGKILL to whatever is left after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

import psutil

from umbra.deploy.errors import DeployError
from umbra.deploy.ports import LOOPBACK

__all__ = ["ManagedProcess", "ProcessSupervisor", "ProcessTree", "tail"]

#: Seconds between SIGTERM and SIGKILL.
DEFAULT_GRACE_S = 5.0


def tail(path: Path, lines: int = 1) -> str:
    """The last non-empty ``lines`` of a log file, joined by " | " (for one-line errors)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


@dataclass
class ManagedProcess:
    """One started command: its name, log file, the Popen handle and every PID seen in
    its process tree (the root first)."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    #: PID -> process start time; the start time tells a recorded process from a later
    #: one that reuses its PID, which must never be signalled.
    pids: dict[int, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def record_descendants(self, tree: ProcessTree | None = None) -> None:
        """Add the PIDs of the current descendants to ``pids`` (they may have left the
        process group, so stopping the group alone would miss them); ``tree``: a snapshot
        of the machine's processes shared by several calls (default: a new one)."""
        tree = ProcessTree.now() if tree is None else tree
        for pid, started in tree.descendants(self.pid).items():
            self.pids.setdefault(pid, started)


@dataclass
class ProcessTree:
    """One reading of every process's parent and start time: a single scan of the process
    table serves every supervised process (psutil's ``children(recursive=True)`` scans it
    once per call)."""

    children: dict[int, list[int]]
    started: dict[int, float]

    @classmethod
    def now(cls) -> ProcessTree:
        children: dict[int, list[int]] = {}
        started: dict[int, float] = {}
        for proc in psutil.process_iter(["ppid", "create_time"]):
            info = proc.info
            if info.get("ppid") is None or info.get("create_time") is None:
                continue  # gone, or not ours to read
            children.setdefault(int(info["ppid"]), []).append(proc.pid)
            started[proc.pid] = float(info["create_time"])
        return cls(children, started)

    def descendants(self, pid: int) -> dict[int, float]:
        """PID -> start time of every process below ``pid``."""
        found: dict[int, float] = {}
        stack = list(self.children.get(pid, ()))
        while stack:
            child = stack.pop()
            if child in found:
                continue
            found[child] = self.started[child]
            stack.extend(self.children.get(child, ()))
        return found


def _start_time(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return None


def _alive(pid: int, started: float) -> bool:
    """Whether the process recorded as (``pid``, ``started``) still runs (not a zombie)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_tree(pid: int, started: float, sig: signal.Signals) -> None:
    """Signal a recorded process and, if it leads one, its process group."""
    if not _alive(pid, started):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:  # started in its own session: it leads its group
            os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class ProcessSupervisor:
    """Starts commands, remembers their PIDs, and stops them all (see module docstring).

    Use as a context manager::

        with ProcessSupervisor(log_dir) as sup:
            sup.start("superlink", [...])
            ...
    """

    def __init__(self, log_dir: Path, *, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.log_dir = log_dir
        self.grace_s = grace_s
        self.processes: dict[str, ManagedProcess] = {}
        self.started_pids: dict[int, float] = {}
        self._retired: dict[int, float] = {}
        self._previous_sigterm: Callable[[int, FrameType | None], object] | int | None = None
        self._installed_sigterm = False
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        self._lock = threading.Lock()

    # -- starting ---------------------------------------------------------------------
    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """Start ``argv`` in a new session with stdout and stderr in ``<log_dir>/<name>.log``
        (appended to, so a restarted process keeps its earlier log)."""
        if name in self.processes:
            if self.processes[name].running():
                raise DeployError(
                    f"process {name} is already running (PID {self.processes[name].pid})"
                )
            with self._lock:
                self._retired.update(self.processes[name].pids)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                )
            except OSError as err:
                raise DeployError(f"cannot start {name} ({argv[0]}): {err.strerror}") from None
        proc = ManagedProcess(name=name, argv=list(argv), log_path=log_path, popen=popen)
        proc.pids[popen.pid] = _start_time(popen.pid) or 0.0
        with self._lock:
            self.processes[name] = proc
            self.started_pids[popen.pid] = proc.pids[popen.pid]
        self._ensure_watcher()
        return proc

    def _ensure_watcher(self) -> None:
        """Record descendants in the background: a helper that lives only seconds (a
        ClientApp run) still gets recorded, so a crash of its parent cannot orphan it."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, name="umbra-deploy-pids", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop_watching.wait(0.5):
            self.record_descendants()

    def record_descendants(self) -> None:
        tree = ProcessTree.now()
        with self._lock:
            for proc in self.processes.values():
                proc.record_descendants(tree)

    def all_pids(self) -> dict[int, float]:
        """Every process (PID -> start time) this supervisor started or saw below one it
        started, including those of replaced (restarted) processes."""
        with self._lock:
            merged = dict(self.started_pids)
            merged.update(self._retired)
            for proc in self.processes.values():
                merged.update(proc.pids)
            return merged

    def alive_pids(self) -> set[int]:
        """The recorded processes that still run."""
        return {pid for pid, started in self.all_pids().items() if _alive(pid, started)}

    # -- readiness --------------------------------------------------------------------
    def wait_for_port(self, name: str, port: int, *, timeout_s: float) -> None:
        """Block until ``name`` accepts TCP connections on 127.0.0.1:``port``; raise a
        `DeployError` pointing at its log if it exits or the timeout passes first."""
        proc = self.processes[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.running():
                raise DeployError(
                    f"{name} exited with code {proc.popen.returncode} before it was ready "
                    f"(log: {proc.log_path}): {tail(proc.log_path)}"
                )
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
                return
            time.sleep(0.2)
        raise DeployError(
            f"{name} did not accept connections on {LOOPBACK}:{port} within {timeout_s:.0f} s "
            f"(log: {proc.log_path})"
        )

    # -- stopping ---------------------------------------------------------------------
    def _snapshot(self, procs: list[ManagedProcess]) -> dict[int, float]:
        """Record the current descendants of ``procs`` and return all their PIDs (under the
        lock: the background watcher adds PIDs concurrently)."""
        pids: dict[int, float] = {}
        tree = ProcessTree.now()
        with self._lock:
            for proc in procs:
                proc.record_descendants(tree)
                pids.update(proc.pids)
        return pids

    def kill(self, name: str) -> None:
        """SIGKILL one process and its descendants at once (a crash, not a shutdown)."""
        proc = self.processes[name]
        pids = self._snapshot([proc])
        for pid, started in pids.items():
            _signal_tree(pid, started, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=self.grace_s)
        # SIGKILL is delivered asynchronously: on a busy machine a descendant outside our
        # children can still be running for a moment; return only once the tree is gone.
        deadline = time.monotonic() + max(self.grace_s, 5.0)
        while any(_alive(p, s) for p, s in pids.items()) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, name: str) -> None:
        """Stop one process tree: SIGTERM, then SIGKILL after the grace period."""
        self._terminate([self.processes[name]])

    def stop_all(self) -> None:
        """Stop every process tree this supervisor started, newest first."""
        self._stop_watching.set()
        self._terminate(list(reversed(self.processes.values())))

    def _terminate(self, procs: list[ManagedProcess]) -> None:
        pids = self._snapshot(procs)
        for pid, started in pids.items():
            _signal_tree(pid, started, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            for proc in procs:
                proc.popen.poll()  # reap our direct children so they do not linger as zombies
            if not any(_alive(pid, started) for pid, started in pids.items()):
                break
            time.sleep(0.1)
        pids.update(self._snapshot(procs))  # helpers started while shutting down
        for pid, started in pids.items():
            _signal_tree(pid, started, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=self.grace_s)

    # -- context manager and SIGTERM ----------------------------------------------------
    def __enter__(self) -> ProcessSupervisor:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)
            self._installed_sigterm = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            if self._installed_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)
                self._installed_sigterm = False


def _sigterm_to_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``with`` block's clean-up runs."""
    raise KeyboardInterrupt(f"signal {signum}")
