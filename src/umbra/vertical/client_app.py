"""The feature parties' Flower ClientApp: one per party, on Flower's Message API.

Each handler loads (or reuses) the node's :class:`FeatureParty` and answers one message
of :mod:`umbra.vertical.protocol`: hello (its index), keys / peers (the secure sum's
X25519 set-up), a step (gradient of the last batch in, embeddings or the masked share of
the next out) and export (its bottom model, for the simulation's evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from umbra.federation.common import config_bytes, config_int, from_record, to_record
from umbra.vertical import protocol as P
from umbra.vertical.party import FeatureParty, PartySpec

__all__ = ["VerticalClientSpec", "make_vertical_client_app"]

_PARTIES: dict[str, FeatureParty] = {}  # state_dir -> party, per worker process


@dataclass(frozen=True)
class VerticalClientSpec:
    """Every party's spec, by partition id (the simulation gives node i partition i)."""

    parties: tuple[PartySpec, ...]


def _party(spec: VerticalClientSpec, context: Context, step: int | None = None) -> FeatureParty:
    index = int(context.node_config["partition-id"])
    pspec = spec.parties[index]
    party = _PARTIES.get(pspec.state_dir)
    if party is None or (step is not None and not party.current(step)):
        party = FeatureParty(pspec)  # loads the saved state when there is one
        _PARTIES[pspec.state_dir] = party
    return party


def _reply(msg: Message, config: dict[str, int | bytes], arrays: dict[str, np.ndarray]) -> Message:
    content = RecordDict({"config": ConfigRecord(dict(config))})
    if arrays:
        content["arrays"] = to_record(arrays)
    return Message(content=content, reply_to=msg)


def make_vertical_client_app(spec: VerticalClientSpec) -> ClientApp:
    """A ClientApp serving every party of ``spec`` (each node picks its own)."""
    app = ClientApp()

    @app.query(P.HELLO)
    def hello(msg: Message, context: Context) -> Message:
        return _reply(msg, {P.PARTITION: int(context.node_config["partition-id"])}, {})

    @app.query(P.KEYS)
    def keys(msg: Message, context: Context) -> Message:
        party = _party(spec, context)
        return _reply(msg, {P.PUBLIC_KEY: party.public_key()}, {})

    @app.query(P.PEERS)
    def peers(msg: Message, context: Context) -> Message:
        cfg = msg.content.config_records["config"]
        publics = {int(k[len(P.PEERS_PREFIX) :]): config_bytes(cfg, k)
                   for k in cfg if k.startswith(P.PEERS_PREFIX)}  # fmt: skip
        _party(spec, context).set_peers(publics)
        return _reply(msg, {}, {})

    @app.train(P.STEP_ACTION)
    def step(msg: Message, context: Context) -> Message:
        cfg = msg.content.config_records["config"]
        record = msg.content.array_records.get("arrays")
        arrays = from_record(record) if record is not None else {}
        t = config_int(cfg, P.STEP)
        party = _party(spec, context, t)
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
        return _reply(msg, {}, {} if out is None else {key: out})

    @app.query(P.EXPORT)
    def export(msg: Message, context: Context) -> Message:
        # from the saved state: whichever worker process ran the last step saved it
        index = int(context.node_config["partition-id"])
        return _reply(msg, {}, FeatureParty(spec.parties[index]).export())

    return app
