"""umbra.federation.common.send_and_receive: push, then pull with back-off until done."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from umbra.federation.common import send_and_receive


class _DelayedGrid:
    """Push/pull grid whose reply to node ``n`` becomes available ``delays[n]`` s after push."""

    def __init__(self, delays: dict[int, float]) -> None:
        self.delays = delays
        self.pulls = 0
        self._ready: dict[str, tuple[float, Message]] = {}

    def push_messages(self, messages: Any) -> list[str]:
        ids = []
        now = time.monotonic()
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = mid = f"m{len(self._ready) + i}"
            node = msg.metadata.dst_node_id
            reply = Message(RecordDict({"r": ConfigRecord({"node": node})}), reply_to=msg)
            self._ready[mid] = (now + self.delays[node], reply)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Any) -> list[Message]:
        self.pulls += 1
        now = time.monotonic()
        due = [m for m in message_ids if m in self._ready and self._ready[m][0] <= now]
        return [self._ready.pop(m)[1] for m in due]


def _messages(nodes: list[int]) -> list[Message]:
    return [
        Message(RecordDict({"c": ConfigRecord({})}), dst_node_id=n, message_type="query")
        for n in nodes
    ]


def _nodes(replies: list[Message]) -> list[int]:
    return sorted(int(r.content["r"]["node"]) for r in replies)  # type: ignore[arg-type]


def test_all_replies_arrive_soon_after_the_last_one() -> None:
    grid = _DelayedGrid({1: 0.0, 2: 0.05, 3: 0.2})
    t0 = time.monotonic()
    replies = send_and_receive(grid, _messages([1, 2, 3]), timeout=5.0)
    took = time.monotonic() - t0
    assert _nodes(replies) == [1, 2, 3]
    # no fixed long sleep (Flower's gRPC grid sleeps 3 s between pulls); loose bound for CI
    assert took < 1.0
    # back-off: far fewer pulls than a 2 ms busy loop would make over 0.2 s
    assert grid.pulls < 20


def test_timeout_returns_the_replies_that_came() -> None:
    grid = _DelayedGrid({1: 0.0, 2: 10.0})
    t0 = time.monotonic()
    replies = send_and_receive(grid, _messages([1, 2]), timeout=0.2)
    assert _nodes(replies) == [1]
    assert 0.2 <= time.monotonic() - t0 < 1.0


def test_grid_without_push_pull_uses_its_own_send_and_receive() -> None:
    class _Legacy:
        def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Any]:
            return [("echo", m.metadata.dst_node_id, timeout) for m in messages]

    out = send_and_receive(_Legacy(), _messages([4]), timeout=1.5)
    assert out == [("echo", 4, 1.5)]


@pytest.mark.parametrize(
    "kwargs", [{"first_poll_s": 0.0}, {"first_poll_s": 0.1, "max_poll_s": 0.05}, {"backoff": 0.5}]
)
def test_bad_polling_parameters_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="first_poll_s"):
        send_and_receive(_DelayedGrid({}), [], timeout=1.0, **kwargs)


class _Clock:
    """A virtual clock: ``sleep`` advances ``monotonic`` instantly."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.mark.parametrize(("clients", "most_pulls"), [(2, 250), (1000, 40)])
def test_pulls_over_a_slow_stage_do_not_grow_with_its_clients(
    monkeypatch: pytest.MonkeyPatch, clients: int, most_pulls: int
) -> None:
    # every reply lands after 10 s (local training); each pull costs Flower's link state
    # time in proportion to the pending replies, so 1,000 clients must pull less often
    clock = _Clock()
    monkeypatch.setattr(time, "monotonic", clock.monotonic)
    monkeypatch.setattr(time, "sleep", clock.sleep)
    grid = _DelayedGrid(dict.fromkeys(range(clients), 10.0))
    replies = send_and_receive(grid, _messages(list(range(clients))), timeout=None)
    assert _nodes(replies) == list(range(clients))
    assert grid.pulls <= most_pulls  # a fixed 50 ms cap would pull about 200 times
    assert clock.t < 10.0 + 1.0 + 1e-9  # the last reply is collected within one pause
