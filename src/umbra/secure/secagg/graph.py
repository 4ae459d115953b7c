"""The SecAgg+ communication graph (Bell et al., CCS 2020, §3-4).

Each client masks with, and shares its secrets among, only ``k = O(log n)`` neighbours
instead of all ``n`` clients. We use a Harary graph H(k, n) (a circulant graph: each node
joined to the k/2 nearest nodes on each side of a cycle) over a uniformly random ordering of
the clients, the ordering drawn from a server-chosen 32-byte seed with the ChaCha20 PRG, so
every party derives the same symmetric graph from (seed, ids). The random labelling is what
Bell et al. require (a random k-regular graph); the circulant shape makes it exactly
k-regular and connected for any n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from umbra.secure.secagg.crypto import prg_uint32

__all__ = ["default_degree", "neighbour_graph", "shuffle_ids"]

_GRAPH_PURPOSE = b"umbra/secagg+/v1/graph"


def default_degree(num_clients: int) -> int:
    """``k = min(n - 1, 2 ceil(log2 n))``: complete graph for n <= 8, O(log n) beyond."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients == 1:
        return 0
    return min(num_clients - 1, 2 * math.ceil(math.log2(num_clients)))


def shuffle_ids(client_ids: Sequence[int], *, seed: bytes) -> list[int]:
    """Fisher-Yates shuffle of the sorted ids driven by the ChaCha20 PRG (rejection sampling)."""
    ids = sorted(client_ids)
    n = len(ids)
    length = 2 * n + 64
    stream = prg_uint32(seed, length=length, round_number=0, purpose=_GRAPH_PURPOSE)
    pos = 0
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - ((1 << 32) % bound)
        while True:
            if pos >= len(stream):  # rare: extend deterministically
                length *= 2
                stream = prg_uint32(seed, length=length, round_number=0, purpose=_GRAPH_PURPOSE)
            r = int(stream[pos])
            pos += 1
            if r < limit:
                break
        j = r % bound
        ids[i], ids[j] = ids[j], ids[i]
    return ids


def neighbour_graph(
    client_ids: Sequence[int], *, degree: int, seed: bytes
) -> dict[int, frozenset[int]]:
    """Symmetric neighbour sets (a node is not its own neighbour).

    ``degree`` is rounded up to even; ``degree >= n - 1`` gives the complete graph.
    """
    n = len(client_ids)
    if len(set(client_ids)) != n:
        raise ValueError("client_ids must be distinct")
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    if degree >= n - 1:
        everyone = frozenset(client_ids)
        return {c: everyone - {c} for c in client_ids}
    half = (degree + 1) // 2
    order = shuffle_ids(client_ids, seed=seed)
    index = np.arange(n)
    graph: dict[int, frozenset[int]] = {}
    for p, c in enumerate(order):
        offsets = np.concatenate([index[1 : half + 1], -index[1 : half + 1]])
        graph[c] = frozenset(order[(p + d) % n] for d in offsets.tolist())
    return graph
