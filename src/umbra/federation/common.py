"""What both sides of a round share: message keys, wire helpers, the client-action types and
the interface of a secure round transport.

Server code (the round loop, the secure-aggregation workflows) and client code (the
ClientApp, the secure-aggregation client mods) import this module; it imports nothing else
of Umbra (only Flower and numpy), so a client needs no server module and a secure mode
needs nothing of the federation but this.

Contents, top to bottom: message keys; typed accessors for record values; conversions
between numpy dicts and records, real wire sizes and `send_and_receive` (push, then pull
with back-off); `RoundOutcome` (what a training round produced); the client-action types
(`TrainFn`, `SecureSettings`, `ClientActionSpec`); the round-transport interface
(`SecureRound` in, `SecureSum` out, `SecureAggregator`, and the registry entry
`SecureTransport` that pairs a server factory with its client mod).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto, recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=E0611
from google.protobuf.message import DecodeError

__all__ = [
    "CONTROL_PREFIX",
    "FIRST_POLL_S",
    "INLINE_CONTENT_BYTES",
    "MAX_POLL_S",
    "NUM_EXAMPLES",
    "PACKED",
    "PARTITION_ID",
    "ClientActionSpec",
    "ClientMod",
    "RoundOutcome",
    "SecureAggregator",
    "SecureRound",
    "SecureSettings",
    "SecureSum",
    "SecureTransport",
    "SubsetGrid",
    "TrainFn",
    "config_bytes",
    "config_float",
    "config_int",
    "config_list",
    "count_key",
    "from_record",
    "is_packed",
    "message_bytes",
    "metric_float",
    "metric_int",
    "metric_values",
    "pack_content",
    "pack_message",
    "packs_messages",
    "reply_metrics",
    "send_and_receive",
    "to_record",
    "unpack_content",
    "unpack_message",
]

# ------------------------------------------------------------------------------ keys

#: Keys of SCAFFOLD control variates travel in the same ArrayRecord under this prefix.
CONTROL_PREFIX = "cv."
#: MetricRecord key of a client's record count (public under zero-out adjacency).
NUM_EXAMPLES = "num-examples"
#: MetricRecord key of the client's partition id.
PARTITION_ID = "partition-id"


def count_key(modality: str) -> str:
    """MetricRecord key holding a client's number of records with ``modality``."""
    return f"n-{modality}"


# ------------------------------------------------------------------- typed accessors

_MISSING: Any = object()


def _number(record: Mapping[str, Any], key: str, default: Any) -> int | float:
    value = record.get(key, default) if default is not _MISSING else record[key]
    if isinstance(value, bool | int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    raise ValueError(f"record value {key!r} is not a number: {type(value).__name__}")


def config_int(record: Mapping[str, Any], key: str, default: int = _MISSING) -> int:
    """``record[key]`` (or ``default``) as an int; KeyError if absent without a default,
    ValueError if not a number. For ConfigRecords and MetricRecords alike."""
    return int(_number(record, key, default))


def config_float(record: Mapping[str, Any], key: str, default: float = _MISSING) -> float:
    """``record[key]`` (or ``default``) as a float (see `config_int`)."""
    return float(_number(record, key, default))


def config_bytes(record: Mapping[str, Any], key: str) -> bytes:
    """``record[key]`` as bytes; KeyError if absent, ValueError if not bytes."""
    value = record[key]
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise ValueError(f"record value {key!r} is not bytes: {type(value).__name__}")


def config_list(record: Mapping[str, Any], key: str, default: Iterable[Any] = ()) -> list[Any]:
    """``record[key]`` (or ``default``) as a list; ValueError if the value is a scalar."""
    value = record.get(key, _MISSING)
    if value is _MISSING:
        return list(default)
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"record value {key!r} is not a list: {type(value).__name__}")


#: The same accessors, named for MetricRecords.
metric_int = config_int
metric_float = config_float


