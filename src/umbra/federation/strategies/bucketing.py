"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing", ICLR 2022, https://arxiv.org/abs/2006.09365).

Before a robust rule, the round's updates are shuffled and averaged in buckets of ``s``;
the rule then sees ``⌈n / s⌉`` bucket means instead of ``n`` updates. Averaging shrinks
the spread that label skew puts between honest updates (the mean of s independent
heterogeneous updates is s times less variable), which is what makes median-like rules
discard honest organisations' parts; the shuffle keeps attackers from choosing their
bucket-mates. The price: an attacker spoils its whole bucket, so f attackers can spoil up
to f of the ``⌈n / s⌉`` buckets, and a rule sized for f must be sized for f buckets
(Krum and Multi-Krum need ``⌈n / s⌉ ≥ 2f + 3``).

The shuffle is an experiment's and the defence's choice, not privacy randomness: it is
drawn from ``run.seed`` and the round, so a run (and a resumed run) is reproducible.
Pure functions; the defence applies them (:mod:`umbra.federation.strategies.defence`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from umbra.federation.strategies.modality import modality_weighted_average

__all__ = ["bucket_count", "bucket_means", "buckets"]

#: mixed into the generator's seed so the shuffle is its own stream of run.seed
_STREAM = 0xB0C7


def bucket_count(n: int, size: int) -> int:
    """How many buckets ``n`` updates make in buckets of ``size`` (the last may be
    smaller)."""
    if size < 1:
        raise ValueError(f"bucket size must be >= 1, got {size}")
    return -(-n // size)


def buckets(n: int, size: int, *, seed: int, server_round: int) -> list[list[int]]:
    """A random partition of ``range(n)`` into consecutive chunks of ``size`` of a
    permutation drawn from ``(seed, server_round)``; ``size = 1``: ``[[0], [1], …]``."""
    if n < 1:
        raise ValueError(f"need at least one update, got n = {n}")
    if size < 1:
        raise ValueError(f"bucket size must be >= 1, got {size}")
    if size == 1:
        return [[i] for i in range(n)]
    rng = np.random.default_rng([_STREAM, seed, server_round])
    order = [int(i) for i in rng.permutation(n)]
    return [order[i : i + size] for i in range(0, n, size)]


def bucket_means(
    groups: Sequence[Sequence[int]],
    arrays: Sequence[Mapping[str, np.ndarray]],
    counts: Sequence[Mapping[str, float]],
    key_modality: Callable[[str], str | None],
    previous: Mapping[str, np.ndarray],
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, float]]]:
    """Each bucket's modality-aware weighted mean and summed counts: a bucket holds a
    modality when one of its members does, with the weight of their records together, so
    the rule weights the bucket means as it would have weighted their members. A modality
    none of a bucket's members holds takes ``previous`` there (weight 0: the rule leaves
    the bucket out of that group)."""
    means: list[dict[str, np.ndarray]] = []
    totals: list[dict[str, float]] = []
    for members in groups:
        if not members:
            raise ValueError("empty bucket")
        member_counts = [counts[i] for i in members]
        means.append(
            modality_weighted_average(
                [arrays[i] for i in members], member_counts, key_modality, previous
            )
        )
        keys = {k for c in member_counts for k in c}
        totals.append({k: sum(float(c.get(k, 0.0)) for c in member_counts) for k in keys})
    return means, totals
