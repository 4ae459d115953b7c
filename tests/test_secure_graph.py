"""The SecAgg+ neighbour graph: symmetric, k-regular, connected, seed-determined."""

from __future__ import annotations

import collections
import os

import pytest

from umbra.secure.secagg.constants import COMPLETE_GRAPH_MAX_CLIENTS
from umbra.secure.secagg.graph import default_degree, neighbour_graph, shuffle_ids


def _connected(graph: dict[int, frozenset[int]]) -> bool:
    start = next(iter(graph))
    seen, todo = {start}, [start]
    while todo:
        for nb in graph[todo.pop()]:
            if nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return seen == set(graph)


@pytest.mark.parametrize(("n", "k"), [(2, 1), (5, 4), (9, 4), (20, 6), (101, 14), (64, 5)])
def test_graph_is_symmetric_regular_and_connected(n: int, k: int) -> None:
    ids = list(range(100, 100 + n))
    g = neighbour_graph(ids, degree=k, seed=os.urandom(32))
    assert set(g) == set(ids)
    expected = min(n - 1, k + k % 2)
    for c, nbs in g.items():
        assert c not in nbs
        assert len(nbs) == expected
        assert all(c in g[j] for j in nbs)
    assert _connected(g)


def test_graph_depends_only_on_seed_and_ids() -> None:
    ids = list(range(50))
    seed = os.urandom(32)
    assert neighbour_graph(ids, degree=6, seed=seed) == neighbour_graph(
        list(reversed(ids)), degree=6, seed=seed
    )
    assert neighbour_graph(ids, degree=6, seed=seed) != neighbour_graph(
        ids, degree=6, seed=os.urandom(32)
    )


def test_default_degree_is_complete_up_to_the_cut_off_then_sparse() -> None:
    assert default_degree(1) == 0
    assert default_degree(8) == 7  # complete: 2 of 8 dropouts must be recoverable
    assert default_degree(100) == 99
    assert default_degree(COMPLETE_GRAPH_MAX_CLIENTS) == COMPLETE_GRAPH_MAX_CLIENTS - 1
    assert default_degree(1000) < 999  # sparse beyond the cut-off


def test_shuffle_is_a_uniform_permutation() -> None:
    counts = collections.Counter(
        tuple(shuffle_ids([1, 2, 3], seed=os.urandom(32))) for _ in range(1200)
    )
    assert len(counts) == 6
    assert all(120 < c < 290 for c in counts.values())  # expected 200 each


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="distinct"):
        neighbour_graph([1, 1], degree=1, seed=bytes(32))
    with pytest.raises(ValueError, match="degree must be"):
        neighbour_graph([1, 2], degree=-1, seed=bytes(32))
