"""Two waits of Flower 1.42's SuperNode that are neither flags nor environment variables,
shortened inside the processes Umbra starts.

1. **Idle poll.** A SuperNode with no message sleeps a literal ``time.sleep(3)`` before it
   asks the SuperLink again (``flwr.supernode.start_client_internal``), and checks for a
   finished ClientApp's reply every 0.5 s. Every message of a round waits 1.5 s on
   average before a node sees it; a SecAgg+ round has four exchanges.
   `cap_supernode_sleep` gives that one module a ``time`` whose ``sleep`` lasts at most
   the given seconds (every other attribute is the real ``time`` module).
2. **Object-pull backoff.** A SuperNode registers a message's ClientApp task *before* it
   has pulled the message's objects (one per array: 76 for Umbra's default model) from
   the SuperLink. A ClientApp that starts at once finds them missing and retries with
   Flower's backoff, 1 s doubling to 10 s: 7-8 s of every message on this machine.
   `shorten_pull_backoff` makes the retries start at 50 ms and stop growing at 0.5 s,
   keeping Flower's overall limit (``max_time``, 2 h) and dropping its per-object try
   count (500 tries at 0.5 s would give up sooner than Flower does).

Each function checks its patch point and raises RuntimeError if a Flower release moved
it, so a launcher refuses to start rather than silently keep Flower's waits. The cost
of a shorter idle poll is more requests while idle (one Fleet API pull every ``S``
seconds per node instead of every 3 s), which is why it is a parameter.
"""

from __future__ import annotations

import importlib
import threading
import time as _time
import types
from typing import Any

__all__ = [
    "PULL_BACKOFF_CAP_S",
    "PULL_INITIAL_BACKOFF_S",
    "CappedSleep",
    "cap_supernode_sleep",
    "shorten_pull_backoff",
]

#: First retry of a missing object, and the longest pause between two (Flower: 1 s, 10 s).
PULL_INITIAL_BACKOFF_S = 0.05
PULL_BACKOFF_CAP_S = 0.5

_SUPERNODE_LOOP = "flwr.supernode.start_client_internal"
_INFLATABLE = "flwr.supercore.inflatable.inflatable_utils"
_PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")
_BACKOFF_KEYS = ("initial_backoff", "backoff_cap", "max_tries_per_object")


class CappedSleep:
    """Stands in for the ``time`` module: ``sleep(s)`` lasts at most ``cap_s`` seconds and
    ends as soon as `wake` is called (the SuperNode's loop then looks again at what it was
    waiting for); every other attribute is ``time``'s own."""

    def __init__(self, cap_s: float) -> None:
        if not cap_s > 0:
            raise ValueError(f"idle poll must be > 0 seconds, got {cap_s}")
        self.cap_s = cap_s
        self._woken = threading.Event()

    def sleep(self, seconds: float) -> None:
        self._woken.wait(min(seconds, self.cap_s))
        self._woken.clear()  # the caller re-checks its condition after every sleep

    def wake(self) -> None:
        """End the current (or the next) sleep now."""
        self._woken.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def cap_supernode_sleep(cap_s: float) -> CappedSleep:
    """Give Flower's SuperNode loop a `CappedSleep`; RuntimeError if the module no longer
    sleeps through its ``time`` attribute."""
    module = importlib.import_module(_SUPERNODE_LOOP)
    current = getattr(module, "time", None)
    if isinstance(current, CappedSleep):
        current.cap_s = cap_s
        return current
    if current is not _time:
        raise RuntimeError(
            f"{_SUPERNODE_LOOP} has no 'time' module to shorten the idle poll of; this "
            "Flower release is not the one Umbra pins"
        )
    capped = CappedSleep(cap_s)
    module.time = capped  # type: ignore[attr-defined]
    return capped


def shorten_pull_backoff(
    initial_s: float = PULL_INITIAL_BACKOFF_S, cap_s: float = PULL_BACKOFF_CAP_S
) -> None:
    """Set the default retry pauses of Flower's object pulls (this process only: the
    SuperNode's pulls from the SuperLink, a ClientApp's pulls from its SuperNode)."""
    if not 0 < initial_s <= cap_s:
        raise ValueError(f"pull backoff must satisfy 0 < initial <= cap, got {initial_s}, {cap_s}")
    module = importlib.import_module(_INFLATABLE)
    for name in _PULL_FUNCTIONS:
        fn = getattr(module, name, None)
        defaults = getattr(fn, "__kwdefaults__", None)
        if (
            not isinstance(fn, types.FunctionType)
            or not isinstance(defaults, dict)
            or any(k not in defaults for k in _BACKOFF_KEYS)
        ):
            raise RuntimeError(
                f"{_INFLATABLE}.{name} has no {', '.join(_BACKOFF_KEYS)} defaults to shorten; "
                "this Flower release is not the one Umbra pins"
            )
        defaults.update(initial_backoff=initial_s, backoff_cap=cap_s, max_tries_per_object=None)
