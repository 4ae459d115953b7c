"""Umbra's ClientApp for Flower's Deployment Engine: one organisation's SuperNode.

A module-level `ClientApp` (``umbra.apps:client_app``). Each message's handler builds the
node's `ClientSpec` at run time from the run config (the same `Config` the server
resolves, :mod:`umbra.apps.run_config`) and the node's own ``--node-config``:

``partition-id``  the organisation's number in the federation (public);
``data-dir``      a folder holding this organisation's records only (the layout of
                  `umbra.federation.client_data`, one row set), or
``manifest``      its own manifest file (CSV or Parquet, docs/data.md), read and prepared
                  on the node against the schema the run config declares
                  (`umbra.apps.node_data`); one of the two;
``state-dir``     (optional) where it keeps its own state between rounds (SCAFFOLD's c_i,
                  the records prepared from its manifest); by default a folder keyed by
                  ``data-dir`` or ``manifest`` under ``$UMBRA_CLIENT_STATE`` or
                  ``~/.local/state/umbra/clients``.
``umbra-identity-key``  (optional) the path of its private identity key: its SuperNode
                  authentication key (ECDSA P-384, OpenSSH), never the key itself;
``umbra-roster``  (with the key) the path of its own copy of the identity roster (partition
                  id -> public key, `umbra.secure.identity.read_roster`), received out of
                  band: the trust anchor of the signing transports never comes from the
                  server. Without both, SecAgg+ runs unsigned and CKKS is refused.

The node reads nothing but its own records; the model is sized from them (with a
manifest: from the declared schema, so every node builds the same model). The handlers
are the simulation's (`train_reply`, `info_reply`, the secure transports' client mods),
so a deployed organisation trains exactly as a simulated one.

A vertical run's parties (``federation.layout = 'vertical'``) are served by the
``query.vertical_*`` and ``train.vertical_step`` handlers registered at the end: their
``data-dir`` is the party's own folder (`umbra.vertical.node_party`), and the handlers
after alignment are the simulation's (`umbra.vertical.client_app`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from umbra.apps.node_data import prepared_records
from umbra.apps.run_config import config_from_run_config
from umbra.config import Config
from umbra.deploy.pki import IDENTITY_KEY_NODE_CONFIG, ROSTER_NODE_CONFIG
from umbra.errors import ConfigError, DataError
from umbra.federation.attacks import AttackSpec
from umbra.federation.client_app import ClientSpec, info_reply, train_reply
from umbra.federation.client_data import load_client_data
from umbra.federation.common import (
    SecureSettings,
    SecureTransport,
    config_bytes,
    config_int,
    from_record,
    pack_message,
    unpack_message,
)
from umbra.run.folder import client_state_root
from umbra.run.prepare import model_spec_for
from umbra.run.simulation import secure_transport, train_settings
from umbra.secure import transports
from umbra.secure.identity import check_own_key, read_identity_key, read_roster
from umbra.vertical import protocol as VP
from umbra.vertical.client_app import add_party_handlers, reply
from umbra.vertical.node_party import (
    align_party,
    deployed_party_spec,
    hello_config,
    node_party,
    psi_reply,
)

__all__ = ["client_app", "client_spec", "node_identity", "packed_arrays_mod"]

Handler = Callable[[Message, Context], Message]


def packed_arrays_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Flower ClientApp mod: unpack the content a deployed ServerApp packed
    (`umbra.federation.common.pack_message`: one record instead of one object per record,
    array and chunk on every hop), and pack the reply the same way."""
    packed = unpack_message(msg)
    reply = call_next(msg, context)
    return pack_message(reply) if packed else reply


client_app = ClientApp(mods=[packed_arrays_mod])


def _records(cfg: Config, node_config: Mapping[str, Any]) -> tuple[Path, Path]:
    """This node's prepared records folder and its state root, from ``data-dir`` or
    ``manifest`` (one-line errors naming the key)."""
    if "manifest" in node_config and "data-dir" in node_config:
        raise ConfigError(
            "node config names both data-dir and manifest: give one (a prepared folder, or "
            "this organisation's own manifest)"
        )
    own = node_config.get("state-dir")
    if "manifest" in node_config:
        manifest = Path(str(node_config["manifest"]))
        state = Path(str(own)) if own else client_state_root(manifest)
        client = f"client_{node_config.get('partition-id', 0)}"
        return prepared_records(cfg, manifest, state / client / "records"), state
    if "data-dir" not in node_config:
        raise ConfigError(
            "node config has neither data-dir nor manifest: name this organisation's data"
        )
    folder = Path(str(node_config["data-dir"]))
    if not (folder / "meta.json").is_file():
        raise DataError(f"node config data-dir = {str(folder)!r} holds no prepared records")
    return folder, client_state_root(folder)


