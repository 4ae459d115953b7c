"""Client side of SecAgg+ over Flower: the handler of ``train.secagg`` messages.

Runs inside an organisation's ClientApp. Each SecAgg+ stage arrives as its own message
(``config["stage"]``); the handler dispatches it to `SecAggPlusClient`. The
collect-masked-input stage also carries the global model: the handler trains locally
(`train_fn`), turns the update into its weighted contribution
(`umbra.secure.contribution`), encodes it into Z_{2^32} and masks it.

State between stages. Flower's simulation engine may run a node's consecutive messages in
different worker processes, so the client's round secrets (X25519 private keys, the
self-mask seed, the Shamir shares it holds) are kept, like Flower's own SecAgg+ mod does,
in ``context.state`` - the RecordDict Flower carries with the node's Context - as the
ConfigRecord ``"secagg-state"``. Trust assumption: the Context belongs to the node. Under
the Deployment Engine it never leaves the SuperNode; in simulation every party runs in one
process tree (Flower's engine moves Contexts between its workers), which is a test
set-up, not a trust boundary. The server never receives a Context, so these secrets never
reach results.json, checkpoints or anything the server pickles; they are deleted when the
client sends its unmask reply and overwritten at the next round's first stage.

Pre-keys (one message exchange less per round). When the unmask request sets
``secagg-next-keys``, the client answers it, forgets the round's secrets and then draws two
fresh X25519 key pairs for the next round it takes part in: the public halves ride on the
unmask reply (``Key.NEXT_PK_C`` / ``Key.NEXT_PK_S``), the private halves go into the
ConfigRecord ``"secagg-next"`` of ``context.state``, under the same trust assumption as
``"secagg-state"``. In that next round the server skips the advertise exchange for the
node: its share_keys request, flagged ``secagg-prekeys``, carries the round configuration
and the node's ``secagg-id``, and the client deletes ``"secagg-next"`` before adopting the
keys (`SecAggPlusClient.adopt_keys`), so a pre-key pair serves one round only and a
replayed request is refused. An advertise request means the server holds no pre-keys for
the node: stale ones are deleted.

Signed advertisements. When the run has an identity roster (`SecureSettings.roster`, the
node's own copy: in a deployment read from the file its node config names) the node signs
its advertisement with its identity key (``ClientActionSpec.identities[partition id]``)
and refuses any neighbour whose signature does not verify
(`umbra.secure.secagg.advert`). Pre-keys are unsigned, so a signing node issues none: its
every round starts with a signed advertise exchange.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message

from umbra.federation.common import (
    ClientActionSpec,
    TrainFn,
    config_bytes,
    config_float,
    config_int,
    config_list,
    from_record,
    metric_values,
    reply_metrics,
)
from umbra.models import SHARED_GROUP, parameter_modality
from umbra.privacy.controller import DP_RANGE
from umbra.privacy.randomness import SecureRandom
from umbra.secure.contribution import (
    CONTROL_PREFIX,
    clipped_fraction,
    int_template,
    integer_noise_for,
    make_contribution,
    payload_template,
    shared_shapes,
    shared_sparsify,
)
from umbra.secure.identity import IdentityError, check_own_key, run_key
from umbra.secure.secagg import crypto
from umbra.secure.secagg.advert import NodeIdentity
from umbra.secure.secagg.client import ClientState, SecAggPlusClient
from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.constants import (
    CFG_NEXT_KEYS,
    CFG_PREKEYS,
    CFG_SECAGG_ID,
    RING_BITS,
    STAGE_ADVERTISE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    Key,
)
from umbra.secure.secagg.errors import ProtocolViolation
from umbra.secure.secagg.quantize import PayloadLayout, QuantizationSpec
from umbra.secure.shared_coordinates import round_coordinates
from umbra.secure.transport import decode_proto, reply_content

__all__ = [
    "DROPOUT_ERROR_CODE",
    "NEXT_RECORD",
    "STATE_RECORD",
    "issue_prekeys",
    "load_client",
    "make_secagg_handler",
    "save_client",
    "take_prekeys",
]

log = logging.getLogger("umbra")

#: Name of the ConfigRecord in ``context.state`` holding the client's round state.
STATE_RECORD = "secagg-state"
#: Name of the ConfigRecord in ``context.state`` holding the private pre-keys (one use).
NEXT_RECORD = "secagg-next"


#: Error code of the reply a fault-injected dropout sends (``secure.dropout_clients``)
DROPOUT_ERROR_CODE = 4101


def _pairs(prefix: str, mapping: dict[int, bytes]) -> dict[str, Any]:
    ids = sorted(mapping)
    out: dict[str, Any] = {f"{prefix}.ids": ids} if ids else {}
    if ids:
        out[f"{prefix}.vals"] = [mapping[i] for i in ids]
    return out


def _unpairs(record: ConfigRecord, prefix: str) -> dict[int, bytes]:
    if f"{prefix}.ids" not in record:
        return {}
    ids = config_list(record, f"{prefix}.ids")
    vals = config_list(record, f"{prefix}.vals")
    return {int(i): bytes(v) for i, v in zip(ids, vals, strict=True)}


def save_client(context: Context, client: SecAggPlusClient) -> None:
    """Store ``client``'s state (secrets included) in ``context.state``."""
    st = client.state
    rec: dict[str, Any] = {"client_id": st.client_id, "stage": st.stage}
    if st.config is not None:
        rec.update({f"cfg.{k}": int(v) for k, v in st.config.to_message().items()})
    if st.graph:
        rec["graph.ids"] = sorted(st.graph)
        for node, nbrs in st.graph.items():
            rec[f"graph.{node}"] = sorted(nbrs) or [-1]
    rec.update(_pairs("pk_c", st.pk_c))
    rec.update(_pairs("pk_s", st.pk_s))
    rec.update(_pairs("b", st.b_shares))
    rec.update(_pairs("sk", st.sk_shares))
    if st.masked_with:
        rec["masked_with"] = list(st.masked_with)
    if st.rejected:
        rec["rejected"] = list(st.rejected)
    if st.c_keys is not None and st.s_keys is not None:
        rec["c_key"] = crypto.private_bytes(st.c_keys.private)
        rec["s_key"] = crypto.private_bytes(st.s_keys.private)
    if st.self_seed is not None:
        rec["self_seed"] = st.self_seed
    if st.graph_randomness is not None:
        rec["graph_r"] = st.graph_randomness
    if st.roster:
        rec["roster"] = list(st.roster)
    rec.update(_pairs("gc", st.graph_commitments))
    context.state[STATE_RECORD] = ConfigRecord(rec)


