"""The SuperLink holds a pull for messages until there is something to answer.

Flower 1.42's SuperLink answers every pull at once: a SuperNode with no message gets an
empty reply and asks again after its idle poll, and the ServerApp asks for replies the
same way. Each request is HTTPS through about eight Starlette middlewares and, for a
node, a signature check: 4-5 ms of the SuperLink's CPU. Measured on a deployed
`baseline` round (8 nodes, TLS and node authentication), polls were more than a third
of the SuperLink's requests.

`install_link_waits` makes two handlers wait, up to ``hold_s`` seconds, for what the
caller asked for (long polling):

* Fleet API ``pull_messages`` (a node asking for its next message) returns as soon as a
  message for that node is stored;
* Runtime API ``pull_messages`` (the ServerApp asking for replies) returns as soon as one
  of the replies it names is stored.

Either way the answer is sent only once the objects of the messages in it are all in the
SuperLink's object store (or the hold ends): Flower registers a message before its
objects arrive, and a caller that pulled a message too early would wait out its
object-pull backoff. An empty answer after ``hold_s`` is exactly Flower's own; callers
are unchanged Flower code.

A reply whose objects have not all arrived is never handed to the ServerApp
(`unfinished_replies`): Flower's Runtime pull deletes what it answers, and the
ServerApp's grid then pulls the reply's objects one message after another, each until
it has them or the sender's object-push session expires (180 s). A node killed between
pushing its reply and pushing the reply's objects would otherwise hold up the replies of
every other node behind it for those 180 s, past the stage's reply timeout; left in the
link state, its reply is answered once complete, or the ServerApp's stage ends without
it and counts the node as dropped (Flower drops the reply when the session expires).

At most `MAX_HELD` requests are held at once (each holds a worker thread of the
SuperLink's pool); more are answered at once, as Flower does.

`MessageBell` is rung whenever the link state stores a message or the object store an
object; held requests re-check on every ring. Patch points are checked:
RuntimeError (a launcher's exit 2) if this Flower release moved one.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

__all__ = [
    "DEFAULT_HOLD_S",
    "MAX_HELD",
    "MessageBell",
    "held",
    "install_link_waits",
    "unfinished_replies",
    "without_unfinished_replies",
]

#: How long the SuperLink holds a pull with nothing to answer.
DEFAULT_HOLD_S = 2.0
#: Requests held at once (Starlette's worker-thread pool has 40).
MAX_HELD = 24

_FLEET = ("flwr.superlink.servicer.fleet.fleet_handlers", "pull_messages")
_RUNTIME = ("flwr.superlink.servicer.runtime.runtime_handlers", "pull_messages")
_STORES = (
    ("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState",
     ("store_message_ins", "store_message_res")),
    ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState",
     ("store_message_ins", "store_message_res")),
    ("flwr.supercore.object_store.in_memory_object_store", "InMemoryObjectStore", ("put",)),
    ("flwr.supercore.object_store.sql_object_store", "SqlObjectStore", ("put",)),
)  # fmt: skip
_MARK = "__umbra_link_wait__"


class MessageBell:
    """A generation counter with a condition: `ring` bumps it and wakes every waiter;
    `wait(seen, timeout)` returns once the generation differs from ``seen`` (or on
    timeout), so a ring between a check and the wait is never lost."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def ring(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout_s: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout=max(0.0, timeout_s))


class _Store(Protocol):
    def get(self, object_id: str) -> bytes | None: ...


def _object_ids(tree: Any) -> Iterator[str]:
    yield str(tree.object_id)
    for child in tree.children:
        yield from _object_ids(child)


def _tree_complete(tree: Any, store: _Store) -> bool:
    """Whether every object of ``tree`` is in ``store`` (Flower keeps a registered but
    not yet pushed object as ``b""``)."""
    return all(store.get(oid) != b"" for oid in _object_ids(tree))


def _complete(response: Any, store: _Store) -> bool:
    """Whether every object of every message in ``response`` is in ``store``."""
    return all(_tree_complete(tree, store) for tree in response.message_object_trees)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, position: int) -> Any:
    """A handler's argument ``name``, passed by keyword or at ``position``."""
    return kwargs[name] if name in kwargs else args[position]


def unfinished_replies(state: Any, message_ids: Iterable[str]) -> set[str]:
    """The instruction ids among ``message_ids`` whose reply the link ``state`` has
    registered but whose objects have not all arrived. Reads Flower's in-memory link
    state (the SuperLink's default); another state gets an empty set (Flower's own
    behaviour)."""
    index = getattr(state, "message_ins_id_to_message_res_id", None)
    lock = getattr(state, "lock", None)
    if not isinstance(index, dict) or lock is None:
        return set()
    from flwr.supercore.object_store.object_store import NoObjectInStoreError

    store = state.object_store
    out = set()
    with lock:
        for message_id in message_ids:
            reply_id = index.get(message_id)
            if reply_id is None:
                continue
            try:
                tree = store.get_object_tree(reply_id)
            except NoObjectInStoreError:  # Flower's pull reports it
                continue
            if not _tree_complete(tree, store):
                out.add(message_id)
    return out


