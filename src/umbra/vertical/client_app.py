"""The feature parties' Flower ClientApp: one per party, on Flower's Message API.

Each handler loads (or reuses) the node's :class:`FeatureParty` and answers one message
of :mod:`umbra.vertical.protocol`: hello (its index and modalities), keys / peers (the
secure sum's X25519 set-up), a step (gradient of the last batch in, embeddings or the
masked share of the next out), export (its bottom model, for the evaluation) and observed
(the gradients it kept, for the label-leakage audit).

The handlers are the same on both engines; what differs is where a node's
:class:`PartySpec` comes from (a ``PartySource``): in the simulation every party's spec
is known up front and the node picks its own by partition id
(:func:`make_vertical_client_app`); on the Deployment Engine the node builds its own spec
when it aligns (`umbra.vertical.node_party`) and Umbra's module-level ClientApp registers
the same handlers (:func:`add_party_handlers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from umbra.federation.common import config_bytes, config_int, from_record, to_record
from umbra.vertical import protocol as P
from umbra.vertical.party import FeatureParty, PartySpec

__all__ = [
    "PartySource",
    "VerticalClientSpec",
    "add_party_handlers",
    "forget_party",
    "make_vertical_client_app",
    "reply",
]

#: This node's party spec, from the message's context.
PartySource = Callable[[Context], PartySpec]

_PARTIES: dict[str, FeatureParty] = {}  # state_dir -> party, per worker process


@dataclass(frozen=True)
class VerticalClientSpec:
    """Every party's spec, by partition id (the simulation gives node i partition i)."""

    parties: tuple[PartySpec, ...]


def forget_party(state_dir: str) -> None:
    """Drop this process's in-memory party of ``state_dir`` (a new run starts there)."""
    _PARTIES.pop(state_dir, None)


def _party(pspec: PartySpec, step: int | None = None) -> FeatureParty:
    party = _PARTIES.get(pspec.state_dir)
    if party is None or (step is not None and not party.current(step)):
        party = FeatureParty(pspec)  # loads the saved state when there is one
        _PARTIES[pspec.state_dir] = party
    return party


def reply(
    msg: Message, config: dict[str, int | str | bytes], arrays: dict[str, np.ndarray]
) -> Message:
    """A reply to ``msg`` with one config record and (if any) one array record."""
    content = RecordDict({"config": ConfigRecord(dict(config))})
    if arrays:
        content["arrays"] = to_record(arrays)
    return Message(content=content, reply_to=msg)


def add_party_handlers(app: ClientApp, source: PartySource) -> None:
    """Register the party's handlers of keys, peers, step, export and observed on ``app``
    (hello is the caller's: it says which party the node is)."""

    @app.query(P.KEYS)
    def keys(msg: Message, context: Context) -> Message:
        party = _party(source(context))
        return reply(msg, {P.PUBLIC_KEY: party.public_key()}, {})

    @app.query(P.PEERS)
    def peers(msg: Message, context: Context) -> Message:
        cfg = msg.content.config_records["config"]
        publics = {int(k[len(P.PEERS_PREFIX) :]): config_bytes(cfg, k)
                   for k in cfg if k.startswith(P.PEERS_PREFIX)}  # fmt: skip
        _party(source(context)).set_peers(publics)
        return reply(msg, {}, {})

    @app.train(P.STEP_ACTION)
    def step(msg: Message, context: Context) -> Message:
        cfg = msg.content.config_records["config"]
        record = msg.content.array_records.get("arrays")
        arrays = from_record(record) if record is not None else {}
        t = config_int(cfg, P.STEP)
        party = _party(source(context), t)
        out = party.step(
            t,
            positions=arrays.get(P.POSITIONS),
            slots=arrays.get(P.SLOTS),
            batch=config_int(cfg, P.BATCH, 0),
            grad=arrays.get(P.GRAD),
            secure=bool(config_int(cfg, P.SECURE, 0)),
            observe=bool(config_int(cfg, P.OBSERVE, 0)),
        )
        key = P.SHARE if out is not None and out.dtype == np.uint32 else P.EMBEDDINGS
        return reply(msg, {}, {} if out is None else {key: out})

    @app.query(P.EXPORT)
    def export(msg: Message, context: Context) -> Message:
        # from the saved state: whichever worker process ran the last step saved it
        return reply(msg, {}, FeatureParty(source(context)).export())

    @app.query(P.OBSERVED)
    def observed(msg: Message, context: Context) -> Message:
        pos, grads = FeatureParty(source(context)).observed()
        return reply(msg, {}, {P.POSITIONS: pos, P.GRAD: grads} if len(pos) else {})


def make_vertical_client_app(spec: VerticalClientSpec) -> ClientApp:
    """A ClientApp serving every party of ``spec`` (each node picks its own)."""
    app = ClientApp()

    def source(context: Context) -> PartySpec:
        return spec.parties[int(context.node_config["partition-id"])]

    @app.query(P.HELLO)
    def hello(msg: Message, context: Context) -> Message:
        pspec = source(context)
        return reply(msg, {P.PARTITION: pspec.index, P.MODALITIES: ",".join(pspec.modalities)}, {})

    add_party_handlers(app, source)
    return app
