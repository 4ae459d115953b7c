"""The label holder's Flower ServerApp: the vertical protocol on Flower's Message API.

The ServerApp runs at the label-holding organisation (the "active party" of the vertical
federated learning literature): its top model and labels never leave it, so it is the
natural place for them, and Flower's ServerApp is what can address every party's node.
Its own feature modality (text in the ``vertical`` preset) runs in a ClientApp like every
other party's, so that under the secure sum it is masked like the others.

Per epoch: one ``train.vertical_step`` message per party per mini-batch (+1 to flush the
last gradient), then ``query.vertical_export`` for the evaluation of the assembled model
(the simulation's test harness; a deployment would evaluate through the split protocol).
Bytes are the serialized messages (`umbra.federation.common.message_bytes`), both ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from umbra.errors import UmbraError
from umbra.federation.common import (
    config_bytes,
    config_int,
    from_record,
    message_bytes,
    send_and_receive,
    to_record,
)
from umbra.vertical import protocol as P
from umbra.vertical.label_holder import LabelHolder
from umbra.vertical.trainer import Arrays, EpochStats, train_epoch

__all__ = ["Traffic", "VerticalServerSpec", "make_vertical_server_app"]


@dataclass
class Traffic:
    """Serialized bytes and round trips, counted from the real messages."""

    bytes_down: int = 0
    bytes_up: int = 0
    round_trips: int = 0


@dataclass
class VerticalServerSpec:
    """What the label holder's ServerApp runs.

    ``on_epoch(stats, arrays, traffic)`` evaluates the assembled model and returns the
    history row; ``on_finish(arrays, rows)`` receives the final model and the rows.
    """

    holder: LabelHolder
    parties: int
    epochs: int
    secure: bool
    clip: float
    timeout_s: float
    on_epoch: Callable[[EpochStats, dict[str, np.ndarray], Traffic], dict[str, Any]]
    on_finish: Callable[[dict[str, np.ndarray], list[dict[str, Any]]], None]
    before_epoch: Callable[[int], None] | None = None
    traffic: Traffic = field(default_factory=Traffic)


def _message(node: int, kind: str, action: str, cfg: dict[str, Any], arrays: Arrays) -> Message:
    content = RecordDict({"config": ConfigRecord(cfg)})
    if arrays:
        content["arrays"] = to_record(arrays)
    return Message(content=content, dst_node_id=node, message_type=f"{kind}.{action}")


def _reason(reply: Message) -> str:
    text = (reply.error.reason or "no reason given").strip()
    return text.splitlines()[0] if text else "no reason given"


def _arrays(reply: Message) -> Arrays:
    record = reply.content.array_records.get("arrays")
    return from_record(record) if record is not None else {}


class _GridExchange:
    def __init__(self, grid: Grid, nodes: dict[int, int], spec: VerticalServerSpec) -> None:
        self.grid, self.nodes, self.spec = grid, nodes, spec

    def send(self, kind: str, action: str,
             msgs: Mapping[int, tuple[dict[str, Any], Arrays]]) -> dict[int, Message]:  # fmt: skip
        out = [_message(self.nodes[p], kind, action, c, a) for p, (c, a) in msgs.items()]
        traffic = self.spec.traffic
        traffic.bytes_down += message_bytes(out)
        replies = send_and_receive(self.grid, out, timeout=self.spec.timeout_s)
        traffic.bytes_up += message_bytes(replies)
        traffic.round_trips += 1
        party_of = {n: p for p, n in self.nodes.items()}
        got: dict[int, Message] = {}
        for r in replies:
            if r.has_error():
                raise UmbraError(f"a party failed in {action}: {_reason(r)}")
            got[party_of[r.metadata.src_node_id]] = r
        if set(got) != set(msgs):
            missing = sorted(set(msgs) - set(got))
            raise UmbraError(f"parties {missing} did not answer {action} within "
                             f"{self.spec.timeout_s:g} s")  # fmt: skip
        return got

    def __call__(self, action: str,
                 msgs: Mapping[int, tuple[dict[str, Any], Arrays]]) -> dict[int, Arrays]:  # fmt: skip
        got = self.send("train", action, msgs)
        return {p: _arrays(m) for p, m in got.items()}


def _connect(grid: Grid, spec: VerticalServerSpec) -> dict[int, int]:
    deadline = time.monotonic() + spec.timeout_s
    while len(list(grid.get_node_ids())) < spec.parties:
        if time.monotonic() > deadline:
            raise UmbraError(f"only {len(list(grid.get_node_ids()))} of {spec.parties} parties "
                             "connected")  # fmt: skip
        time.sleep(0.05)
    nodes = sorted(grid.get_node_ids())
    msgs = [_message(n, "query", P.HELLO, {}, {}) for n in nodes]
    out: dict[int, int] = {}
    for r in send_and_receive(grid, msgs, timeout=spec.timeout_s):
        if r.has_error():
            raise UmbraError(f"a party did not say hello: {_reason(r)}")
        out[config_int(r.content.config_records["config"], P.PARTITION)] = r.metadata.src_node_id
    if sorted(out) != list(range(spec.parties)):
        raise UmbraError(f"parties {sorted(out)} answered; expected 0..{spec.parties - 1}")
    return out


def run_label_holder(grid: Grid, spec: VerticalServerSpec) -> None:
    """The whole run: connect, key set-up (secure sum), epochs, export."""
    nodes = _connect(grid, spec)
    exchange = _GridExchange(grid, nodes, spec)
    everyone = range(spec.parties)
    if spec.secure:
        keys = exchange.send("query", P.KEYS, {p: ({}, {}) for p in everyone})
        publics = {P.PEERS_PREFIX + str(p): config_bytes(m.content.config_records["config"], P.PUBLIC_KEY)
                   for p, m in keys.items()}  # fmt: skip
        exchange.send("query", P.PEERS, {p: (dict(publics), {}) for p in everyone})
    step = 0
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for epoch in range(1, spec.epochs + 1):
        if spec.before_epoch is not None:
            spec.before_epoch(epoch)
        stats = train_epoch(spec.holder, exchange, epoch=epoch, first_step=step,
                            secure=spec.secure, clip=spec.clip,
                            observe=epoch == spec.epochs)  # fmt: skip
        step = stats.next_step
        parts = exchange.send("query", P.EXPORT, {p: ({}, {}) for p in everyone})
        arrays = {k: v for m in parts.values() for k, v in _arrays(m).items()}
        arrays.update(spec.holder.export())
        rows.append(spec.on_epoch(stats, arrays, spec.traffic))
    spec.on_finish(arrays, rows)


def make_vertical_server_app(spec: VerticalServerSpec) -> ServerApp:
    """A ServerApp bound to ``spec``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        run_label_holder(grid, spec)

    return app
