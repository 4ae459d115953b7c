"""The organisation's DP policies: chosen by ``dp-mode``, settings, and what a reply carries.

References are computed here independently (numpy clipping, the DP-FedAvg share variance
σ²C²/t, the distributed DP-SGD scaling); the whole ClientApp under each mode is exercised by
tests/test_privacy_releases.py and the DP end-to-end tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from umbra.federation.train import TrainSettings
from umbra.privacy import client as client_pkg
from umbra.privacy.client import (
    CLIENT_POLICIES,
    ClientDP,
    ExampleDP,
    NoDP,
    client_policy,
    register_client_policy,
)
from umbra.privacy.randomness import SecureRandom


def _update(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)  # data only, not privacy randomness
    x = {"a": g.normal(size=(30, 20)).astype(np.float32), "b": g.normal(size=50).astype(np.float32)}
    y = {k: (v + g.normal(size=v.shape)).astype(np.float32) for k, v in x.items()}
    return x, y


def test_policy_follows_dp_mode_and_names_are_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(client_policy({})) is NoDP
    assert type(client_policy({"dp-mode": 0})) is NoDP
    assert type(client_policy({"dp-mode": 1})) is ExampleDP
    assert type(client_policy({"dp-mode": 2, "dp-clip-all": 1.0})) is ClientDP
    with pytest.raises(ValueError, match="unknown dp-mode 7"):
        client_policy({"dp-mode": 7})
    monkeypatch.setattr(client_pkg.registry, "CLIENT_POLICIES", CLIENT_POLICIES.copy())
    with pytest.raises(ValueError, match="already registered"):
        register_client_policy(type("Again", (NoDP,), {"name": "example"}))
    with pytest.raises(ValueError, match="no dp-mode code"):
        register_client_policy(type("Record", (NoDP,), {"name": "record"}))


def test_example_dp_settings_take_the_plans_step() -> None:
    base = TrainSettings(lr=0.05, momentum=0.9, proximal_mu=0.1)
    assert ExampleDP({"dp-mode": 1}).settings(base) == base
    s = ExampleDP({"dp-mode": 1, "dp-lr": 0.2, "dp-momentum": 0.0}).settings(base)
    assert (s.lr, s.momentum, s.proximal_mu) == (0.2, 0.0, 0.1)
    assert NoDP({}).settings(base) is base


def test_client_dp_reply_is_the_clipped_update_and_nothing_else() -> None:
    x, y = _update()
    out = {**y, "cv.a": np.ones(3, dtype=np.float32)}  # SCAFFOLD's delta never leaves
    clip = 0.5
    delta, metrics = ClientDP({"dp-mode": 2, "dp-clip-all": clip, "dp-sigma-all": 1.0}).reply(
        x, y, out, {"steps": 3.0}
    )
    raw = {k: y[k] - x[k] for k in x}
    norm = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in raw.values()))
    assert norm > clip  # the reference really clips
    assert set(delta) == set(x)
    for k in x:
        np.testing.assert_allclose(delta[k], raw[k] * (clip / norm), rtol=1e-6)
        assert delta[k].dtype == np.float32
    assert metrics == {"steps": 3.0, "dp-unweighted": 1.0}


def test_client_dp_under_secagg_sends_the_noiseless_clip_and_its_sensitivity() -> None:
    x, y = _update(1)
    cfg = {"dp-mode": 2, "dp-clip-all": 100.0, "dp-sigma-all": 1.0, "dp-noise-shares": 3,
           "dp-integer-noise": True}  # fmt: skip
    delta, metrics = ClientDP(cfg).reply(x, y, dict(y), {"steps": 1.0})
    for k in x:  # the clip is above the norm: the update leaves unchanged, noise comes later
        np.testing.assert_array_equal(delta[k], y[k] - x[k])
    assert metrics == {"steps": 1.0, "dp-unweighted": 1.0, "dp-sens-all": 100.0}


def test_client_dp_share_has_the_variance_of_one_of_t_shares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CKKS: the client adds N(0, σ²C²/t) per coordinate (the sum of t shares is N(0, σ²C²))."""
    monkeypatch.setattr(client_pkg.client_dp, "SecureRandom", lambda: SecureRandom.for_testing(11))
    n = 200_000
    x = {"w": np.zeros(n, dtype=np.float64)}
    y = {"w": np.zeros(n, dtype=np.float64)}  # Δ = 0: the reply is the noise share alone
    sigma, clip, t = 1.3, 0.4, 4
    cfg = {"dp-mode": 2, "dp-clip-all": clip, "dp-sigma-all": sigma, "dp-noise-shares": t}
    delta, metrics = ClientDP(cfg).reply(x, y, dict(y), {"steps": 1.0})
    std = sigma * clip / math.sqrt(t)
    assert abs(float(delta["w"].mean())) < 5 * std / math.sqrt(n)
    assert float(delta["w"].std()) == pytest.approx(std, rel=0.01)
    assert "dp-sens-all" not in metrics


def test_example_dp_reply_without_shares_is_the_trained_model() -> None:
    x, y = _update(2)
    out = {**y, "cv.a": np.ones(2, dtype=np.float32)}
    sent, metrics = ExampleDP({"dp-mode": 1}).reply(x, y, out, {"steps": 2.0})
    assert sent is out and metrics == {"steps": 2.0}


def test_example_dp_distributed_reply_is_the_scaled_step() -> None:
    """CKKS: dp-scale · (y - x) in the weights' dtype; SecAgg+: dp-scale · the float64 step
    the trainer released (zeros for arrays without a gradient), both summed unweighted."""
    x, y = _update(3)
    ckks = ExampleDP({"dp-mode": 1, "dp-noise-shares": 3, "dp-scale": 1.5})
    sent, metrics = ckks.reply(x, y, dict(y), {"steps": 1.0})
    for k in x:
        np.testing.assert_allclose(sent[k], (y[k] - x[k]) * 1.5, rtol=1e-6)
        assert sent[k].dtype == np.float32
    assert metrics == {"steps": 1.0, "dp-unweighted": 1.0}
    secagg = ExampleDP({"dp-mode": 1, "dp-noise-shares": 3, "dp-integer-noise": True,
                        "dp-scale": 0.5})  # fmt: skip
    assert secagg.release == {}
    secagg.release = {"a": np.full((30, 20), 0.25)}  # as train_local_dp leaves it
    sent, _ = secagg.reply(x, y, dict(y), {"steps": 1.0})
    np.testing.assert_array_equal(sent["a"], np.full((30, 20), 0.125))
    np.testing.assert_array_equal(sent["b"], np.zeros(50))
    assert sent["a"].dtype == np.float64


def test_distributed_dp_sgd_refuses_more_than_one_step() -> None:
    from umbra.models import ModelSpec, MultimodalNet

    model = MultimodalNet(ModelSpec(input_shapes={"text": (4,)}, num_classes=2, hidden=4,
                                    embed_dim=3))  # fmt: skip
    policy = ExampleDP({"dp-mode": 1, "dp-noise-shares": 2, "dp-integer-noise": True,
                        "dp-steps": 2, "dp-q": 0.5, "dp-sigma-text": 1.0, "dp-clip-text": 1.0,
                        "dp-sigma-shared": 1.0, "dp-clip-shared": 1.0})  # fmt: skip
    with pytest.raises(ValueError, match="exactly one step"):
        policy.train(model, None, TrainSettings(), seed=0, scaffold=None)  # type: ignore[arg-type]