def without_unfinished_replies(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of Flower's Runtime ``pull_messages(request, state, task)`` with the
    instruction ids of unfinished replies (`unfinished_replies`) left out of the request,
    so that Flower neither answers nor deletes them."""
    request = _argument(args, kwargs, "request", 0)
    unfinished = unfinished_replies(_argument(args, kwargs, "state", 1), request.message_ids)
    if not unfinished:
        return args, kwargs
    narrowed = type(request)()
    narrowed.CopyFrom(request)
    del narrowed.message_ids[:]
    narrowed.message_ids.extend(m for m in request.message_ids if m not in unfinished)
    if "request" in kwargs:
        return args, {**kwargs, "request": narrowed}
    return (narrowed, *args[1:]), kwargs


def held(
    pull: Callable[..., Any],
    *,
    bell: MessageBell,
    hold_s: float,
    slots: threading.BoundedSemaphore,
    store_of: Callable[[tuple[Any, ...], dict[str, Any]], _Store],
    narrow: Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]
    | None = None,
) -> Callable[..., Any]:
    """``pull`` (a Flower pull handler called with keyword or positional arguments, whose
    answer has ``messages_list`` and ``message_object_trees``) held until it has messages
    whose objects are complete, or ``hold_s`` passed. ``store_of(args, kwargs)`` finds the
    object store among the handler's arguments; ``narrow(args, kwargs)``, when given,
    returns the arguments of each call to ``pull`` (e.g. `without_unfinished_replies`),
    also for a pull beyond the held limit."""

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if narrow is not None:
            args, kwargs = narrow(args, kwargs)
        return pull(*args, **kwargs)

    @functools.wraps(pull)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not slots.acquire(blocking=False):
            return call(args, kwargs)
        try:
            deadline = time.monotonic() + hold_s
            while True:
                seen = bell.generation
                response = call(args, kwargs)
                if len(response.messages_list) > 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return response
                bell.wait(seen, left)
            store = store_of(args, kwargs)
            while True:
                seen = bell.generation
                left = deadline - time.monotonic()
                if _complete(response, store) or left <= 0:
                    return response
                bell.wait(seen, left)
        finally:
            slots.release()

    setattr(wrapper, _MARK, True)
    return wrapper


def _callable(module_name: str, name: str) -> tuple[Any, Callable[..., Any]]:
    module = importlib.import_module(module_name)
    value = getattr(module, name, None)
    if not callable(value):
        raise RuntimeError(
            f"{module_name} has no {name} to hold; this Flower release is not the one Umbra pins"
        )
    return module, value


def _ring_after(fn: Callable[..., Any], bell: MessageBell) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            bell.ring()

    setattr(wrapper, _MARK, True)
    return wrapper


def install_link_waits(hold_s: float = DEFAULT_HOLD_S, *, max_held: int = MAX_HELD) -> MessageBell:
    """In a SuperLink process, before it starts: hold the Fleet and Runtime API pulls (see
    the module docstring). Idempotent; RuntimeError if a patch point moved, ValueError for
    ``hold_s`` outside (0, 30] (a node's request times out after 30 s)."""
    if not 0 < hold_s <= 30:
        raise ValueError(f"hold must be in (0, 30] seconds, got {hold_s}")
    bell = MessageBell()
    for module_name, class_name, methods in _STORES:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name, None)
        for method in methods:
            original = getattr(cls, method, None)
            if not callable(original):
                raise RuntimeError(
                    f"{module_name}.{class_name} has no {method}; this Flower release is not "
                    "the one Umbra pins"
                )
            if not getattr(original, _MARK, False):
                setattr(cls, method, _ring_after(original, bell))
    slots = threading.BoundedSemaphore(max_held)
    fleet, fleet_pull = _callable(*_FLEET)
    runtime, runtime_pull = _callable(*_RUNTIME)
    if not getattr(fleet_pull, _MARK, False):
        # fleet_handlers.pull_messages(request=..., state=..., store=...)
        setattr(fleet, _FLEET[1], held(
            fleet_pull, bell=bell, hold_s=hold_s, slots=slots,
            store_of=lambda args, kwargs: _argument(args, kwargs, "store", 2)))  # fmt: skip
    if not getattr(runtime_pull, _MARK, False):
        # runtime_handlers.pull_messages(request, state, task): the state holds the store
        setattr(runtime, _RUNTIME[1], held(
            runtime_pull, bell=bell, hold_s=hold_s, slots=slots,
            store_of=lambda args, kwargs: _argument(args, kwargs, "state", 1).object_store,
            narrow=without_unfinished_replies))  # fmt: skip
    return bell
