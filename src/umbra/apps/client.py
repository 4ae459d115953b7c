"""Umbra's ClientApp for Flower's Deployment Engine: one organisation's SuperNode.

A module-level `ClientApp` (``umbra.apps:client_app``). Each message's handler builds the
node's `ClientSpec` at run time from the run config (the same `Config` the server
resolves, :mod:`umbra.apps.run_config`) and the node's own ``--node-config``:

``partition-id``  the organisation's number in the federation (public);
``data-dir``      a folder holding this organisation's records only (the layout of
                  `umbra.federation.client_data`, one row set), or
``manifest``      (not yet) its own manifest file;
``state-dir``     (optional) where it keeps its own state between rounds (SCAFFOLD's c_i);
                  by default a folder keyed by ``data-dir`` under ``$UMBRA_CLIENT_STATE``
                  or ``~/.local/state/umbra/clients``.

The node reads nothing but its own folder; the model is sized from its own records. The
handlers are the simulation's (`train_reply`, `info_reply`, the secure transports' client
mods), so a deployed organisation trains exactly as a simulated one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from umbra.apps.run_config import config_from_run_config
from umbra.errors import ConfigError, DataError
from umbra.federation.attacks import AttackSpec
from umbra.federation.client_app import ClientSpec, info_reply, train_reply
from umbra.federation.client_data import load_client_data
from umbra.run.folder import client_state_root
from umbra.run.prepare import model_spec_for
from umbra.run.simulation import secure_setup, train_settings
from umbra.secure import transports

__all__ = ["client_app", "client_spec"]

client_app = ClientApp()

Handler = Callable[[Message, Context], Message]


def _data_dir(node_config: Mapping[str, Any]) -> Path:
    if "manifest" in node_config and "data-dir" not in node_config:
        raise ConfigError(
            "node config manifest: reading a manifest on the node is not supported yet; "
            "give data-dir (a prepared folder of this organisation's records)"
        )
    if "data-dir" not in node_config:
        raise ConfigError("node config has no data-dir: name this organisation's data folder")
    folder = Path(str(node_config["data-dir"]))
    if not (folder / "meta.json").is_file():
        raise DataError(f"node config data-dir = {str(folder)!r} holds no prepared records")
    return folder


@lru_cache(maxsize=4)
def _cached_spec(
    run_items: tuple[tuple[str, Any], ...], node_items: tuple[tuple[str, Any], ...]
) -> ClientSpec:
    cfg = config_from_run_config(dict(run_items))
    node_config = dict(node_items)
    folder = _data_dir(node_config)
    transport, secure, identities = secure_setup(cfg)
    if identities:
        raise ConfigError(
            f"secure.aggregation = {cfg.secure.aggregation!r} needs per-node identity keys, "
            "which a deployment does not distribute yet"
        )
    return ClientSpec(
        data_dir=str(folder),
        state_dir=str(client_state_root(folder)),
        model_spec=model_spec_for(cfg, load_client_data(str(folder), 0)),
        settings=train_settings(cfg),
        seed=cfg.run.seed,
        threads=cfg.run.threads,
        transports=(transport,) if transport is not None else (),
        secure=secure,
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
