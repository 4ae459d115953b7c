"""The SuperLink's held pulls (umbra.deploy.link_wait, umbra.deploy.superlink).

The holding logic runs against fake handlers and stores here; the patches of Flower's
SuperLink run in a child interpreter against its real in-memory link state and object
store, so this test process keeps Flower's modules as they are.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace as NS
from typing import Any

import pytest

from umbra.deploy.commands import superlink_argv
from umbra.deploy.link_wait import (
    MessageBell,
    held,
    unfinished_replies,
    without_unfinished_replies,
)
from umbra.deploy.superlink import main as superlink_main


def _tree(oid: str, *children: Any) -> NS:
    return NS(object_id=oid, children=list(children))


class FakeLink:
    """A pull handler over a list of pending responses, and an object store."""

    def __init__(self, bell: MessageBell) -> None:
        self.bell = bell
        self.pending: list[NS] = []
        self.objects: dict[str, bytes] = {}
        self.calls = 0
        self.lock = threading.Lock()

    def pull(self, *, request: Any = None, state: Any = None, store: Any = None) -> NS:
        with self.lock:
            self.calls += 1
            if self.pending:
                return self.pending.pop(0)
            return NS(messages_list=[], message_object_trees=[])

    def get(self, oid: str) -> bytes | None:
        with self.lock:
            return self.objects.get(oid)

    def store_message(self, response: NS, objects: dict[str, bytes]) -> None:
        with self.lock:
            self.pending.append(response)
            self.objects.update(objects)
        self.bell.ring()

    def put(self, oid: str, content: bytes) -> None:
        with self.lock:
            self.objects[oid] = content
        self.bell.ring()


def _held(link: FakeLink, hold_s: float, slots: int = 4) -> Any:
    return held(link.pull, bell=link.bell, hold_s=hold_s,
                slots=threading.BoundedSemaphore(slots), store_of=lambda _args, kwargs: kwargs["store"])  # fmt: skip


def test_bell_wakes_waiters_and_never_loses_a_ring() -> None:
    bell = MessageBell()
    seen = bell.generation
    bell.ring()  # rung between the check and the wait: the wait returns at once
    waited = threading.Event()
    threading.Thread(target=lambda: (bell.wait(seen, 30.0), waited.set())).start()
    assert waited.wait(5.0)
    seen = bell.generation
    threading.Timer(0.05, bell.ring).start()
    bell.wait(seen, 30.0)
    assert bell.generation == seen + 1


def test_a_held_pull_answers_when_a_message_and_its_objects_arrive() -> None:
    link = FakeLink(MessageBell())
    message = NS(messages_list=["m"], message_object_trees=[_tree("msg", _tree("arr"))])

    def arrive() -> None:  # Flower stores the message first, its objects after
        link.store_message(message, {"msg": b"m", "arr": b""})
        threading.Timer(0.05, link.put, ("arr", b"a")).start()

    threading.Timer(0.05, arrive).start()
    got = _held(link, hold_s=30.0)(request="r", state="s", store=link)
    assert got is message
    assert link.get("arr") == b"a"  # not answered before every object was in the store
    assert link.calls <= 3  # woken by the rings, not polling


def test_a_held_pull_with_nothing_to_answer_returns_flowers_empty_answer() -> None:
    link = FakeLink(MessageBell())
    got = _held(link, hold_s=0.05)(request="r", state="s", store=link)
    assert list(got.messages_list) == []
    assert link.calls >= 1


def test_objects_that_never_come_end_the_hold_with_the_message() -> None:
    link = FakeLink(MessageBell())
    message = NS(messages_list=["m"], message_object_trees=[_tree("msg", _tree("arr"))])
    link.store_message(message, {"msg": b"m", "arr": b""})
    assert _held(link, hold_s=0.05)(store=link) is message  # never lost


def test_pulls_beyond_the_held_limit_are_answered_at_once() -> None:
    link = FakeLink(MessageBell())
    slots = threading.BoundedSemaphore(1)
    slots.acquire()  # the one slot is taken
    wrapped = held(link.pull, bell=link.bell, hold_s=30.0, slots=slots,
                   store_of=lambda _args, kwargs: kwargs["store"])  # fmt: skip
    assert list(wrapped(store=link).messages_list) == []
    assert link.calls == 1


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _link_with_replies() -> tuple[Any, Any, dict[str, tuple[str, str]]]:
    """Flower's in-memory link state and object store with two replies registered (each a
    message object with one child): ``i1``'s complete, ``i2``'s child not pushed yet;
    ``i3`` has no reply."""
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

    store = InMemoryObjectStore(verify=False)
    state = InMemoryLinkState(NS(), store)
    replies = {i: (_sha(f"reply {i}".encode()), _sha(f"array {i}".encode())) for i in ("i1", "i2")}
    for ins, (root, child) in replies.items():
        store.preregister(1, ObjectTree(object_id=root, children=[ObjectTree(object_id=child)]))
        state.message_ins_id_to_message_res_id[ins] = root
    store.put(replies["i1"][1], b"a")
    store.put(replies["i1"][0], b"m")
    store.put(replies["i2"][0], b"m")  # its child never comes: the sender was killed
    return state, store, replies


def test_a_reply_whose_objects_have_not_all_arrived_stays_out_of_the_runtime_pull() -> None:
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest

    state, store, replies = _link_with_replies()
    assert unfinished_replies(state, ["i1", "i2", "i3"]) == {"i2"}
    assert unfinished_replies(NS(), ["i1"]) == set()  # another link state: Flower's own
    request = PullAppMessagesRequest(message_ids=["i1", "i2", "i3"])
    (narrowed, *rest), by_position = without_unfinished_replies((request, state, "task"), {})
    assert list(narrowed.message_ids) == ["i1", "i3"] and rest == [state, "task"]
    assert by_position == {}
    assert list(request.message_ids) == ["i1", "i2", "i3"]  # the caller's request unchanged
    _, by_name = without_unfinished_replies((), {"request": request, "state": state})
    assert list(by_name["request"].message_ids) == ["i1", "i3"]
    store.put(replies["i2"][1], b"a")  # the objects arrive: the reply is answered
    assert without_unfinished_replies((request, state, "task"), {})[0][0] is request


def test_a_held_runtime_pull_answers_a_reply_only_once_its_objects_are_in() -> None:
    state, store, replies = _link_with_replies()
    bell = MessageBell()
    asked: list[list[str]] = []

    def pull(request: Any, state: Any, task: Any) -> NS:  # answers what it is asked for
        asked.append(list(request.message_ids))
        roots = [state.message_ins_id_to_message_res_id[m] for m in request.message_ids]
        return NS(
            messages_list=roots, message_object_trees=[store.get_object_tree(r) for r in roots]
        )

    from flwr.proto.runtime_pb2 import PullAppMessagesRequest

    wrapped = held(pull, bell=bell, hold_s=30.0, slots=threading.BoundedSemaphore(1),
                   store_of=lambda args, _kwargs: args[1].object_store,
                   narrow=without_unfinished_replies)  # fmt: skip
    threading.Timer(0.1, lambda: (store.put(replies["i2"][1], b"a"), bell.ring())).start()
    got = wrapped(PullAppMessagesRequest(message_ids=["i2"]), state, "task")
    assert got.messages_list == [replies["i2"][0]]
    assert asked[0] == [] and asked[-1] == ["i2"]  # never handed out while incomplete


def test_superlink_patches_hold_flowers_real_handlers() -> None:
    code = textwrap.dedent(
        """
        import threading, time
        from umbra.deploy.link_wait import install_link_waits
        import flwr.superlink.servicer.fleet.fleet_handlers as fleet
        import flwr.superlink.servicer.runtime.runtime_handlers as runtime
        from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

        install_link_waits(1.0)
        install_link_waits(1.0)  # idempotent: wrapped once
        assert not getattr(fleet.pull_messages.__wrapped__, "__umbra_link_wait__", False)
        assert not getattr(runtime.pull_messages.__wrapped__, "__umbra_link_wait__", False)
        for method in (InMemoryLinkState.store_message_ins, InMemoryLinkState.store_message_res,
                       InMemoryObjectStore.put):
            assert method.__umbra_link_wait__
            assert not getattr(method.__wrapped__, "__umbra_link_wait__", False)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": "src"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


@pytest.mark.parametrize("hold", ["0", "-1", "31"])
def test_launcher_refuses_a_bad_hold(hold: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert superlink_main(["--hold-s", hold, "--", "--insecure"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hold must be in (0, 30] seconds") and "\n" not in err


def test_command_line_runs_the_launcher_only_when_holding() -> None:
    argv = superlink_argv(port=9091, tls=None, node_auth=False, hold_s=2.0)
    assert argv[:6] == [sys.executable, "-m", "umbra.deploy.superlink", "--hold-s", "2.0", "--"]
    assert argv[argv.index("--port") + 1] == "9091"
    stock = superlink_argv(port=9091, tls=None, node_auth=False)
    assert stock[0].endswith("flower-superlink") and "--hold-s" not in stock