def metric_values(record: Mapping[str, Any]) -> dict[str, float]:
    """A MetricRecord's scalar entries as floats (list entries are left out)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float | np.number)}


def reply_metrics(msg: Message) -> MetricRecord:
    """The first MetricRecord of a reply (a client's public metrics)."""
    return next(iter(msg.content.metric_records.values()))


# ---------------------------------------------------------------------------- wire


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """name -> ndarray as an ArrayRecord (keys kept, arrays made contiguous)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of `to_record`."""
    return {k: v.numpy() for k, v in record.items()}


#: The one record (and the one entry in it) of a packed message's content (`pack_content`).
PACKED = "umbra-packed"
#: Largest packed content carried in a ConfigRecord (Flower's own array chunk size, 5 MB);
#: larger content travels as one Array, which Flower splits into chunks as usual.
INLINE_CONTENT_BYTES = 5 * 1024 * 1024


def pack_content(content: RecordDict) -> RecordDict:
    """``content`` (every record: arrays, configs, metrics) as one record holding its
    protobuf bytes (Flower's own `recorddict_to_proto`): a ConfigRecord entry up to
    `INLINE_CONTENT_BYTES`, else one uint8 Array.

    Flower's Deployment Engine moves every record, every Array and every chunk of an Array
    as an object of its own, one request per object on every hop (ServerApp -> SuperLink
    -> SuperNode -> ClientApp and back). A train message of arrays and a config costs six
    objects (76 Arrays of the default model would cost 81); packed, it costs three: the
    message, its content and the record. `unpack_content` is the inverse."""
    blob = recorddict_to_proto(content).SerializeToString()
    if len(blob) <= INLINE_CONTENT_BYTES:
        return RecordDict({PACKED: ConfigRecord({PACKED: blob})})
    return RecordDict({PACKED: ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})})


def is_packed(content: RecordDict) -> bool:
    """Whether ``content`` is a `pack_content` record."""
    return list(content.keys()) == [PACKED]


def unpack_content(content: RecordDict) -> RecordDict:
    """The content `pack_content` packed (content that is not packed is returned as is);
    malformed bytes are a one-line ValueError."""
    if not is_packed(content):
        return content
    record = content[PACKED]
    try:
        if isinstance(record, ConfigRecord):
            blob = record[PACKED]
            if not isinstance(blob, bytes):
                raise ValueError("the packed entry is not bytes")
        elif isinstance(record, ArrayRecord):
            blob = record[PACKED].numpy().tobytes()
        else:
            raise ValueError(f"a packed {type(record).__name__}")
        return recorddict_from_proto(ProtoRecordDict.FromString(blob))
    except (ValueError, TypeError, KeyError, DecodeError) as err:
        raise ValueError(f"malformed packed message: {err}") from None


def pack_message(msg: Message) -> Message:
    """``msg`` with its content packed (`pack_content`), in place."""
    if msg.has_content() and not is_packed(msg.content):
        msg.content = pack_content(msg.content)
    return msg


def unpack_message(msg: Message) -> bool:
    """Unpack ``msg``'s content in place; whether it was packed."""
    if msg.has_content() and is_packed(msg.content):
        msg.content = unpack_content(msg.content)
        return True
    return False


