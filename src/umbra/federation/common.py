"""Message keys that both sides of a round read and write (server strategies, ClientApp,
secure-aggregation client mods). Imports nothing else of Umbra, so client code needs no
server module for its constants."""

from __future__ import annotations

__all__ = ["CONTROL_PREFIX", "NUM_EXAMPLES", "PARTITION_ID", "count_key"]

#: Keys of SCAFFOLD control variates travel in the same ArrayRecord under this prefix.
CONTROL_PREFIX = "cv."
#: MetricRecord key of a client's record count (public under zero-out adjacency).
NUM_EXAMPLES = "num-examples"
#: MetricRecord key of the client's partition id.
PARTITION_ID = "partition-id"


def count_key(modality: str) -> str:
    """MetricRecord key holding a client's number of records with ``modality``."""
    return f"n-{modality}"
