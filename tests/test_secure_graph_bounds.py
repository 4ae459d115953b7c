"""SecAgg+ graph parameters (Bell et al., CCS 2020): the failure bounds against exact
combinatorics and Monte-Carlo runs over real graphs, the collusion bound against brute
force on real Shamir shares, and the commit-reveal graph seed."""

from __future__ import annotations

import itertools
import math
import os
from fractions import Fraction

import numpy as np
import pytest

from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.constants import KEY_BYTES
from umbra.secure.secagg.graph import (
    collusion_bound,
    correctness_failure,
    corrupt_neighbourhood_probability,
    graph_parameters,
    graph_seed,
    neighbour_graph,
    removed_run_probability,
    security_failure,
    short_neighbourhood_probability,
)
from umbra.secure.secagg.shamir import combine_shares, split_secret


def _tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[>= at_least marked among draws] drawing without replacement, exact (math.comb)."""
    total = math.comb(population, draws)
    good = sum(
        math.comb(marked, j) * math.comb(population - marked, draws - j)
        for j in range(at_least, min(marked, draws) + 1)
    )
    return float(Fraction(good, total))


def _components(graph: dict[int, frozenset[int]], keep: set[int]) -> int:
    todo, seen, parts = set(keep), set(), 0
    while todo:
        parts += 1
        stack = [todo.pop()]
        while stack:
            v = stack.pop()
            seen.add(v)
            for w in graph[v]:
                if w in keep and w not in seen and w in todo:
                    todo.discard(w)
                    stack.append(w)
    return parts


@pytest.mark.parametrize(
    ("n", "k", "tau", "c"), [(30, 6, 3, 8), (200, 40, 21, 60), (1000, 286, 151, 333)]
)
def test_neighbourhood_tails_equal_exact_combinatorics(n: int, k: int, tau: int, c: int) -> None:
    assert corrupt_neighbourhood_probability(n, k, tau, c) == pytest.approx(
        _tail(n - 1, c, k, tau), rel=1e-9, abs=1e-300
    )
    # fewer than tau survivors <=> more than k - tau dropped neighbours
    assert short_neighbourhood_probability(n, k, tau, c) == pytest.approx(
        _tail(n - 1, c, k, k - tau + 1), rel=1e-9, abs=1e-300
    )
    h = k // 2
    assert removed_run_probability(n, k, c) == pytest.approx(
        math.comb(c, h) / math.comb(n, h), rel=1e-9
    )


def test_corrupt_neighbourhood_probability_matches_real_graphs() -> None:
    n, k, tau, c, trials = 30, 6, 3, 8, 3000
    corrupt = set(range(c))
    target = n - 1  # an honest client
    hits = 0
    for _ in range(trials):
        g = neighbour_graph(list(range(n)), degree=k, seed=os.urandom(32))
        hits += len(g[target] & corrupt) >= tau
    p = corrupt_neighbourhood_probability(n, k, tau, c)
    se = math.sqrt(p * (1 - p) / trials)
    assert 0.05 < p < 0.5  # a regime where the comparison means something
    assert abs(hits / trials - p) < 4 * se


def test_security_failure_bounds_what_real_graphs_do() -> None:
    """The union bound is >= the frequency of the bad event on real random graphs, and the
    bad event is frequent enough here that a wrong (too small) bound would show."""
    n, k, tau, c, d, trials = 30, 6, 3, 4, 6, 1500
    ids = list(range(n))
    corrupt, dropped = set(range(c)), set(range(c, c + d))
    honest_survivors = set(ids) - corrupt - dropped
    bad = 0
    for _ in range(trials):
        g = neighbour_graph(ids, degree=k, seed=os.urandom(32))
        exposed = any(len(g[i] & corrupt) >= tau for i in set(ids) - corrupt)
        split = _components(g, honest_survivors) > 1
        bad += exposed or split
    freq = bad / trials
    bound = security_failure(n, k, tau, corrupt=c, dropped=d)
    assert freq > 0.02
    assert freq <= bound + 4 * math.sqrt(freq * (1 - freq) / trials)


def test_complete_graph_bounds_are_exact() -> None:
    assert security_failure(8, 7, 6, corrupt=5, dropped=2) == 0.0
    assert security_failure(8, 7, 6, corrupt=6, dropped=0) == 1.0
    assert correctness_failure(8, 7, 6, dropped=2) == 0.0
    assert correctness_failure(8, 7, 6, dropped=3) == 1.0


@pytest.mark.parametrize("n", [8, 100, 128])
def test_complete_graph_up_to_the_cut_off(n: int) -> None:
    t = math.ceil(0.67 * n)
    p = graph_parameters(n, t)
    assert p.complete and p.degree == n - 1 and p.share_threshold == t
    cfg = SecAggConfig(round_number=1, num_clients=n, threshold=t, vector_length=1)
    assert cfg.complete and cfg.share_threshold == t


@pytest.mark.parametrize("n", [129, 1000, 5000])
def test_sparse_parameters_meet_the_bounds_and_are_minimal(n: int) -> None:
    t = math.ceil(0.67 * n)
    p = graph_parameters(n, t)
    k, tau = p.degree, p.share_threshold
    assert not p.complete and k < n - 1 and k % 2 == 0
    assert 2 * tau > k + 1
    corrupt, dropped = n // 3, n - t
    # independent recomputation with exact combinatorics
    sec = n * _tail(n - 1, corrupt, k, tau) + n * math.comb(corrupt + dropped, k // 2) / math.comb(
        n, k // 2
    )
    cor = n * _tail(n - 1, dropped, k, k - tau + 1)
    assert sec <= 2.0**-40 and cor <= 2.0**-20
    # the next smaller even degree meets them with no threshold
    k2 = k - 2
    assert all(
        security_failure(n, k2, tau2, corrupt=corrupt, dropped=dropped) > 2.0**-40
        or correctness_failure(n, k2, tau2, dropped=dropped) > 2.0**-20
        or 2 * tau2 <= k2 + 1
        for tau2 in range(1, k2 + 1)
    )


def test_impossible_configuration_is_refused_with_its_parameters() -> None:
    with pytest.raises(ValueError, match=r"threshold t = 100 of n = 300 .* 100 colluders"):
        graph_parameters(300, 100)
    assert graph_parameters(10, 3).complete  # small n: t - 1 colluders, whatever gamma


@pytest.mark.parametrize(("n", "t"), [(5, 4), (7, 5), (8, 6)])
def test_collusion_bound_on_the_complete_graph_matches_brute_force(n: int, t: int) -> None:
    """Brute force over every coalition of other clients holding real Shamir shares of an
    honest client's secret: the largest coalition that cannot reconstruct it."""
    bound = collusion_bound(n, t)
    assert bound.complete and bound.failure_probability == 0.0
    secret = os.urandom(16)
    shares = split_secret(secret, threshold=bound.share_threshold, num_shares=n)
    owner = 0  # holds share 1; the coalitions are among the other n - 1 holders
    largest_safe = 0
    for size in range(1, n):
        recovered = [
            combine_shares([shares[i] for i in coalition]) == secret
            for coalition in itertools.combinations(range(1, n), size)
        ]
        if not any(recovered):
            largest_safe = size
        else:
            assert all(recovered)  # Shamir: all or nothing at a given size
    assert owner == 0 and largest_safe == bound.colluders == t - 1


