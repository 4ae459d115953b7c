"""Send messages through a Flower Grid and wait for the replies, polling with back-off.

Flower's ``Grid.send_and_receive`` sleeps a fixed interval between pulls: 0.1 s in the
simulation engine's ``InMemoryGrid`` and 3 s in the Deployment Engine's gRPC grid. A
multi-stage round (SecAgg+ has three or four message exchanges, CKKS three) pays that
sleep in every stage even when the clients answered in milliseconds. `send_and_receive`
here pushes the same messages with ``grid.push_messages`` and pulls with
``grid.pull_messages``, first after ``first_poll_s`` and then at intervals growing by
``backoff`` up to ``max_poll_s``, so a fast stage returns almost as soon as its last reply
lands while a slow one (local training) costs only a few cheap pulls per second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

__all__ = ["FIRST_POLL_S", "MAX_POLL_S", "send_and_receive"]

#: First pause between pushing the messages and pulling replies.
FIRST_POLL_S = 0.002
#: Longest pause between two pulls.
MAX_POLL_S = 0.05


def send_and_receive(
    grid: Any,
    messages: Iterable[Message],
    *,
    timeout: float | None,
    first_poll_s: float = FIRST_POLL_S,
    max_poll_s: float = MAX_POLL_S,
    backoff: float = 1.5,
) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Same contract as Flower's ``Grid.send_and_receive`` (replies in arrival order; a node
    that does not answer in time is simply missing; ``timeout=None`` waits for all). A grid
    without ``push_messages``/``pull_messages`` (a test double) is asked through its own
    ``send_and_receive``.
    """
    if not (0 < first_poll_s <= max_poll_s) or backoff < 1.0:
        raise ValueError("need 0 < first_poll_s <= max_poll_s and backoff >= 1")
    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    pause = first_poll_s
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        time.sleep(pause if left is None else max(0.0, min(pause, left)))
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if deadline is not None and time.monotonic() >= deadline:
            break
        pause = min(pause * backoff, max_poll_s)
    return replies
