"""DP-SGD's Poisson sample and noise are secret; run.seed keeps non-private training reproducible."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from umbra.federation.train import (
    Batchable,
    TrainSettings,
    get_arrays,
    train_local,
    train_local_dp,
)
from umbra.models import ModelSpec, MultimodalNet, parameter_groups
from umbra.privacy import dpsgd


def _net_and_data(n: int = 60) -> tuple[MultimodalNet, Batchable]:
    torch.manual_seed(0)
    spec = ModelSpec(
        input_shapes={"image": (1, 8, 8), "text": (12,)},
        num_classes=3,
        hidden=8,
        embed_dim=5,
        dropout=0.0,
    )
    g = torch.Generator().manual_seed(1)
    data = Batchable(
        {"image": torch.rand(n, 1, 8, 8, generator=g), "text": torch.randn(n, 12, generator=g)},
        torch.rand(n, 2, generator=g) > 0.2,
        torch.randint(0, 3, (n,), generator=g),
    )
    return MultimodalNet(spec), data


def _record_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Spy on the Poisson batches train_local_dp draws."""
    seen: list[list[int]] = []
    real = dpsgd.poisson_batches

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for idx in real(*args, **kwargs):  # type: ignore[arg-type]
            seen.append(idx.tolist())
            yield idx

    monkeypatch.setattr(dpsgd, "poisson_batches", spy)
    return seen


def test_same_run_seed_draws_different_poisson_samples_and_noise(monkeypatch) -> None:
    model, data = _net_and_data()
    groups = parameter_groups(model)
    settings = TrainSettings(lr=0.1, momentum=0.0)
    kw = {
        "sample_rate": 0.2,
        "steps": 6,
        "noise_multipliers": dict.fromkeys(groups, 1.0),
        "clip_norms": dict.fromkeys(groups, 0.5),
        "seed": 1234,  # run.seed-derived: identical in both runs
    }
    seen = _record_batches(monkeypatch)
    runs = []
    for _ in range(2):
        m = copy.deepcopy(model)
        train_local_dp(m, data, settings, **kw)  # type: ignore[arg-type]
        runs.append(get_arrays(m))
    first, second = seen[:6], seen[6:]
    assert len(first) == len(second) == 6
    assert first != second  # the sample does not follow the seed
    assert any(not np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    # noise alone differs too: an identical, full sample (q = 1) still gives other weights
    full = {**kw, "sample_rate": 1.0, "steps": 1}
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    train_local_dp(a, data, settings, **full)  # type: ignore[arg-type]
    train_local_dp(b, data, settings, **full)  # type: ignore[arg-type]
    assert seen[-1] == seen[-2] == list(range(len(data)))
    wa, wb = get_arrays(a), get_arrays(b)
    assert any(not np.array_equal(wa[k], wb[k]) for k in wa)


def test_deferred_noise_step_releases_the_clipped_update_in_float64() -> None:
    model, data = _net_and_data()
    groups = parameter_groups(model)
    settings = TrainSettings(lr=0.3, momentum=0.5, weight_decay=0.01)
    x = get_arrays(model)
    release: dict[str, np.ndarray] = {}
    train_local_dp(model, data, settings, sample_rate=1.0, steps=1,
                   noise_multipliers=dict.fromkeys(groups, 0.0),
                   clip_norms=dict.fromkeys(groups, 0.5), seed=0, deferred_noise=True,
                   release=release)  # fmt: skip
    y = get_arrays(model)
    for k, v in release.items():
        assert v.dtype == np.float64
        np.testing.assert_allclose(v, y[k].astype(np.float64) - x[k], atol=2e-7)
    with pytest.raises(ValueError, match="one step"):
        train_local_dp(model, data, settings, sample_rate=1.0, steps=2,
                       noise_multipliers=dict.fromkeys(groups, 0.0),
                       clip_norms=dict.fromkeys(groups, 0.5), seed=0,
                       deferred_noise=True)  # fmt: skip


def test_non_private_training_stays_bit_reproducible() -> None:
    model, data = _net_and_data()
    settings = TrainSettings(epochs=1.0, batch_size=16, lr=0.1)
    outs = []
    for _ in range(2):
        m = copy.deepcopy(model)
        train_local(m, data, settings, seed=99)
        outs.append(get_arrays(m))
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])


def test_dp_training_reports_no_sample_sizes() -> None:
    """Reply metrics leave the client: nothing derived from the secret sample is in them."""
    model, data = _net_and_data()
    groups = parameter_groups(model)
    metrics = train_local_dp(model, data, TrainSettings(lr=0.1), sample_rate=0.3, steps=3,
                             noise_multipliers=dict.fromkeys(groups, 1.0),
                             clip_norms=dict.fromkeys(groups, 0.5), seed=0)  # fmt: skip
    assert metrics == {"steps": 3.0}
