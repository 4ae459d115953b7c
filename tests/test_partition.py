"""Partitioners and missing-modality masks, checked with Python sets and binomial bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.data.partition import (
    PARTITIONERS,
    absent_modalities,
    apply_missing,
    label_skew,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
    register_partitioner,
)
from umbra.errors import ConfigError, DataError

SCHEMES = sorted(PARTITIONERS)


def _labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, n)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 400),
    num_clients=st.integers(1, 12),
    scheme=st.sampled_from(["iid", "dirichlet", "quantity"]),
    alpha=st.floats(0.05, 50.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_record_assigned_exactly_once(
    n: int, num_clients: int, scheme: str, alpha: float, seed: int
) -> None:
    labels = _labels(n, 5, seed)
    min_size = n // (2 * num_clients)
    parts = partition(labels, num_clients, scheme=scheme, alpha=alpha, seed=seed, min_size=min_size)
    assert len(parts) == num_clients
    flat = [int(i) for p in parts for i in p]
    assert len(flat) == len(set(flat)) == n  # no duplicates, nothing lost
    assert set(flat) == set(range(n))
    assert min(len(p) for p in parts) >= min_size


def test_partition_is_deterministic_per_seed() -> None:
    labels = _labels(500, 10, 0)
    a = partition(labels, 7, scheme="dirichlet", alpha=0.3, seed=4)
    b = partition(labels, 7, scheme="dirichlet", alpha=0.3, seed=4)
    c = partition(labels, 7, scheme="dirichlet", alpha=0.3, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skew_is_measurable() -> None:
    labels = np.repeat(np.arange(10), 300)  # 3,000 records, balanced
    skews = {}
    for name, scheme, alpha in [
        ("a0.1", "dirichlet", 0.1),
        ("a100", "dirichlet", 100.0),
        ("iid", "iid", 1.0),
    ]:
        vals = [
            label_skew(labels, partition(labels, 10, scheme=scheme, alpha=alpha, seed=s), 10)
            for s in range(5)
        ]
        skews[name] = float(np.mean(vals))
    # alpha=0.1: clients see ~2 classes (TV ~0.7); alpha=100 and IID: ~multinomial noise.
    assert skews["a0.1"] > 0.5
    assert skews["a100"] < 0.12
    assert skews["iid"] < 0.12
    assert skews["a0.1"] > 4 * max(skews["a100"], skews["iid"])


def test_label_skew_reference_values() -> None:
    labels = np.array([0, 0, 1, 1])
    assert label_skew(labels, [np.array([0, 2]), np.array([1, 3])], 2) == 0.0
    # each client holds a single class: TV = 0.5 * (|1 - .5| + |0 - .5|) = 0.5
    assert label_skew(labels, [np.array([0, 1]), np.array([2, 3])], 2) == pytest.approx(0.5)


def test_dirichlet_repairs_min_size() -> None:
    labels = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    parts = partition_dirichlet(labels, 20, 0.01, rng, min_size=20, max_tries=1)
    assert min(len(p) for p in parts) >= 20
    assert sorted(int(i) for p in parts for i in p) == list(range(500))


def test_quantity_skew_changes_sizes_not_labels() -> None:
    labels = np.repeat(np.arange(4), 1000)
    rng = np.random.default_rng(3)
    parts = partition_quantity(len(labels), 8, 0.3, rng, min_size=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == 4000 and sizes.min() >= 5
    assert sizes.max() > 3 * np.median(sizes)  # strongly unequal sizes
    iid_sizes = [len(p) for p in partition_iid(4000, 8, rng)]
    assert max(iid_sizes) - min(iid_sizes) <= 1


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"scheme": "dirichlet", "alpha": 0.0}, ConfigError, "alpha"),
        ({"scheme": "dirichlet", "alpha": -1.0}, ConfigError, "alpha"),
        ({"scheme": "dirichlet", "alpha": math.inf}, ConfigError, "alpha"),
        ({"scheme": "nope", "alpha": 1.0}, ConfigError, "scheme"),
    ],
)
def test_bad_partition_settings(kwargs: dict, error: type, word: str) -> None:
    with pytest.raises(error, match=word):
        partition(np.zeros(50, dtype=int), 5, seed=0, min_size=1, **kwargs)


def test_more_clients_than_records() -> None:
    with pytest.raises(DataError, match="num_clients"):
        partition(np.zeros(5, dtype=int), 6, scheme="iid", alpha=1.0, seed=0, min_size=0)
    with pytest.raises(DataError, match="min_size"):
        partition(np.zeros(50, dtype=int), 6, scheme="iid", alpha=1.0, seed=0, min_size=10)


def test_registry_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_partitioner("iid")(PARTITIONERS["iid"])


@settings(max_examples=25, deadline=None)
@given(
    rates=st.lists(st.floats(0.0, 0.6), min_size=3, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_missing_rates_match_binomial(rates: list[float], seed: int) -> None:
    n, m = 4000, 3
    mask = np.ones((n, m), dtype=bool)
    out = apply_missing(mask, rates=rates, seed=seed)
    assert out.any(axis=1).all()  # never an all-missing record
    assert not (out & ~mask).any()  # never invents a modality
    # expected drop rate of column j on full rows: r_j minus the restored share of the
    # all-dropped rows (prod r), each restoring one column uniformly at random.
    p_all = float(np.prod(rates))
    for j, r in enumerate(rates):
        expected = r - p_all / m
        observed = 1.0 - out[:, j].mean()
        sd = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
        assert abs(observed - expected) <= 5 * sd + 1e-9


def test_missing_never_empties_a_record_and_restores_present_only() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((3000, 4)) < 0.6
    mask[~mask.any(axis=1), 0] = True
    out = apply_missing(mask, rates=np.ones(4), seed=2)  # drop everything
    assert (out.sum(axis=1) == 1).all()  # exactly the one restored modality
    assert not (out & ~mask).any()
    # the restored modality is uniform among the present ones: check rows with all four
    full = mask.all(axis=1)
    counts = out[full].sum(axis=0)
    expected = full.sum() / 4
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))


def test_missing_rates_by_name_and_validation() -> None:
    mask = np.ones((2000, 3), dtype=bool)
    names = ("image", "audio", "text")
    out = apply_missing(mask, rates={"audio": 0.5}, seed=0, modalities=names)
    assert out[:, 0].all() and out[:, 2].all()
    assert abs(out[:, 1].mean() - 0.5) < 0.05
    with pytest.raises(ConfigError, match="text"):
        apply_missing(mask, rates={"text": 1.5}, seed=0, modalities=names)
    with pytest.raises(ConfigError, match="rate"):
        apply_missing(mask, rates=[0.1, -0.1, 0.0], seed=0)
    with pytest.raises(ConfigError, match="video"):
        apply_missing(mask, rates={"video": 0.1}, seed=0, modalities=names)


def test_absent_modalities_removes_whole_modality() -> None:
    labels = _labels(300, 3, 0)
    parts = partition(labels, 4, scheme="iid", alpha=1.0, seed=0)
    mask = np.ones((300, 3), dtype=bool)
    out = absent_modalities(mask, parts, {1: ["audio"], 3: [0, 2]}, modalities=("i", "audio", "t"))
    assert not out[parts[1], 1].any() and out[parts[1]][:, [0, 2]].all()
    assert not out[parts[3]][:, [0, 2]].any() and out[parts[3], 1].all()
    untouched = np.concatenate([parts[0], parts[2]])
    assert out[untouched].all()
    # missingness afterwards never brings an absent modality back
    after = apply_missing(out, rates=[0.9, 0.9, 0.9], seed=3)
    assert not after[parts[1], 1].any() and not after[parts[3]][:, [0, 2]].any()
    assert after.any(axis=1).all()


def test_absent_everywhere_or_emptying_is_an_error() -> None:
    parts = [np.arange(0, 5), np.arange(5, 10)]
    mask = np.ones((10, 2), dtype=bool)
    with pytest.raises(DataError, match="every client"):
        absent_modalities(mask, parts, {0: [1], 1: [1]})
    with pytest.raises(DataError, match="no modality"):
        absent_modalities(mask, parts, {0: [0, 1]})
    with pytest.raises(ConfigError, match="client 2"):
        absent_modalities(mask, parts, {2: [0]})
