"""Quantization into Z_{2^32}: headroom, unbiased stochastic rounding, payload layouts."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.secure.secagg.quantize import (
    PayloadLayout,
    QuantizationSpec,
    dequantize_sum,
    quantize,
)


def test_sum_of_extremes_never_wraps() -> None:
    for n in (1, 3, 10, 100):
        spec = QuantizationSpec(clip=0.5, num_clients=n)
        rng = np.random.default_rng(0)
        hi = np.sum(
            [quantize(np.full(4, 9.0), spec=spec, rng=rng).astype(np.uint64) for _ in range(n)],
            axis=0,
        )
        lo = np.sum(
            [quantize(np.full(4, -9.0), spec=spec, rng=rng).astype(np.uint64) for _ in range(n)],
            axis=0,
        )
        assert int(hi.max()) <= 2**32 - 1
        total = (hi % 2**32).astype(np.uint32)
        np.testing.assert_allclose(dequantize_sum(total, spec=spec, num_summed=n), n * 0.5)
        np.testing.assert_allclose(
            dequantize_sum(lo.astype(np.uint32), spec=spec, num_summed=n), -n * 0.5
        )


def test_relative_error_of_a_sum_is_below_1e4() -> None:
    rng = np.random.default_rng(1)
    n = 10
    spec = QuantizationSpec(clip=1.0, num_clients=n)
    xs = [rng.normal(0, 0.1, size=50_000) for _ in range(n)]
    total = np.zeros(50_000, dtype=np.uint32)
    for x in xs:
        total += quantize(x, spec=spec, rng=rng)
    out = dequantize_sum(total, spec=spec, num_summed=n)
    ref = np.sum(xs, axis=0)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    assert np.abs(out - ref).max() <= n / spec.scale


def test_stochastic_rounding_is_unbiased() -> None:
    spec = QuantizationSpec(clip=1.0, num_clients=2**15)  # coarse steps: rounding visible
    step = 1.0 / spec.scale
    x = np.full(100_000, 0.3 * step + 0.1)
    q = quantize(x, spec=spec, rng=np.random.default_rng(2)).astype(np.float64)
    exact = (x[0] + 1.0) * spec.scale
    assert set(np.unique(q)) <= {np.floor(exact), np.ceil(exact)}
    frac = exact - np.floor(exact)
    std = np.sqrt(frac * (1 - frac) / x.size)
    assert abs((q - np.floor(exact)).mean() - frac) < 5 * std


def test_payload_layout_floats_and_exact_ints() -> None:
    rng = np.random.default_rng(3)
    n = 4
    floats = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=5)} for _ in range(n)]
    ints = [{"count": rng.integers(0, 1000, size=3)} for _ in range(n)]
    layout = PayloadLayout.from_arrays(floats[0], ints[0], clip={"w": 4.0, "b": 5.0}, num_clients=n)
    assert layout.size == 6 + 5 + 3
    total = np.zeros(layout.size, dtype=np.uint32)
    for f, i in zip(floats, ints, strict=True):
        total += layout.encode(f, i, rng=rng)
    fsum, isum = layout.decode_sum(total, num_summed=n)
    np.testing.assert_allclose(fsum["w"], sum(f["w"] for f in floats), atol=1e-6)
    np.testing.assert_allclose(fsum["b"], sum(f["b"] for f in floats), atol=1e-6)
    np.testing.assert_array_equal(isum["count"], sum(i["count"] for i in ints))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip": 0.0, "num_clients": 2}, "clip must be"),
        ({"clip": float("inf"), "num_clients": 2}, "clip must be"),
        ({"clip": 1.0, "num_clients": 0}, "num_clients must be"),
        ({"clip": 1.0, "num_clients": 2, "bits": 40}, "bits must be"),
        ({"clip": 1.0, "num_clients": 8, "bits": 2}, "headroom"),
    ],
)
def test_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantizationSpec(**kwargs)


def test_layout_rejects_bad_arrays() -> None:
    layout = PayloadLayout.from_arrays(
        {"w": np.zeros(3)}, {"c": np.zeros(2, int)}, clip=1.0, num_clients=2
    )
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shape"):
        layout.encode({"w": np.zeros(4)}, {"c": np.zeros(2, int)}, rng=rng)
    with pytest.raises(ValueError, match=r"integers in \[0,"):
        layout.encode({"w": np.zeros(3)}, {"c": np.array([-1, 0])}, rng=rng)
    with pytest.raises(ValueError, match="missing"):
        layout.encode({"w": np.zeros(3)}, {}, rng=rng)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_refused(bad: float) -> None:
    """A diverged update is refused: NaN survives np.clip and would be cast to an arbitrary
    level, corrupting the masked sum without any error."""
    spec = QuantizationSpec(clip=1.0, num_clients=4)
    x = np.zeros(8)
    x[3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        quantize(x, spec=spec, rng=np.random.default_rng(0))
