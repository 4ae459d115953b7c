"""Client side of threshold CKKS over Flower: the handler of ``train.ckks`` messages.

A thin wrapper over `umbra.secure.he.holder` (the protocol steps): it reads the stage from
``config["stage"]``, keeps the holder's state between messages in
``context.state["ckks-state"]`` (as the SecAgg+ mod does: the Context never leaves the node
under the Deployment Engine; in simulation all parties share one process tree), trains on
``collect`` and encrypts the weighted contribution (`umbra.secure.contribution`,
`umbra.secure.he.payload`).

Identity: the node's private identity key comes from the mod's spec
(``ClientActionSpec.identities[partition id]``): in simulation an Ed25519 key generated from
os.urandom where the apps are built; under the Deployment Engine the SuperNode
authentication key (ECDSA P-384) the ClientApp read from the file its node config names
(``umbra-identity-key``, `umbra.apps.client`). The public roster from
``SecureSettings.roster``: the node's own copy (in a deployment, the file named by its
node config's ``umbra-roster``), never the server's. The run's rounds (the decryption budget of
the flooding bound) from ``SecureSettings.rounds``: a holder never takes them from the
server.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message

from umbra.federation.common import (
    ClientActionSpec,
    TrainFn,
    config_float,
    from_record,
    metric_values,
    reply_metrics,
)
from umbra.models import parameter_modality
from umbra.secure.contribution import CONTROL_PREFIX, make_contribution
from umbra.secure.he import holder
from umbra.secure.he.holder import (
    STAGE_ADVERTISE,
    STAGE_COLLECT,
    STAGE_DECRYPT,
    STAGE_FINISH,
    STAGE_KEYGEN,
    STAGE_REVEAL,
    HolderConfig,
)
from umbra.secure.he.payload import flatten_contribution
from umbra.secure.identity import IdentityError, check_own_key, run_key
from umbra.secure.transport import decode_proto, reply_content

__all__ = [
    "DROPOUT_ERROR_CODE",
    "STATE_RECORD",
    "make_ckks_handler",
]

log = logging.getLogger("umbra")

STATE_RECORD = "ckks-state"


#: Error code of the reply a fault-injected dropout sends (``secure.dropout_clients``)
DROPOUT_ERROR_CODE = 4102


def _state(context: Context) -> dict[str, Any]:
    if STATE_RECORD not in context.state:
        return {}
    return dict(context.state.config_records[STATE_RECORD])


def _save_state(context: Context, state: dict[str, Any]) -> None:
    context.state[STATE_RECORD] = ConfigRecord(state)


def _shared(_: str) -> str | None:
    return None


def make_ckks_handler(train_fn: TrainFn, spec: ClientActionSpec) -> TrainFn:
    """The client mod of the ``ckks`` client action (``train.ckks`` messages)."""
    secure = spec.secure
    dropouts = {int(c) for c in secure.dropout_clients}
    identities = dict(spec.identities)
    roster = {int(k): bytes(v) for k, v in secure.roster.items()}
    rounds = int(secure.rounds)

    def handler(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        key = identities.get(pid)
        if key is None:
            raise IdentityError(f"ckks client {pid}: no identity key")
        check_own_key(roster, pid, key)
        cfg = HolderConfig(
            client_id=pid,
            identity_key=key,
            roster=roster,
            threshold=float(secure.threshold),
            rounds=rounds,
            clip=float(secure.clip_range),
        )
        config = msg.content["config"]
        stage = str(config["stage"])
        proto = decode_proto(msg.content)
        run_id = run_key(msg.metadata.run_id)
        state = _state(context)
        reply: dict[str, Any]
        if stage == STAGE_ADVERTISE:
            reply = holder.advertise(cfg, state, run_id=run_id)
        elif stage == STAGE_REVEAL:
            reply = holder.reveal(cfg, state, proto, run_id=run_id)
        elif stage == STAGE_KEYGEN:
            reply = holder.keygen(cfg, state, proto, run_id=run_id)
        elif stage == STAGE_FINISH:
            reply = holder.finish(cfg, state, proto, run_id=run_id)
        elif stage == STAGE_COLLECT:
            rnd = int(proto["round"])
            holder.check_key_acks(cfg, state, proto, run_id=run_id)  # before training
            train_reply = train_fn(msg, context)
            incoming = from_record(msg.content.array_records["arrays"])
            x = {k: v for k, v in incoming.items() if not k.startswith(CONTROL_PREFIX)}
            contribution = make_contribution(
                x,
                from_record(train_reply.content.array_records["arrays"]),
                metric_values(reply_metrics(train_reply)),
                key_modality=parameter_modality
                if bool(config.get("modality-aware", True))
                else _shared,
                weight_scale=config_float(config, "weight-scale"),
            )
            vector = flatten_contribution(contribution, clip=cfg.clip)
            reply = holder.encrypt_update(cfg, state, vector, round_number=rnd)
            if pid in dropouts:
                # an error reply, as the engine makes of a crashed client, without its traceback
                _save_state(context, state)
                reason = f"client {pid} drops out after encrypting (fault injection)"
                return Message(Error(code=DROPOUT_ERROR_CODE, reason=reason), reply_to=msg)
        elif stage == STAGE_DECRYPT:
            reply = holder.decryption_share(cfg, state, proto, round_number=int(proto["round"]))
        else:
            raise RuntimeError(f"ckks client {pid}: unknown stage {stage!r}")
        _save_state(context, state)
        return Message(content=reply_content(reply, partition_id=pid), reply_to=msg)

    return handler