def load_client(context: Context, identity: NodeIdentity | None = None) -> SecAggPlusClient | None:
    """Rebuild the client stored by `save_client` (None if there is none); ``identity``
    is the node's signing identity (never stored in the Context)."""
    if STATE_RECORD not in context.state:
        return None
    rec = context.state.config_records[STATE_RECORD]
    client = SecAggPlusClient(config_int(rec, "client_id"), identity=identity)
    st: ClientState = client.state
    st.stage = str(rec["stage"])
    cfg = {k[4:]: v for k, v in rec.items() if k.startswith("cfg.")}
    if cfg:
        st.config = SecAggConfig.from_message(cfg)
    if "graph.ids" in rec:
        ids = config_list(rec, "graph.ids")
        st.graph = {}
        for n in ids:
            nbrs = config_list(rec, f"graph.{n}")
            st.graph[int(n)] = frozenset(int(j) for j in nbrs if int(j) >= 0)
    st.pk_c, st.pk_s = _unpairs(rec, "pk_c"), _unpairs(rec, "pk_s")
    st.b_shares, st.sk_shares = _unpairs(rec, "b"), _unpairs(rec, "sk")
    st.masked_with = tuple(int(j) for j in config_list(rec, "masked_with"))
    st.rejected = tuple(int(j) for j in config_list(rec, "rejected"))
    if "c_key" in rec and "s_key" in rec:
        st.c_keys = crypto.keypair_from(config_bytes(rec, "c_key"))
        st.s_keys = crypto.keypair_from(config_bytes(rec, "s_key"))
    if "self_seed" in rec:
        st.self_seed = config_bytes(rec, "self_seed")
    if "graph_r" in rec:
        st.graph_randomness = config_bytes(rec, "graph_r")
    st.roster = tuple(int(j) for j in config_list(rec, "roster"))
    st.graph_commitments = _unpairs(rec, "gc")
    return client