class SubsetGrid:
    """A view of a Grid that lists only ``nodes`` (for a strategy's or DP's configure: a
    round's Poisson sample, a buffer's clients); messages still travel through the real
    Grid."""

    def __init__(self, grid: Any, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def packs_messages(grid: Any) -> bool:
    """Whether messages through ``grid`` are packed: on the Deployment Engine's grid
    (``HttpGrid``), where every array is a request per hop; not in simulation."""
    return type(grid).__name__ == "HttpGrid"


def message_bytes(messages: Iterable[Message]) -> int:
    """Sum of the serialized (protobuf) sizes of ``messages`` as Flower sends them."""
    return sum(message_to_proto(m).ByteSize() for m in messages)


#: First pause between pushing the messages and pulling replies.
FIRST_POLL_S = 0.002
#: Longest pause between two pulls (while few replies are pending).
MAX_POLL_S = 0.05
#: Added to the longest pause per pending reply: a pull costs Flower's link state time in
#: proportion to the pending messages (and holds its lock), so with a fixed interval a
#: stage of n clients would cost O(n^2) in pulls; 100 pending replies -> 0.1 s between pulls.
POLL_S_PER_PENDING = 0.001


def send_and_receive(
    grid: Any,
    messages: Iterable[Message],
    *,
    timeout: float | None,
    first_poll_s: float = FIRST_POLL_S,
    max_poll_s: float = MAX_POLL_S,
    backoff: float = 1.5,
    poll_s_per_pending: float = POLL_S_PER_PENDING,
) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Flower's ``Grid.send_and_receive`` sleeps a fixed interval between pulls (0.1 s in the
    simulation engine, 3 s in the Deployment Engine's gRPC grid); a multi-stage round
    (SecAgg+ has three or four exchanges, CKKS three) would pay it in every stage. Here the
    messages are pushed with ``grid.push_messages`` and pulled with ``grid.pull_messages``,
    first after ``first_poll_s``, then at intervals growing by ``backoff`` up to
    ``max_poll_s`` (raised by ``poll_s_per_pending`` per reply still pending): a fast stage
    returns almost as soon as its last reply lands, a slow one (local training) costs a few
    cheap pulls per second, and a stage of 1,000 clients no more pulls than it has replies.

    Same contract as Flower's ``Grid.send_and_receive`` (replies in arrival order; a node
    that does not answer in time is simply missing; ``timeout=None`` waits for all). A grid
    without ``push_messages``/``pull_messages`` (a test double) is asked through its own
    ``send_and_receive``.
    """
    if not (0 < first_poll_s <= max_poll_s) or backoff < 1.0 or poll_s_per_pending < 0:
        raise ValueError(
            "need 0 < first_poll_s <= max_poll_s, backoff >= 1 and poll_s_per_pending >= 0"
        )
    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        return list(grid.send_and_receive(messages, timeout=timeout))
    packed = packs_messages(grid)
    if packed:
        messages = [pack_message(m) for m in messages]
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    pause = first_poll_s
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        time.sleep(pause if left is None else max(0.0, min(pause, left)))
        got = list(grid.pull_messages(pending))
        if packed:
            for reply in got:
                unpack_message(reply)
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if deadline is not None and time.monotonic() >= deadline:
            break
        pause = min(pause * backoff, max(max_poll_s, poll_s_per_pending * len(pending)))
    return replies


# -------------------------------------------------------------------------- outcome


@dataclass
class RoundOutcome:
    """What one training round produced.

    ``record`` is the new global model (None: the round aborted and the model stays as it
    was, ``note`` says why); bytes are real serialized message sizes, in total and per
    client (keyed by partition id, ``{"up": ..., "down": ...}``). ``dropped_nodes`` are the
    node ids sent the round's train message whose update is not in the aggregate (no reply
    within the reply timeout, an error reply, or a dropout the secure protocol recovered
    from); ``partitions`` maps the node ids the round heard from to their partition ids,
    so the server loop can name the dropouts by partition.
    """

    record: ArrayRecord | None
    metrics: MetricRecord | None
    bytes_up: int
    bytes_down: int
    clients: int
    per_client: dict[int, dict[str, int]] = field(default_factory=dict)
    note: str | None = None
    dropped_nodes: tuple[int, ...] = ()
    partitions: dict[int, int] = field(default_factory=dict)


# ------------------------------------------------------------------- client actions

#: A ClientApp handler: the incoming message and the node's Context -> the reply.
TrainFn = Callable[[Message, Context], Message]


@dataclass(frozen=True)
class SecureSettings:
    """The run's secure-aggregation settings both sides read (``secure.*`` of the config).

    ``threshold`` is the fraction of a round's clients needed to finish it, in (0.5, 1];
    ``clip_range`` the ±R range of each weighted update element; ``prekeys`` and
    ``dropout_clients`` are SecAgg+ options (fault injection: partition ids that drop out
    after masking). ``roster`` (partition id -> public identity key, `umbra.secure.identity`:
    the signing transports' trust anchor; empty: unsigned rounds) and ``rounds`` (the run's
    rounds: threshold CKKS's decryption budget) are public and fixed when the run is
    assembled, never taken from a server message (a node reads its roster from its own
    file under the Deployment Engine).
    """

    aggregation: str = "none"
    threshold: float = 0.67
    clip_range: float = 4.0
    prekeys: bool = True
    dropout_clients: tuple[int, ...] = ()
    roster: dict[int, bytes] = field(default_factory=dict)
    rounds: int = 1

    @classmethod
    def from_section(
        cls, section: Any, *, roster: Mapping[int, bytes] | None = None, rounds: int = 1
    ) -> SecureSettings:
        """From the config's ``secure`` section (read by attribute: this module imports no
        config class), the CKKS roster and the run's rounds."""
        return cls(
            aggregation=str(section.aggregation),
            threshold=float(section.threshold),
            clip_range=float(section.clip_range),
            prekeys=bool(section.prekeys),
            dropout_clients=tuple(int(c) for c in section.dropout_clients),
            roster={int(k): bytes(v) for k, v in (roster or {}).items()},
            rounds=int(rounds),
        )


