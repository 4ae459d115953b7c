"""Bucketing (Karimireddy et al. 2022): the buckets are a reproducible random partition,
their means are numpy's weighted means, and a rule on buckets of one is the rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import trim_mean

from umbra.config import FederationConfig
from umbra.federation.strategies import Defence, bucket_means, buckets, modality_robust_aggregate
from umbra.federation.strategies.bucketing import bucket_count
from umbra.models import parameter_modality

KEYS = {"encoders.image.w": (3, 2), "encoders.audio.w": (4,), "head.0.weight": (2, 2)}


def test_buckets_partition_the_updates_reproducibly() -> None:
    assert buckets(5, 1, seed=3, server_round=7) == [[0], [1], [2], [3], [4]]
    b = buckets(15, 2, seed=0, server_round=1)
    assert [len(g) for g in b] == [2] * 7 + [1] and len(b) == bucket_count(15, 2) == 8
    assert sorted(i for g in b for i in g) == list(range(15))
    assert b == buckets(15, 2, seed=0, server_round=1)  # same seed and round: same buckets
    others = [buckets(15, 2, seed=s, server_round=r) for s, r in ((1, 1), (0, 2), (0, 3))]
    assert all(o != b for o in others)
    assert sorted(buckets(4, 4, seed=0, server_round=1)[0]) == [0, 1, 2, 3]


def test_bucket_means_are_the_weighted_means_of_their_members() -> None:
    rng = np.random.default_rng(0)
    arrays = [{k: rng.normal(size=s) for k, s in KEYS.items()} for _ in range(5)]
    counts = [{"num-examples": 4.0 + i, "n-image": 0.0 if i == 1 else 2.0 + i,
               "n-audio": 1.0 + i} for i in range(5)]  # fmt: skip
    previous = {k: np.full(s, 9.0) for k, s in KEYS.items()}
    groups = [[1, 3], [0], [4, 2]]
    means, totals = bucket_means(groups, arrays, counts, parameter_modality, previous)
    for g, mean, total in zip(groups, means, totals, strict=True):
        for key, wkey in (("encoders.image.w", "n-image"), ("encoders.audio.w", "n-audio"),
                          ("head.0.weight", "num-examples")):  # fmt: skip
            w = np.array([counts[i][wkey] for i in g])
            assert total[wkey] == pytest.approx(w.sum())
            want = np.average(np.stack([arrays[i][key] for i in g]), axis=0, weights=w)
            np.testing.assert_allclose(mean[key], want, rtol=1e-12)
    # a bucket whose members hold no image keeps the previous value, with weight 0
    means, totals = bucket_means([[1]], arrays, counts, parameter_modality, previous)
    assert totals[0]["n-image"] == 0.0
    np.testing.assert_array_equal(means[0]["encoders.image.w"], previous["encoders.image.w"])


def _round(n: int, seed: int) -> tuple[dict, list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    x = {k: rng.normal(size=s) for k, s in KEYS.items()}
    arrays = [{k: x[k] + rng.normal(size=s) for k, s in KEYS.items()} for _ in range(n)]
    counts = [{"num-examples": 5.0 + i, "n-image": 5.0 + i, "n-audio": 5.0 + i}
              for i in range(n)]  # fmt: skip
    return x, arrays, counts


def test_buckets_of_one_leave_the_rule_as_it_is() -> None:
    x, arrays, counts = _round(7, 1)
    deltas = [{k: a[k] - x[k] for k in KEYS} for a in arrays]
    want = modality_robust_aggregate("median", deltas, counts, parameter_modality)
    got, _ = Defence(aggregator="median", bucket_size=1, seed=4).aggregate(
        list(range(7)), arrays, counts, parameter_modality, x, x, server_round=3
    )
    for k in KEYS:
        np.testing.assert_allclose(got[k], x[k] + want[k], rtol=1e-12)


def test_the_rule_sees_the_bucket_means() -> None:
    """Trimmed mean over buckets of 2 = scipy's trim_mean of numpy's bucket means, drawn
    with the run's seed and the round."""
    x, arrays, counts = _round(9, 2)
    groups = buckets(9, 2, seed=5, server_round=4)
    got, _ = Defence(aggregator="trimmed-mean", trim_fraction=0.2, bucket_size=2, seed=5).aggregate(
        list(range(9)), arrays, counts, parameter_modality, x, x, server_round=4
    )
    for k in KEYS:
        means = [
            np.average([arrays[i][k] - x[k] for i in g], axis=0,
                       weights=[counts[i]["num-examples"] for i in g])
            for g in groups
        ]  # fmt: skip
        np.testing.assert_allclose(got[k], x[k] + trim_mean(means, 0.2, axis=0), rtol=1e-9)


@pytest.mark.parametrize(
    ("fed", "message"),
    [
        ({"bucket_size": 0}, "bucket_size must be in"),
        ({"bucket_size": 9, "num_clients": 8, "aggregator": "median"}, "bucket_size must be in"),
        ({"bucket_size": 2}, "needs a robust federation.aggregator"),
        ({"bucket_size": 2, "num_clients": 15, "aggregator": "multi-krum", "byzantine": 3},
         "too large for multi-krum with 8 buckets"),
        ({"aggregator": "centered-clip", "centered_clip_tau": 0.0}, "centered_clip_tau"),
        ({"aggregator": "centered-clip", "centered_clip_beta": 1.0}, "centered_clip_beta"),
        ({"aggregator": "centered-clip", "centered_clip_iterations": 0}, "centered_clip_iter"),
    ],
)  # fmt: skip
def test_out_of_range_settings_are_refused(fed: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederationConfig(**fed)
