"""Client side of CKKS aggregation over Flower: the handler of ``train.ckks`` messages.

Stages (``config["stage"]``):

1. ``advertise`` - the client creates an X25519 key pair and sends the public key;
2. ``provision`` - sent to one client only, the *key holder*: it generates the CKKS keys
   (`CkksKeyring.generate`, secret key created here), encrypts the secret context for
   every other client under a pairwise X25519 + HKDF key with ChaCha20-Poly1305, and
   returns those ciphertexts plus the secret-key-free server context;
3. ``collect`` - carries the global model and the key holder's encrypted keyring: the
   client opens its keyring, trains (`train_fn`), encrypts its weighted contribution
   (`umbra.secure.contribution`, `umbra.secure.he.payload`) and sends the ciphertexts;
4. ``decrypt`` - sent to one surviving client: it decrypts the *sum* the server computed
   and returns only the decrypted sum, after checking that it sums at least ``min-clients``
   clients (the count travels encrypted inside the sum, so a server that sends one
   client's ciphertext instead of the sum is refused).

Client secrets (the X25519 private key, the keyring's secret context) live between stages
in ``context.state["ckks-state"]``, as in the SecAgg+ mod (same trust assumption: the
Context never leaves the node under the Deployment Engine; in simulation all parties share
one process tree). The server never receives a Context.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, Message

from umbra.federation.client_app import ClientSpec, TrainFn
from umbra.federation.records import from_record
from umbra.models import parameter_modality
from umbra.secure.contribution import CONTROL_PREFIX, make_contribution
from umbra.secure.he.ckks import PRESETS, CkksKeyring, CkksParams
from umbra.secure.he.payload import flatten_contribution, split_sum
from umbra.secure.secagg import crypto
from umbra.secure.transport import decode_proto, reply_content

__all__ = [
    "KEYRING_INFO",
    "STAGE_ADVERTISE",
    "STAGE_COLLECT",
    "STAGE_DECRYPT",
    "STAGE_PROVISION",
    "STATE_RECORD",
    "keyring_aad",
    "make_ckks_handler",
]

log = logging.getLogger("umbra")

STAGE_ADVERTISE = "advertise"
STAGE_PROVISION = "provision"
STAGE_COLLECT = "collect"
STAGE_DECRYPT = "decrypt"
STATE_RECORD = "ckks-state"
KEYRING_INFO = b"umbra/ckks/v1/keyring-transport"


class DecryptionRefused(RuntimeError):
    """The decryptor refuses a ciphertext that is not a sum of enough clients."""


class DropoutInjected(RuntimeError):
    """Fault injection: this client drops out after encrypting (``secure.dropout_clients``)."""


def keyring_aad(*, holder: int, recipient: int, round_number: int) -> bytes:
    """Associated data binding a relayed keyring to (round, holder, recipient)."""
    return KEYRING_INFO + struct.pack("<QQQ", round_number, holder, recipient)


def _pair_info(a: int, b: int, round_number: int) -> bytes:
    return KEYRING_INFO + struct.pack("<QQQ", min(a, b), max(a, b), round_number)


def params_of(name: str) -> CkksParams:
    """The CKKS parameter preset ``name`` (`umbra.secure.he.ckks.PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"ckks_params must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def _state(context: Context) -> dict[str, Any]:
    if STATE_RECORD not in context.state:
        return {}
    return dict(context.state.config_records[STATE_RECORD])


def _save_state(context: Context, state: dict[str, Any]) -> None:
    context.state[STATE_RECORD] = ConfigRecord(state)


def _shared(_: str) -> str | None:
    return None


def _rng() -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def make_ckks_handler(train_fn: TrainFn, spec: ClientSpec) -> TrainFn:
    """Factory registered as the ``ckks`` client action (``train.ckks`` messages)."""
    secure = dict(spec.extra.get("secure", {}))
    dropouts = {int(c) for c in secure.get("dropout_clients", [])}

    def handler(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        cfg = msg.content["config"]
        stage = str(cfg["stage"])
        proto = decode_proto(msg.content)
        rnd = int(proto["round"])
        params = params_of(str(cfg["ckks-params"]))
        if stage == STAGE_ADVERTISE:
            me = int(cfg["ckks-id"])  # type: ignore[arg-type]
            keys = crypto.generate_keypair()
            _save_state(
                context, {"id": me, "round": rnd, "x25519": crypto.private_bytes(keys.private)}
            )
            reply: dict[str, Any] = {"round": rnd, "client_id": me, "pk": keys.public}
            return Message(content=reply_content(reply, partition_id=pid), reply_to=msg)
        state = _state(context)
        if not state or int(state["round"]) != rnd:
            raise RuntimeError(f"ckks client {pid}: stage {stage!r} without keys for round {rnd}")
        me = int(state["id"])
        private = X25519PrivateKey.from_private_bytes(bytes(state["x25519"]))
        if stage == STAGE_PROVISION:
            keyring = CkksKeyring.generate(params)
            shared = keyring.shared_bytes()
            ids = [int(i) for i in np.asarray(proto["ids"])]
            pks = list(proto["pks"])
            blobs = []
            for j, pk in zip(ids, pks, strict=True):
                key = crypto.agree(private, bytes(pk), info=_pair_info(me, j, rnd))
                aad = keyring_aad(holder=me, recipient=j, round_number=rnd)
                blobs.append(crypto.aead_encrypt(key, shared, aad=aad))
            state["keyring"] = shared
            _save_state(context, state)
            reply = {
                "round": rnd,
                "client_id": me,
                "to": np.asarray(ids, dtype=np.int64),
                "blobs": blobs,
                "server_context": keyring.server_context(),
            }
        elif stage == STAGE_COLLECT:
            holder = int(proto["holder"])
            if holder == me:
                shared = bytes(state["keyring"])
            else:
                key = crypto.agree(
                    private, bytes(proto["holder_pk"]), info=_pair_info(me, holder, rnd)
                )
                aad = keyring_aad(holder=holder, recipient=me, round_number=rnd)
                shared = crypto.aead_decrypt(key, bytes(proto["blob"]), aad=aad)
                state["keyring"] = shared
                _save_state(context, state)
            keyring = CkksKeyring.from_shared(shared, params)
            train_reply = train_fn(msg, context)
            incoming = from_record(msg.content.array_records["arrays"])
            x = {k: v for k, v in incoming.items() if not k.startswith(CONTROL_PREFIX)}
            modality_aware = bool(cfg.get("modality-aware", True))
            contribution = make_contribution(
                x,
                from_record(train_reply.content.array_records["arrays"]),
                dict(next(iter(train_reply.content.metric_records.values()))),  # type: ignore[arg-type]
                key_modality=parameter_modality if modality_aware else _shared,
                weight_scale=float(cfg["weight-scale"]),  # type: ignore[arg-type]
            )
            clip = float(cfg["clip-range"])  # type: ignore[arg-type]
            n = int(cfg["num-clients"])  # type: ignore[arg-type]
            vector = flatten_contribution(contribution, clip=clip)
            reply = keyring.encrypt_update(
                vector,
                client_id=me,
                round_number=rnd,
                num_clients=n,
                clip=clip if params.digits_per_real > 1 else None,
                rng=_rng(),
            )
            if pid in dropouts:
                raise DropoutInjected(f"client {pid} drops out after encrypting (fault injection)")
        elif stage == STAGE_DECRYPT:
            if "keyring" not in state:
                raise RuntimeError(f"ckks client {pid}: no keyring to decrypt with")
            keyring = CkksKeyring.from_shared(bytes(state["keyring"]), params)
            clip = float(cfg["clip-range"])  # type: ignore[arg-type]
            shapes = {
                str(k): tuple(int(d) for d in np.asarray(v))
                for k, v in decode_shapes(proto).items()
            }
            total = keyring.decrypt_sum(
                list(proto["ciphertexts"]),
                length=int(proto["length"]),
                num_summed=int(proto["num_summed"]),
                clip=clip,
                num_clients=int(cfg["num-clients"]),  # type: ignore[arg-type]
            )
            floats, ints = split_sum(total, shapes, clip=clip)
            clients = int(ints["clients"][0])
            need = int(cfg["min-clients"])  # type: ignore[arg-type]
            if clients < need or clients != int(proto["num_summed"]):
                raise DecryptionRefused(
                    f"ckks client {pid}: ciphertext sums {clients} clients, "
                    f"expected {int(proto['num_summed'])} >= {need}"
                )
            del context.state[STATE_RECORD]
            reply = {
                "round": rnd,
                "client_id": me,
                **{f"f/{k}": v for k, v in floats.items()},
                **{f"i/{k}": v for k, v in ints.items()},
            }
        else:
            raise RuntimeError(f"ckks client {pid}: unknown stage {stage!r}")
        return Message(content=reply_content(reply, partition_id=pid), reply_to=msg)

    return handler


def encode_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Model array shapes as protocol entries (``shape/<name>`` -> int64 array)."""
    return {f"shape/{k}": np.asarray(v, dtype=np.int64) for k, v in shapes.items()}


def decode_shapes(proto: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k[len("shape/") :]: v for k, v in proto.items() if k.startswith("shape/")}
