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

The same loop runs on the Deployment Engine (`umbra.vertical.deployed_run`): there the
label holder aligns the parties over the grid first (``align``, PSI over these messages)
and collects the audit's gradients last (``collect``); in the simulation the alignment
was done before the apps start and ``holder`` is given.
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

__all__ = [
    "GridExchange",
    "Traffic",
    "VerticalServerSpec",
    "history_row",
    "make_vertical_server_app",
    "reply_arrays",
    "run_label_holder",
]


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

    holder: LabelHolder | None
    parties: int
    epochs: int
    secure: bool
    clip: float
    timeout_s: float
    on_epoch: Callable[[EpochStats, dict[str, np.ndarray], Traffic], dict[str, Any]]
    on_finish: Callable[[dict[str, np.ndarray], list[dict[str, Any]]], None]
    before_epoch: Callable[[int], None] | None = None
    traffic: Traffic = field(default_factory=Traffic)
    #: ``align(grid, nodes, modalities) -> holder``: the alignment over the grid, when
    #: ``holder`` is None (deployment); ``modalities``: what each party's hello declared
    align: Callable[[Grid, dict[int, int], dict[int, tuple[str, ...]]], LabelHolder] | None = None
    #: ``collect(exchange)``: after the last epoch, before ``on_finish`` (the audit)
    collect: Callable[[GridExchange], None] | None = None


def history_row(
    stats: EpochStats, traffic: Traffic, history: list[dict[str, Any]], parties: int,
    ev: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One epoch's row of ``results.json`` (both engines): the epoch's bytes are the
    traffic since the rows in ``history``; ``ev`` the evaluation of the assembled model."""
    before = sum(r["bytes_down"] for r in history), sum(r["bytes_up"] for r in history)
    return {
        "round": stats.epoch, "clients": parties,
        "bytes_down": traffic.bytes_down - before[0], "bytes_up": traffic.bytes_up - before[1],
        "round_trips": stats.round_trips, "steps": stats.steps,
        "train_loss": stats.train_loss, "accuracy": ev["accuracy"],
        "macro_f1": ev["macro_f1"], "loss": ev["loss"], "wall_s": stats.wall_s,
    }  # fmt: skip


def _message(node: int, kind: str, action: str, cfg: dict[str, Any], arrays: Arrays) -> Message:
    content = RecordDict({"config": ConfigRecord(cfg)})
    if arrays:
        content["arrays"] = to_record(arrays)
    return Message(content=content, dst_node_id=node, message_type=f"{kind}.{action}")


def _reason(reply: Message) -> str:
    text = (reply.error.reason or "no reason given").strip()
    return text.splitlines()[0] if text else "no reason given"


def reply_arrays(reply: Message) -> Arrays:
    """The arrays of a party's reply ({} when it sent none)."""
    record = reply.content.array_records.get("arrays")
    return from_record(record) if record is not None else {}


class GridExchange:
    """Messages to parties by index over ``grid``, counted in ``traffic`` (bytes both ways
    and one round trip per call); an error reply or a party that does not answer within
    ``timeout_s`` is one-line `UmbraError`."""

    def __init__(self, grid: Grid, nodes: dict[int, int], timeout_s: float,
                 traffic: Traffic) -> None:  # fmt: skip
        self.grid, self.nodes, self.timeout_s, self.traffic = grid, nodes, timeout_s, traffic

    def send(self, kind: str, action: str,
             msgs: Mapping[int, tuple[dict[str, Any], Arrays]]) -> dict[int, Message]:  # fmt: skip
        """Send ``{party: (config, arrays)}`` as ``<kind>.<action>``; the replies by party."""
        out = [_message(self.nodes[p], kind, action, c, a) for p, (c, a) in msgs.items()]
        traffic = self.traffic
        traffic.bytes_down += message_bytes(out)
        replies = send_and_receive(self.grid, out, timeout=self.timeout_s)
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
                             f"{self.timeout_s:g} s")  # fmt: skip
        return got

    def __call__(self, action: str,
                 msgs: Mapping[int, tuple[dict[str, Any], Arrays]]) -> dict[int, Arrays]:  # fmt: skip
        got = self.send("train", action, msgs)
        return {p: reply_arrays(m) for p, m in got.items()}


def _connect(
    grid: Grid, spec: VerticalServerSpec
) -> tuple[dict[int, int], dict[int, tuple[str, ...]]]:
    """Wait for the parties and ask each which it is: {party: node id}, {party: modalities}."""
    deadline = time.monotonic() + spec.timeout_s
    while len(list(grid.get_node_ids())) < spec.parties:
        if time.monotonic() > deadline:
            raise UmbraError(f"only {len(list(grid.get_node_ids()))} of {spec.parties} parties "
                             "connected")  # fmt: skip
        time.sleep(0.05)
    nodes = sorted(grid.get_node_ids())
    msgs = [_message(n, "query", P.HELLO, {}, {}) for n in nodes]
    out: dict[int, int] = {}
    mods: dict[int, tuple[str, ...]] = {}
    for r in send_and_receive(grid, msgs, timeout=spec.timeout_s):
        if r.has_error():
            raise UmbraError(f"a party did not say hello: {_reason(r)}")
        cfg = r.content.config_records["config"]
        party = config_int(cfg, P.PARTITION)
        if party in out:
            raise UmbraError(f"two nodes say they are party {party}")
        out[party] = r.metadata.src_node_id
        mods[party] = tuple(m for m in str(cfg.get(P.MODALITIES, "")).split(",") if m)
    if sorted(out) != list(range(spec.parties)):
        missing = sorted(set(range(spec.parties)) - set(out))
        raise UmbraError(f"parties {sorted(out)} answered; expected 0..{spec.parties - 1}"
                         + (f" (party {missing[0]} is missing)" if missing else ""))  # fmt: skip
    return out, mods


def run_label_holder(grid: Grid, spec: VerticalServerSpec) -> None:
    """The whole run: connect, (align), key set-up (secure sum), epochs, export, (collect)."""
    nodes, modalities = _connect(grid, spec)
    holder = spec.holder
    if holder is None:
        if spec.align is None:
            raise ValueError("a VerticalServerSpec needs a holder or an align stage")
        holder = spec.align(grid, nodes, modalities)
    exchange = GridExchange(grid, nodes, spec.timeout_s, spec.traffic)
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
        stats = train_epoch(holder, exchange, epoch=epoch, first_step=step,
                            secure=spec.secure, clip=spec.clip,
                            observe=epoch == spec.epochs)  # fmt: skip
        step = stats.next_step
        parts = exchange.send("query", P.EXPORT, {p: ({}, {}) for p in everyone})
        arrays = {k: v for m in parts.values() for k, v in reply_arrays(m).items()}
        arrays.update(holder.export())
        rows.append(spec.on_epoch(stats, arrays, spec.traffic))
    if spec.collect is not None:
        spec.collect(exchange)
    spec.on_finish(arrays, rows)


def make_vertical_server_app(spec: VerticalServerSpec) -> ServerApp:
    """A ServerApp bound to ``spec``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        run_label_holder(grid, spec)

    return app
