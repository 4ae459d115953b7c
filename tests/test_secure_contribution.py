"""Contributions and their recombination equal the plaintext modality-aware average
(`modality_weighted_average`), exactly in float64 and within quantization through the ring."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.federation.strategies import modality_weighted_average
from umbra.models import parameter_modality
from umbra.secure.contribution import (
    Contribution,
    combine_sums,
    int_template,
    make_contribution,
    next_weight_scale,
    payload_template,
)
from umbra.secure.he.payload import flatten_contribution, payload_length, split_sum
from umbra.secure.secagg.quantize import PayloadLayout

SHAPES = {
    "encoders.image.0.weight": (3, 4),
    "encoders.audio.0.weight": (5,),
    "projections.text.weight": (2, 2),
    "head.0.weight": (3,),
}


def _clients(n: int, seed: int = 0, cv: bool = False) -> tuple[dict, list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    x = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    ys, metrics = [], []
    for i in range(n):
        y = {k: (v + rng.normal(scale=0.05, size=v.shape)).astype(np.float32) for k, v in x.items()}
        if cv:
            y.update(
                {
                    "cv." + k: rng.normal(scale=0.01, size=v.shape).astype(np.float32)
                    for k, v in x.items()
                }
            )
        n_ex = int(rng.integers(20, 400))
        metrics.append(
            {
                "num-examples": n_ex,
                "n-image": int(rng.integers(0, n_ex + 1)),
                "n-audio": 0,  # nobody holds audio: it keeps the previous value
                "n-text": n_ex if i % 2 else 0,
                "train-total": float(rng.uniform(0.5, 2.5)),
            }
        )
        ys.append(y)
    return x, ys, metrics


def _sum(contribs: list[Contribution]) -> tuple[dict, dict]:
    floats = {k: np.sum([c.floats[k] for c in contribs], axis=0) for k in contribs[0].floats}
    ints = {k: np.sum([c.ints[k] for c in contribs], axis=0) for k in contribs[0].ints}
    return floats, ints


@pytest.mark.parametrize("cv", [False, True])
def test_combined_sums_equal_modality_weighted_average(cv: bool) -> None:
    x, ys, metrics = _clients(5, cv=cv)
    scale = 137.0
    contribs = [
        make_contribution(x, y, m, key_modality=parameter_modality, weight_scale=scale)
        for y, m in zip(ys, metrics, strict=True)
    ]
    floats, ints = _sum(contribs)
    got, agg = combine_sums(floats, ints, x, key_modality=parameter_modality, weight_scale=scale)
    previous = {**x, **{"cv." + k: np.zeros_like(v) for k, v in x.items()}}
    want = modality_weighted_average(ys, metrics, parameter_modality, previous)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["encoders.audio.0.weight"], x["encoders.audio.0.weight"])
    n_ex = np.array([m["num-examples"] for m in metrics], dtype=np.float64)
    loss = np.array([m["train-total"] for m in metrics])
    assert agg["num-examples"] == n_ex.sum()
    assert agg["train-total"] == pytest.approx(float((n_ex * loss).sum() / n_ex.sum()))
    assert next_weight_scale(ints) == pytest.approx(n_ex.mean())
    # The model keys come back in the global model's order whatever order the sums have
    # (Flower's FedAvgM pairs old and new arrays by position).
    shuffled = dict(reversed(list(floats.items())))
    again, _ = combine_sums(shuffled, ints, x, key_modality=parameter_modality, weight_scale=scale)
    assert list(again)[: len(x)] == list(x)


def test_ring_and_ckks_payloads_round_trip_within_quantization() -> None:
    x, ys, metrics = _clients(4, seed=1)
    contribs = [
        make_contribution(x, y, m, key_modality=parameter_modality, weight_scale=200.0)
        for y, m in zip(ys, metrics, strict=True)
    ]
    floats, ints = _sum(contribs)
    layout = PayloadLayout.from_arrays(
        payload_template(SHAPES), int_template(), clip=4.0, num_clients=4
    )
    rng = np.random.default_rng(2)
    total = np.sum(
        [layout.encode(c.floats, c.ints, rng=rng) for c in contribs], axis=0, dtype=np.uint32
    )
    f_ring, i_ring = layout.decode_sum(np.asarray(total, dtype=np.uint32), num_summed=4)
    vecs = [flatten_contribution(c, clip=4.0) for c in contribs]
    assert vecs[0].shape == (payload_length(SHAPES),)
    f_he, i_he = split_sum(np.sum(vecs, axis=0) + 1e-6, SHAPES, clip=4.0)  # + CKKS-like error
    for k in ints:
        np.testing.assert_array_equal(i_ring[k], ints[k])
        np.testing.assert_array_equal(i_he[k], ints[k])
    step = 8.0 * 4 / 2**32
    for k in floats:
        np.testing.assert_allclose(f_ring[k], floats[k], atol=4 * step)
        np.testing.assert_allclose(f_he[k], floats[k], atol=1e-5)


def test_dp_unweighted_contributions_are_uniform_and_cannot_mix() -> None:
    x, ys, metrics = _clients(3, seed=4)
    deltas = [{k: y[k] - x[k] for k in x} for y in ys]
    dp_metrics = [{**m, "dp-unweighted": 1} for m in metrics]
    contribs = [
        make_contribution(x, d, m, key_modality=parameter_modality, weight_scale=50.0)
        for d, m in zip(deltas, dp_metrics, strict=True)
    ]
    floats, ints = _sum(contribs)
    got, agg = combine_sums(floats, ints, x, key_modality=parameter_modality, weight_scale=50.0)
    for k in x:
        want = x[k] + np.mean([d[k] for d in deltas], axis=0)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-7)
    assert agg["num-examples"] == sum(m["num-examples"] for m in metrics)
    plain = make_contribution(
        x, ys[0], metrics[0], key_modality=parameter_modality, weight_scale=50.0
    )
    floats, ints = _sum([plain, *contribs[1:]])
    with pytest.raises(ValueError, match="cannot mix"):
        combine_sums(floats, ints, x, key_modality=parameter_modality, weight_scale=50.0)


def test_bad_arguments() -> None:
    x, ys, metrics = _clients(1)
    with pytest.raises(ValueError, match="weight_scale"):
        make_contribution(x, ys[0], metrics[0], key_modality=parameter_modality, weight_scale=0.0)
    with pytest.raises(ValueError, match="not in the global model"):
        make_contribution({}, ys[0], metrics[0], key_modality=parameter_modality, weight_scale=1.0)
    c = make_contribution(x, ys[0], metrics[0], key_modality=parameter_modality, weight_scale=1.0)
    with pytest.raises(ValueError, match="clip"):
        flatten_contribution(c, clip=-1.0)


def test_dp_range_divisor_round_trips_and_dp_rounds_release_no_loss() -> None:
    """A DP contribution travels divided by the round's ρ through the ring, with discrete
    Gaussian shares; the server multiplies ρ back; the training loss is not sent."""
    from umbra.privacy.ddg import IntegerNoise
    from umbra.privacy.randomness import SecureRandom
    from umbra.secure.contribution import dp_range_of

    x, ys, metrics = _clients(4, seed=5)
    deltas = [{k: (y[k] - x[k]) * 20.0 for k in x} for y in ys]  # values up to ~±60: > clip 4
    dp_metrics = [{**m, "dp-unweighted": 1} for m in metrics]
    rho = 32
    contribs = [
        make_contribution(x, d, m, key_modality=parameter_modality, weight_scale=50.0, dp_range=rho)
        for d, m in zip(deltas, dp_metrics, strict=True)
    ]
    assert all(not c.floats[k].any() for c in contribs for k in c.floats if k.startswith("metric/"))
    layout = PayloadLayout.from_arrays(payload_template(SHAPES), int_template(), clip=4.0,
                                       num_clients=4)  # fmt: skip
    noise = IntegerNoise(groups=dict.fromkeys(SHAPES, "g"), share_sigma={"g": 50.0},
                         norm_bound=None, plans={})  # fmt: skip
    rng = SecureRandom.for_testing(3)
    total = np.sum([layout.encode(c.floats, c.ints, rng=rng, noise=noise).astype(np.uint64)
                    for c in contribs], axis=0) % (1 << 32)  # fmt: skip
    f_ring, i_ring = layout.decode_sum(total.astype(np.uint32), num_summed=4)
    assert dp_range_of(i_ring) == rho
    got, agg = combine_sums(f_ring, i_ring, x, key_modality=parameter_modality, weight_scale=50.0)
    scale = ((2**32 - 1) // 4) / (2 * 4.0)  # integer units per float unit
    noise_std = 50.0 * 2 * rho / scale / 4  # 4 shares of std 50, times ρ, in the mean of 4
    for k in x:
        want = x[k] + np.mean([d[k] for d in deltas], axis=0)
        np.testing.assert_allclose(got[k], want, atol=8 * noise_std)
    assert not any(k.startswith("train-") for k in agg)
    # contributions that disagree on ρ cannot be combined
    odd = make_contribution(x, deltas[0], dp_metrics[0], key_modality=parameter_modality,
                            weight_scale=50.0, dp_range=rho * 2)  # fmt: skip
    floats, ints = _sum([odd, *contribs[1:]])
    with pytest.raises(ValueError, match="range divisors"):
        combine_sums(floats, ints, x, key_modality=parameter_modality, weight_scale=50.0)
