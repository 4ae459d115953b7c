"""What the deployment tests share: whether a process they started is still alive, and
the running federation of a `DeployedRunner` (to crash and restart its processes)."""

from __future__ import annotations

from typing import Any

import psutil

from umbra.run.deploy import DeployedRunner


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running(runner: DeployedRunner) -> Any:
    """The deployment ``runner`` has running now (fails the test if none is)."""
    fed = runner.federation
    assert fed is not None, "no deployment is running"
    return fed