def forget_client(context: Context) -> None:
    """Delete the stored round state (secrets included)."""
    if STATE_RECORD in context.state:
        del context.state[STATE_RECORD]


def issue_prekeys(context: Context) -> dict[str, bytes]:
    """Draw the key pairs of the node's next round; store the private halves, return the
    public ones (``Key.NEXT_PK_C`` / ``Key.NEXT_PK_S``) for the unmask reply."""
    c_keys, s_keys = crypto.generate_keypair(), crypto.generate_keypair()
    context.state[NEXT_RECORD] = ConfigRecord(
        {
            "c_key": crypto.private_bytes(c_keys.private),
            "s_key": crypto.private_bytes(s_keys.private),
        }
    )
    return {Key.NEXT_PK_C: c_keys.public, Key.NEXT_PK_S: s_keys.public}


def take_prekeys(context: Context) -> tuple[bytes, bytes] | None:
    """Remove and return the stored private pre-keys ``(c, s)`` (None if there are none)."""
    if NEXT_RECORD not in context.state:
        return None
    rec = context.state.config_records[NEXT_RECORD]
    del context.state[NEXT_RECORD]  # before any use: a pre-key pair serves one round only
    return config_bytes(rec, "c_key"), config_bytes(rec, "s_key")


def _rng() -> SecureRandom:
    """Rounding (and, in DP rounds, the discrete Gaussian share): the privacy stream."""
    return SecureRandom()


def masked_contribution_vector(
    msg: Message, train_reply: Message, *, num_clients: int, ring_bits: int = RING_BITS
) -> tuple[np.ndarray, float]:
    """Encode the weighted contribution of ``train_reply`` for the ring Z_{2^ring_bits}
    (a uint32, or uint16, vector).

    Returns ``(vector, clipped fraction)``. Public parameters come from the message's
    ConfigRecord ``"config"``: ``clip-range``, ``weight-scale``, ``modality-aware``, and in
    a DP round with distributed noise the plan (``dp-noise-shares`` = t,
    ``dp-integer-noise``, ``dp-sigma-<group>``, ``dp-range``). Then the DP arrays arrive noiseless with
    their per-group sensitivities in the local reply metrics (``dp-sens-<group>``) and
    get the distributed discrete Gaussian (`umbra.secure.contribution.integer_noise_for`):
    randomised rounding and a share ``N_Z(0, σ_g² Δ_g² / t)`` per coordinate; a value the
    quantiser would clip or a level that could wrap refuses the round (``DDGError``).
    """
    cfg = msg.content["config"]
    clip = config_float(cfg, "clip-range")
    incoming = from_record(msg.content.array_records["arrays"])
    x = {k: v for k, v in incoming.items() if not k.startswith(CONTROL_PREFIX)}
    y = from_record(train_reply.content.array_records["arrays"])
    metrics = metric_values(reply_metrics(train_reply))
    key_modality = parameter_modality if bool(cfg.get("modality-aware", True)) else _shared
    contribution = make_contribution(
        x,
        y,
        metrics,
        key_modality=key_modality,
        weight_scale=config_float(cfg, "weight-scale"),
        dp_range=config_int(cfg, DP_RANGE, 1),
    )
    shared = round_coordinates(cfg)  # compression "shared-k": only the public coordinates
    contribution = shared_sparsify(contribution, shared)
    shapes = shared_shapes({k: tuple(v.shape) for k, v in incoming.items()}, shared)
    layout = PayloadLayout.from_arrays(payload_template(shapes), int_template(), clip=clip,
                                       num_clients=num_clients, bits=ring_bits)  # fmt: skip
    spec = QuantizationSpec(clip=clip, num_clients=num_clients, bits=ring_bits)
    noise = integer_noise_for(
        dict(cfg),
        metrics,
        {k: v.size for k, v in x.items()},
        key_group=_privacy_group,
        scale=spec.scale,
        half_range=spec.clip * spec.scale,
    )
    vector = layout.encode(contribution.floats, contribution.ints, rng=_rng(), noise=noise)
    return vector, clipped_fraction(contribution, clip=clip)


