"""Conversions between numpy dicts and Flower records, and real wire sizes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.common.serde import message_to_proto

__all__ = ["from_record", "message_bytes", "to_record"]


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """name -> ndarray as an ArrayRecord (keys kept, arrays made contiguous)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def message_bytes(messages: Iterable[Message]) -> int:
    """Sum of the serialized (protobuf) sizes of ``messages`` as Flower sends them."""
    return sum(message_to_proto(m).ByteSize() for m in messages)