def node_identity(
    node_config: Mapping[str, Any], transport: SecureTransport | None
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """This node's identity: ({partition id: private key}, roster) read from the files its
    node config names, checked to name this node with this key; ({}, {}) when the
    transport does not sign or the node has no identity files. One-line errors naming the
    file (missing, unreadable, not a key or roster) or the mismatch."""
    if transport is None or not transport.signed:
        return {}, {}
    key_name, roster_name = IDENTITY_KEY_NODE_CONFIG, ROSTER_NODE_CONFIG
    has_key, has_roster = key_name in node_config, roster_name in node_config
    if not has_key and not has_roster:
        if transport.identity_required:
            raise ConfigError(
                f"secure.aggregation = {transport.name!r} needs this node's identity key and "
                f"roster: node config {key_name}=<key file> {roster_name}=<roster file>"
            )
        return {}, {}
    if not (has_key and has_roster):
        missing = roster_name if has_key else key_name
        raise ConfigError(f"node config names one identity file but not {missing}")
    pid = int(node_config["partition-id"])
    key = read_identity_key(Path(str(node_config[key_name])))
    roster = read_roster(Path(str(node_config[roster_name])))
    check_own_key(roster, pid, key)
    return {pid: key}, roster


@lru_cache(maxsize=4)
def _cached_spec(
    run_items: tuple[tuple[str, Any], ...], node_items: tuple[tuple[str, Any], ...]
) -> ClientSpec:
    cfg = config_from_run_config(dict(run_items))
    node_config = dict(node_items)
    folder, state = _records(cfg, node_config)
    transport = secure_transport(cfg)
    identities, roster = node_identity(node_config, transport)
    secure = SecureSettings.from_section(cfg.secure, roster=roster, rounds=cfg.federation.rounds)
    return ClientSpec(
        data_dir=str(folder),
        state_dir=str(state),
        model_spec=model_spec_for(cfg, load_client_data(str(folder), 0)),
        settings=train_settings(cfg),
        seed=cfg.run.seed,
        threads=cfg.run.threads,
        transports=(transport,) if transport is not None else (),
        secure=secure,
        identities=identities,
        privacy_unit=cfg.privacy.mode,
        own_data=True,
        attack=AttackSpec.from_config(cfg),
    )


def client_spec(context: Context) -> ClientSpec:
    """This node's spec from ``context.run_config`` and ``context.node_config`` (built once
    per process and run config)."""
    return _cached_spec(
        tuple(sorted(context.run_config.items())), tuple(sorted(context.node_config.items()))
    )


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """A plaintext round's training."""
    return train_reply(client_spec(context), msg, context)


@client_app.query()
def info(msg: Message, context: Context) -> Message:
    """The public metadata the server plans with."""
    return info_reply(client_spec(context), msg, context)


def _secure_handler(action: str) -> Handler:
    """The handler of ``train.<action>`` messages: the run's transport's client mod around
    `train_reply`, built from this node's spec."""

    def handler(msg: Message, context: Context) -> Message:
        spec = client_spec(context)
        chosen = [t for t in spec.transports if t.client_action == action]
        if not chosen:
            raise ConfigError(
                f"a train.{action} message, but this run's config does not use that transport"
            )
        return chosen[0].client_mod(partial(train_reply, spec), spec.action_spec())(msg, context)

    return handler


_registry = transports()
for _name in _registry.names():
    _action = _registry.get(_name).client_action
    client_app.train(_action)(_secure_handler(_action))


# vertical federation (docs/vertical.md): each node is one party, reading its own folder
@client_app.query(VP.HELLO)
def vertical_hello(msg: Message, context: Context) -> Message:
    """Which party this node is, and its modalities."""
    return reply(msg, dict(hello_config(context)), {})


@client_app.query(VP.PSI)
def vertical_psi(msg: Message, context: Context) -> Message:
    """The PSI server role for the label holder's blinded ids."""
    cfg = msg.content.config_records["config"]
    size = config_int(cfg, VP.CLIENT_SIZE)
    setup, response = psi_reply(context, client_size=size,
                                request=config_bytes(cfg, VP.PSI_REQUEST))  # fmt: skip
    _, folder = node_party(context)
    return reply(msg, {VP.PSI_SETUP: setup, VP.PSI_RESPONSE: response,
                       VP.SERVER_SIZE: len(folder.ids)}, {})  # fmt: skip


@client_app.query(VP.ALIGN)
def vertical_align(msg: Message, context: Context) -> Message:
    """This party's aligned rows from the shared ids' digests; a fresh state folder."""
    cfg = msg.content.config_records["config"]
    digests = from_record(msg.content.array_records["arrays"])[VP.DIGESTS]
    spec = json.loads(str(cfg[VP.MODEL_SPEC]))
    return reply(msg, {VP.ROWS: align_party(context, digests=digests, model_spec=spec)}, {})


add_party_handlers(client_app, deployed_party_spec)
