"""Architecture-grouped averaging: each parameter group is averaged only over the
organisations whose architecture of that group matches (checked against sums by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.federation.strategies.architecture import (
    architecture_signature,
    grouped_average,
    signature_groups,
)
from umbra.federation.strategies.modality import modality_weighted_average
from umbra.federation.train import get_arrays
from umbra.models import ModelSpec, MultimodalNet, parameter_modality

SHAPES = {"image": (1, 8, 8), "text": (16,)}


def _spec(**kw: object) -> ModelSpec:
    return ModelSpec(input_shapes=SHAPES, num_classes=3, hidden=8, embed_dim=6, **kw)  # type: ignore[arg-type]


def _random_arrays(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32)
            for k, v in get_arrays(MultimodalNet(spec)).items()}  # fmt: skip


def test_signature_differs_exactly_where_the_architecture_does() -> None:
    a, b = (
        architecture_signature(_spec()),
        architecture_signature(_spec(encoders={"image": "scattering"})),
    )
    # scattering needs (C, H, W): same shape works; the image group differs, the rest matches
    assert a["image"] != b["image"]
    assert a["text"] == b["text"] and a["shared"] == b["shared"]
    wide = architecture_signature(
        ModelSpec(input_shapes=SHAPES, num_classes=3, hidden=16, embed_dim=6)
    )
    assert wide["image"] != a["image"] and wide["text"] != a["text"]
    assert wide["shared"] == a["shared"]  # same embedding size: the head is shared


def test_grouped_average_only_over_matching_architectures() -> None:
    conv, scat = _spec(), _spec(encoders={"image": "scattering"})
    specs = [conv, conv, scat]
    arrays = [_random_arrays(s, seed) for seed, s in enumerate(specs)]
    counts = [
        {"num-examples": 10.0, "n-image": 4.0, "n-text": 10.0},
        {"num-examples": 30.0, "n-image": 12.0, "n-text": 20.0},
        {"num-examples": 20.0, "n-image": 20.0, "n-text": 5.0},
    ]
    sigs = [architecture_signature(s) for s in specs]
    out = grouped_average(arrays, counts, parameter_modality, sigs, arrays)
    assert signature_groups(sigs, "image") == [[0, 1], [2]]
    assert signature_groups(sigs, "text") == [[0, 1, 2]]
    for k in arrays[0]:
        group = parameter_modality(k)
        if group == "image":  # conv image encoder: organisations 0 and 1 only, by n-image
            want = (4 * arrays[0][k] + 12 * arrays[1][k]) / 16
            np.testing.assert_allclose(out[0][k], want, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(out[0][k], out[1][k])
        elif group == "text":  # every organisation, by n-text
            want = (10 * arrays[0][k] + 20 * arrays[1][k] + 5 * arrays[2][k]) / 35
            for i in range(3):
                np.testing.assert_allclose(out[i][k], want, rtol=1e-5, atol=1e-6)
        else:  # head and fusion: every organisation, by num-examples
            want = (10 * arrays[0][k] + 30 * arrays[1][k] + 20 * arrays[2][k]) / 60
            for i in range(3):
                np.testing.assert_allclose(out[i][k], want, rtol=1e-5, atol=1e-6)
    for k in arrays[2]:
        if parameter_modality(k) == "image":  # alone with its architecture: unchanged
            np.testing.assert_allclose(out[2][k], arrays[2][k], rtol=1e-6)
    assert set(out[2]) == set(arrays[2]) and set(out[0]) == set(arrays[0])


def test_one_architecture_is_the_modality_aware_mean() -> None:
    spec = _spec()
    arrays = [_random_arrays(spec, s) for s in range(3)]
    counts = [{"num-examples": float(n), "n-image": float(n // 2), "n-text": float(n)}
              for n in (5, 9, 14)]  # fmt: skip
    sigs = [architecture_signature(spec)] * 3
    out = grouped_average(arrays, counts, parameter_modality, sigs, arrays)
    ref = modality_weighted_average(arrays, counts, parameter_modality)
    for i in range(3):
        for k in ref:
            np.testing.assert_array_equal(out[i][k], ref[k])


def test_mismatched_shapes_under_one_signature_raise() -> None:
    spec = _spec()
    a, b = _random_arrays(spec, 0), _random_arrays(spec, 1)
    b["head.0.weight"] = np.zeros((2, 2), dtype=np.float32)
    counts = [{"num-examples": 1.0, "n-image": 1.0, "n-text": 1.0}] * 2
    sig = architecture_signature(spec)
    with pytest.raises(ValueError, match="other shapes"):
        grouped_average([a, b], counts, parameter_modality, [sig, sig], [a, b])