def test_collusion_bound_on_a_sparse_graph_matches_monte_carlo() -> None:
    """Small n with loose bits, so that the sparse regime and its failures are observable."""
    n, t, bits = 40, 36, 3
    kw = {
        "complete_max": 0,
        "security_bits": bits,
        "correctness_bits": bits,
        "corrupt_fraction": 0.05,
    }
    bound = collusion_bound(n, t, **kw)  # type: ignore[arg-type]
    assert not bound.complete and bound.colluders >= 2
    k, tau, c = bound.degree, bound.share_threshold, bound.colluders
    assert bound.failure_probability <= 2.0**-bits
    assert security_failure(n, k, tau, corrupt=c + 1, dropped=n - t) > 2.0**-bits
    ids = list(range(n))
    trials = 1500
    for colluders in (c, c + 3):
        corrupt, dropped = set(range(colluders)), set(range(colluders, colluders + n - t))
        honest_survivors = set(ids) - corrupt - dropped
        bad = 0
        for _ in range(trials):
            g = neighbour_graph(ids, degree=k, seed=os.urandom(32))
            exposed = any(len(g[i] & corrupt) >= tau for i in set(ids) - corrupt)
            bad += exposed or _components(g, honest_survivors) > 1
        freq = bad / trials
        bound_c = security_failure(n, k, tau, corrupt=colluders, dropped=n - t)
        assert freq <= bound_c + 4 * math.sqrt(max(freq, 1e-3) / trials)


def test_every_threshold_subset_of_a_neighbourhood_reconstructs_and_one_less_does_not() -> None:
    cfg = SecAggConfig(round_number=1, num_clients=8, threshold=6, vector_length=1)
    holders, tau = cfg.degree + 1, cfg.share_threshold
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=tau, num_shares=holders)
    for subset in itertools.combinations(shares, tau):
        assert combine_shares(list(subset)) == secret
    for subset in itertools.combinations(shares, tau - 1):
        assert combine_shares(list(subset)) != secret


def test_graph_seed_depends_on_every_reveal() -> None:
    reveals = {i: os.urandom(KEY_BYTES) for i in range(6)}
    seed = graph_seed(reveals, round_number=3)
    assert graph_seed(dict(reversed(list(reveals.items()))), round_number=3) == seed
    assert graph_seed(reveals, round_number=4) != seed
    seeds = {seed}
    for i in reveals:
        changed = dict(reveals)
        changed[i] = bytes(b ^ 1 for b in reveals[i][:1]) + reveals[i][1:]
        seeds.add(graph_seed(changed, round_number=3))
    assert len(seeds) == len(reveals) + 1  # each single change moves the seed
    with pytest.raises(ValueError, match="32 bytes"):
        graph_seed({0: b"short"}, round_number=1)


def test_one_honest_reveal_makes_the_seed_uniform() -> None:
    """Everyone but client 0 is fixed (as a server with colluders would fix them): the first
    byte of the seed still spreads evenly over its values."""
    fixed = {i: bytes([i]) * KEY_BYTES for i in range(1, 6)}
    first = np.array(
        [graph_seed({0: os.urandom(KEY_BYTES), **fixed}, round_number=1)[0] for _ in range(4096)]
    )
    counts = np.bincount(first >> 4, minlength=16)  # 16 bins, 256 expected each
    assert counts.min() > 180 and counts.max() < 340