@dataclass(frozen=True)
class ClientActionSpec:
    """What a secure-aggregation client mod needs besides the train function.

    ``identities`` holds private identity keys (partition id -> key): the simulated
    nodes' Ed25519 keys (each node reads only its own), or under the Deployment Engine the
    one node's key read from the file its node config names. Kept out of ``repr``; never
    written to the run folder.
    """

    secure: SecureSettings
    identities: dict[int, bytes] = field(default_factory=dict, repr=False)


#: (the ClientApp's local train function, settings) -> handler of ``train.<action>``
ClientMod = Callable[[TrainFn, ClientActionSpec], TrainFn]


# ---------------------------------------------------------------- round transports


@dataclass(frozen=True)
class SecureRound:
    """One round as a secure transport receives it from the round skeleton.

    ``messages`` maps node id -> the train content prepared for it (global arrays, the
    strategy's config and, under DP, that client's noise plan); the transport adds its own
    stages around them. ``weight_scale`` (the public normaliser ``B`` of
    `umbra.secure.contribution`) and ``modality_aware`` go into every train message's
    config; ``timeout_s`` bounds each message exchange.
    """

    grid: Any
    server_round: int
    messages: dict[int, RecordDict]
    weight_scale: float
    modality_aware: bool
    timeout_s: float

    def public_config(self) -> dict[str, float | bool]:
        """The round's public config entries of the train messages."""
        return {"weight-scale": self.weight_scale, "modality-aware": self.modality_aware}


@dataclass
class SecureSum:
    """What a secure transport returns: the decoded sums, or why there are none.

    ``float_sums`` and ``int_sums`` are the sums of the contributions' float and integer
    parts (`umbra.secure.contribution`), ``clients`` the number of contributions summed.
    ``note`` set means the round aborted (the sums are empty; nothing was revealed).
    Bytes are the real serialized sizes of every stage's messages, also per partition id.
    ``contributors`` are the node ids whose contributions are in the sums (None: the
    transport does not say); ``partitions`` maps the node ids heard from to partition ids.
    """

    float_sums: dict[str, np.ndarray]
    int_sums: dict[str, np.ndarray]
    clients: int
    bytes_up: int = 0
    bytes_down: int = 0
    per_client: dict[int, dict[str, int]] = field(default_factory=dict)
    note: str | None = None
    contributors: frozenset[int] | None = None
    partitions: dict[int, int] = field(default_factory=dict)

    @property
    def aborted(self) -> bool:
        return self.note is not None


class SecureAggregator(Protocol):
    """A secure round transport, one object per run (its state: keys, digests, pre-keys).

    ``name`` is the ``secure.aggregation`` value it implements; ``client_action`` the
    suffix of the ``train.<action>`` messages its client mod answers. `aggregate` runs
    the transport's stages for one round and returns the sums (or an aborted `SecureSum`);
    it never sees an individual update.
    """

    name: str
    client_action: str

    def aggregate(self, round: SecureRound) -> SecureSum: ...


@dataclass(frozen=True)
class SecureTransport:
    """A registry entry: how to build a secure mode's server side and its client mod.

    ``server`` builds the per-run `SecureAggregator` from the run's settings;
    ``client_mod`` builds the ClientApp handler of ``train.<client_action>``.
    ``integer_noise`` says distributed DP noise is added after quantisation (discrete
    Gaussian shares: the plan is checked on the server before any release); ``signed``
    that the clients sign their key messages when the run has node identities (a private
    identity key per node and a public roster, `SecureSettings.roster`);
    ``identity_required`` that the mode cannot run without them.
    """

    name: str
    client_action: str
    server: Callable[[SecureSettings], SecureAggregator]
    client_mod: ClientMod
    integer_noise: bool = False
    signed: bool = False
    identity_required: bool = False
