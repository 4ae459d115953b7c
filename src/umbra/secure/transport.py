"""Flower glue shared by the secure-aggregation workflows (server) and client mods.

Protocol messages are plain dicts (ints, floats, str, bytes, lists of bytes or ints, numpy
arrays, see `umbra.secure.secagg.constants.Key`). They travel inside a Flower
``RecordDict``: scalars, bytes and lists in the ConfigRecord ``"secure"``, numpy arrays in
the ArrayRecord ``"secure-arrays"``. `StageExchange` sends one stage's messages through
the Grid and records the real serialized size of every message, per node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from umbra.errors import UmbraError
from umbra.federation.common import SecureSum, message_bytes, send_and_receive

__all__ = [
    "ARRAYS_RECORD",
    "PROTO_RECORD",
    "MalformedMessage",
    "StageExchange",
    "decode_proto",
    "encode_proto",
]

log = logging.getLogger("umbra")

PROTO_RECORD = "secure"
ARRAYS_RECORD = "secure-arrays"
_EMPTY_LIST_PREFIX = "__empty__."


class MalformedMessage(UmbraError, ValueError):
    """A message's records cannot be decoded into a protocol message."""


def encode_proto(proto: Mapping[str, Any], content: RecordDict | None = None) -> RecordDict:
    """Put a protocol dict into ``content`` (a new RecordDict if None) and return it."""
    content = content if content is not None else RecordDict()
    config: dict[str, Any] = {}
    arrays: dict[str, Array] = {}
    for key, value in proto.items():
        if isinstance(value, np.ndarray):
            arrays[key] = Array(np.ascontiguousarray(value))
        elif isinstance(value, list | tuple):
            items = [bytes(v) if isinstance(v, bytearray) else v for v in value]
            if not items:
                config[_EMPTY_LIST_PREFIX + key] = True
            else:
                config[key] = items
        elif isinstance(value, bytearray):
            config[key] = bytes(value)
        else:
            config[key] = value
    content[PROTO_RECORD] = ConfigRecord(config)
    content[ARRAYS_RECORD] = ArrayRecord(arrays)
    return content


def decode_proto(content: RecordDict) -> dict[str, Any]:
    """Inverse of `encode_proto`; MalformedMessage if the records are missing or wrong."""
    try:
        config = content.config_records[PROTO_RECORD]
        arrays = content.array_records[ARRAYS_RECORD]
    except KeyError as err:
        raise MalformedMessage(f"message lacks the {err} record") from err
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith(_EMPTY_LIST_PREFIX):
            out[key[len(_EMPTY_LIST_PREFIX) :]] = []
        else:
            out[key] = value
    try:
        out.update({k: v.numpy() for k, v in arrays.items()})
    except Exception as err:  # numpy's loader raises several types on garbled bytes
        raise MalformedMessage(f"garbled array in message: {err}") from err
    return out


@dataclass
class StageExchange:
    """Sends stage messages to nodes and accounts real serialized bytes per node.

    ``message_type`` is ``"train.<action>"``. ``partition`` maps node ids to partition ids
    as soon as a node's reply names it (``"partition-id"`` in its ConfigRecord
    ``"secure"``).
    """

    grid: Grid
    message_type: str
    timeout_s: float
    server_round: int
    up: dict[int, int] = field(default_factory=dict)
    down: dict[int, int] = field(default_factory=dict)
    partition: dict[int, int] = field(default_factory=dict)

    def send(
        self,
        stage: str,
        requests: Mapping[int, Mapping[str, Any]],
        *,
        config: Mapping[str, Any] | None = None,
        base: Mapping[int, RecordDict] | None = None,
        per_node_config: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> dict[int, dict[str, Any]]:
        """Send ``requests`` (node id -> protocol dict) for ``stage``; return decoded replies.

        ``base`` gives a node's starting content (e.g. the strategy's train message with the
        global arrays); ``config`` (and ``per_node_config``) entries go into its
        ConfigRecord ``"config"`` with ``stage`` and ``server-round``. Error replies and
        undecodable replies are logged and left out (the protocol treats them as dropouts).
        """
        messages = []
        for node, proto in requests.items():
            content = RecordDict(dict(base[node].items())) if base and node in base else None
            content = encode_proto(proto, content)
            cfg = dict(content.config_records["config"]) if "config" in content else {}
            cfg.update({"stage": stage, "server-round": self.server_round, **(config or {})})
            cfg.update((per_node_config or {}).get(node, {}))
            content["config"] = ConfigRecord(cfg)
            msg = Message(content=content, dst_node_id=node, message_type=self.message_type)
            self.down[node] = self.down.get(node, 0) + message_bytes([msg])
            messages.append(msg)
        replies: dict[int, dict[str, Any]] = {}
        for reply in send_and_receive(self.grid, messages, timeout=self.timeout_s):
            node = reply.metadata.src_node_id
            self.up[node] = self.up.get(node, 0) + message_bytes([reply])
            if reply.has_error():
                log.warning(
                    "%s round %d, stage %s: node %d sent an error (%s); treated as a dropout",
                    self.message_type,
                    self.server_round,
                    stage,
                    node,
                    reply.error.reason,
                )
                continue
            try:
                proto = decode_proto(reply.content)
            except MalformedMessage as err:
                log.warning(
                    "%s round %d, stage %s: node %d excluded: %s",
                    self.message_type,
                    self.server_round,
                    stage,
                    node,
                    err,
                )
                continue
            pid = proto.pop("partition-id", None)
            if isinstance(pid, int):
                self.partition[node] = pid
            replies[node] = proto
        return replies

    def secure_sum(
        self,
        float_sums: dict[str, np.ndarray] | None = None,
        int_sums: dict[str, np.ndarray] | None = None,
        *,
        clients: int = 0,
        note: str | None = None,
        contributors: frozenset[int] | None = None,
    ) -> SecureSum:
        """The round's sums with every stage's bytes (``note`` set: the round aborted);
        ``contributors``: the node ids whose contributions are summed, where known."""
        return SecureSum(
            float_sums=dict(float_sums or {}),
            int_sums=dict(int_sums or {}),
            clients=clients,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            per_client=self.per_client(),
            note=note,
            contributors=contributors,
            partitions=dict(self.partition),
        )

    def abort(self, note: str) -> SecureSum:
        """An aborted round: no sums, the bytes spent so far, and why."""
        return self.secure_sum(note=note)

    def per_client(self) -> dict[int, dict[str, int]]:
        """Bytes per partition id, ``{"up", "down"}`` summed over stages (known nodes)."""
        out: dict[int, dict[str, int]] = {}
        for node, pid in self.partition.items():
            out[pid] = {"up": self.up.get(node, 0), "down": self.down.get(node, 0)}
        return out

    @property
    def bytes_up(self) -> int:
        return sum(self.up.values())

    @property
    def bytes_down(self) -> int:
        return sum(self.down.values())


def reply_content(proto: Mapping[str, Any], *, partition_id: int) -> RecordDict:
    """A client's reply content: the protocol dict plus its partition id."""
    return encode_proto({**proto, "partition-id": partition_id})
