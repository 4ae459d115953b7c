"""How many connected nodes a round waits for once some have left the federation.

Flower's strategies sample ``max(int(available · fraction_train), min_train_nodes)`` nodes
and block (polling every second, without end) until ``min_available_nodes`` and that many
are connected. Umbra sets both to the whole federation when every client trains, so a
SuperNode that crashed would stall every later round until it came back. `NodeFloor`
lowers both, before each round, to the nodes still connected, but never below a quorum:
one node for plaintext rounds, ``t = ceil(threshold · n)`` for secure aggregation (fewer
could not finish the round anyway). With every node connected the strategy samples
exactly as configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NodeFloor"]


@dataclass(frozen=True)
class NodeFloor:
    """The strategy's configured sampling floors and the quorum they may drop to."""

    min_train_nodes: int
    min_available_nodes: int
    quorum: int

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {self.quorum}")

    def floors(self, available: int) -> tuple[int, int]:
        """``(min_train_nodes, min_available_nodes)`` with ``available`` nodes connected."""
        cap = max(self.quorum, available)
        return min(self.min_train_nodes, cap), min(self.min_available_nodes, cap)

    def apply(self, strategy: Any, grid: Any) -> None:
        """Set the strategy's floors for the nodes ``grid`` lists as connected now."""
        strategy.min_train_nodes, strategy.min_available_nodes = self.floors(
            len(list(grid.get_node_ids()))
        )