def _shared(_: str) -> str | None:
    return None


def _privacy_group(key: str) -> str:
    """The DP parameter group of a model array (`umbra.models.parameter_groups`)."""
    return parameter_modality(key) or SHARED_GROUP


def make_secagg_handler(train_fn: TrainFn, spec: ClientActionSpec) -> TrainFn:
    """The client mod of the ``secagg`` client action (``train.secagg`` messages)."""
    dropouts = {int(c) for c in spec.secure.dropout_clients}
    # the organisation's own threshold: a server asking for fewer survivors is refused
    fraction = float(spec.secure.threshold)
    roster = {int(k): bytes(v) for k, v in spec.secure.roster.items()}
    keys = dict(spec.identities)

    def node_identity(pid: int, msg: Message) -> NodeIdentity | None:
        """The node's signing identity in this run (None: the run has no roster)."""
        if not roster:
            return None
        key = keys.get(pid)
        if key is None:
            raise IdentityError(f"client {pid}: the run signs advertisements but this node "
                                "has no identity key")  # fmt: skip
        check_own_key(roster, pid, key)
        return NodeIdentity(partition_id=pid, private_key=key, roster=roster,
                            run_id=run_key(msg.metadata.run_id))  # fmt: skip

    def handler(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        identity = node_identity(pid, msg)
        cfg_rec = msg.content.config_records["config"]
        stage = str(cfg_rec["stage"])
        proto = decode_proto(msg.content)
        if stage == STAGE_ADVERTISE_KEYS:
            take_prekeys(context)  # the server holds none for this node: drop stale ones
            client = SecAggPlusClient(
                config_int(cfg_rec, CFG_SECAGG_ID),
                threshold_fraction=fraction,
                identity=identity,
            )
            reply = client.advertise_keys(proto)
        elif stage == STAGE_SHARE_KEYS and bool(cfg_rec.get(CFG_PREKEYS, False)):
            prekeys = take_prekeys(context)
            if prekeys is None:
                raise ProtocolViolation(f"client {pid}: share_keys on pre-keys it does not hold")
            client = SecAggPlusClient(
                config_int(cfg_rec, CFG_SECAGG_ID),
                threshold_fraction=fraction,
                identity=identity,
            )
            client.adopt_keys(proto, *prekeys)
            reply = client.share_keys(proto)
        else:
            loaded = load_client(context, identity)
            if loaded is None:
                raise ProtocolViolation(f"client {pid}: stage {stage!r} before advertise_keys")
            client = loaded
            if stage == STAGE_REVEAL_SEED:
                reply = client.reveal_seed(proto)
            elif stage == STAGE_SHARE_KEYS:
                reply = client.share_keys(proto)
            elif stage == STAGE_COLLECT_MASKED:
                cfg = client.state.config
                assert cfg is not None
                train_reply = train_fn(msg, context)
                vector, clipped = masked_contribution_vector(
                    msg, train_reply, num_clients=cfg.num_clients, ring_bits=cfg.ring_bits
                )
                if clipped > 0:
                    log.warning(
                        "secagg+ client %d: %.2g%% of the weighted update clipped to the "
                        "quantization range",
                        pid,
                        100 * clipped,
                    )
                reply = client.collect_masked_input(proto, vector=vector)
            elif stage == STAGE_UNMASK:
                reply = client.unmask(proto)
                forget_client(context)
                if bool(cfg_rec.get(CFG_NEXT_KEYS, False)) and identity is None:
                    reply.update(issue_prekeys(context))
                return Message(content=reply_content(reply, partition_id=pid), reply_to=msg)
            else:
                raise ProtocolViolation(f"client {pid}: unknown stage {stage!r}")
        save_client(context, client)
        if stage == STAGE_COLLECT_MASKED and pid in dropouts:
            # an error reply, as the engine makes of a crashed client, without its traceback
            reason = f"client {pid} drops out after masking (fault injection)"
            return Message(Error(code=DROPOUT_ERROR_CODE, reason=reason), reply_to=msg)
        return Message(content=reply_content(reply, partition_id=pid), reply_to=msg)

    return handler
