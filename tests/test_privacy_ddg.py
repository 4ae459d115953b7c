"""The distributed discrete Gaussian under SecAgg+ quantisation (Kairouz, Liu & Steinke 2021).

References used here: numpy for the rounding's moments, the paper's τ formula written out
again, brute-force coupling for the rounding sensitivity, dp-accounting for ε, and the
SecAgg+ ring arithmetic (sum modulo 2^32, then the layout's decoder).
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from umbra.privacy.accounting import dpsgd_epsilons
from umbra.privacy.ddg import (
    DDGError,
    IntegerNoise,
    conditional_round,
    conditional_rounding_bound,
    ddg_tau,
    plan_group,
    plan_integer_noise,
    randomized_round,
    rounding_sensitivity,
)
from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.quantize import PayloadLayout, QuantizationSpec, quantize_with_noise


def test_randomized_rounding_is_unbiased_with_bernoulli_variance() -> None:
    rng = SecureRandom.for_testing(1)
    v = np.array([0.0, 0.25, 3.5, -2.9, 10.01])
    draws = np.stack([randomized_round(v, rng) for _ in range(40_000)])
    assert np.all(draws == np.floor(draws))
    assert np.all(np.abs(draws - v) < 1)
    frac = v - np.floor(v)
    var = frac * (1 - frac)
    n = draws.shape[0]
    assert np.all(np.abs(draws.mean(axis=0) - v) <= 5 * np.sqrt(var / n) + 1e-12)
    np.testing.assert_allclose(draws.var(axis=0), var, atol=0.01)


def test_conditional_rounding_bound_holds_and_stays_unbiased() -> None:
    rng = SecureRandom.for_testing(2)
    d, c = 400, 30.0
    x = SecureRandom.for_testing(3).normal(d)
    x *= c / np.linalg.norm(x)
    center = 1000.5  # the encoder's offset: rounding happens around it
    beta = math.exp(-0.5)
    bound = conditional_rounding_bound(c, d, beta=beta)
    ref = math.sqrt(c**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2))
    assert bound == pytest.approx(min(ref, c + math.sqrt(d)))
    draws = np.stack(
        [conditional_round(x + center, center=center, bound=bound, rng=rng) - center
         for _ in range(3000)]
    )  # fmt: skip
    norms = np.linalg.norm(draws, axis=1)
    assert norms.max() <= bound + 1e-9
    # conditioning removes little mass (≤ β), so the mean stays x up to a small bias
    err = np.abs(draws.mean(axis=0) - x)
    assert err.mean() < 0.03
    # a bound no rounding can meet is refused, not silently exceeded
    with pytest.raises(DDGError, match="norm bound") as err:
        conditional_round(x + center, center=center, bound=c - 1, rng=rng, max_tries=5)
    # and says how far the unrounded vector already was, to tell a bad bound from bad luck
    assert f"norm is {np.linalg.norm(x):.4g} over {x.size} coordinates" in str(err.value)


def test_rounding_sensitivity_bounds_every_coupled_rounding() -> None:
    """Brute force: for neighbouring sums v and v + γg (‖γg‖ ≤ γC) rounded with the same
    uniforms, the rounded vectors differ by at most γC + √d."""
    rng = SecureRandom.for_testing(4)
    d, gamma_c = 50, 3.0
    bound = rounding_sensitivity(gamma_c, d)
    assert bound == pytest.approx(gamma_c + math.sqrt(d))
    worst = 0.0
    for _ in range(2000):
        v = rng.normal(d, std=20.0)
        g = rng.normal(d)
        g *= gamma_c / np.linalg.norm(g)
        u = rng.uniform(d)
        diff = np.floor(v + g + u) - np.floor(v + u)
        worst = max(worst, float(np.linalg.norm(diff)))
    assert worst <= bound
    assert worst > gamma_c  # the rounding does add to the sensitivity


def test_tau_matches_the_papers_formula_and_plans_refuse_narrow_shares() -> None:
    s, t = 0.45, 6
    ref = 10 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, t))
    assert ddg_tau(s, t) == pytest.approx(ref, rel=1e-12)
    assert ddg_tau(5.0, 1) == 0.0
    with pytest.raises(DDGError, match="τ"):
        plan_group(noise_multiplier=1.0, sensitivity=1.0, shares=t)  # share std 0.41
    plan = plan_group(noise_multiplier=2.05, sensitivity=4000.0, shares=t)
    assert plan.share_sigma == pytest.approx(2.05 * 4000 / math.sqrt(t))
    assert plan.total_sigma == pytest.approx(2.05 * 4000)
    assert plan.tau < 1e-300


def test_accounting_with_the_inflated_sensitivity_matches_dp_accounting() -> None:
    """σ_int = σ Δ₂: the integer release's multiplier σ_int / Δ₂ is the budget's σ, so
    umbra's ε equals dp-accounting's for the Gaussian of σ_int / Δ₂, computed here."""
    sigma, q, steps, delta = 1.3, 0.085, 240, 1e-5
    scale, d, clip = 1.3e5, 130_000, 0.5  # γ C ≫ √d, like the default preset
    noise = plan_integer_noise({"w": d}, key_group=lambda _: "image",
                               noise_multipliers={"image": sigma}, sensitivities={"image": clip},
                               shares=6, scale=scale, half_range=2**28, client_level=False)  # fmt: skip
    plan = noise.plans["image"]
    assert plan.sensitivity == pytest.approx(scale * clip + math.sqrt(d))
    multiplier = plan.total_sigma / plan.sensitivity
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)  # umbra's grid
    acc.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(multiplier)), steps
    )
    ours = dpsgd_epsilons(noise_multipliers={"image": sigma}, sample_rate=q, steps=steps,
                          delta=delta, accountant="pld")["total"]  # fmt: skip
    assert ours == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    # in float units the released noise is σ C (1 + √d / (γ C)): 0.5 % more, not less
    assert plan.total_sigma / scale / (sigma * clip) == pytest.approx(
        1 + math.sqrt(d) / (scale * clip)
    )


def _ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    return np.sum(np.stack(vectors).astype(np.uint64), axis=0) % (1 << 32)


def test_secagg_round_noise_is_the_sum_of_t_discrete_gaussian_shares() -> None:
    """t clients encode noiseless vectors with their shares, the ring sum is decoded: the
    error per coordinate, in integer units, has mean 0 and variance σ_int² plus the
    rounding's Σ p(1-p) (an independent prediction from the inputs)."""
    t, d, clip = 6, 20_000, 4.0
    layout = PayloadLayout.from_arrays({"w": np.zeros(d)}, clip=clip, num_clients=t)
    spec = QuantizationSpec(clip=clip, num_clients=t)
    sigma_int = 40.0
    noise = IntegerNoise(groups={"w": "g"}, share_sigma={"g": sigma_int / math.sqrt(t)},
                         norm_bound=None, plans={})  # fmt: skip
    data = [SecureRandom.for_testing(10 + i).uniform(d) * 2 - 1 for i in range(t)]
    rng = SecureRandom.for_testing(20)
    total = _ring_sum([layout.encode({"w": x}, rng=rng, noise=noise) for x in data])
    floats, _ = layout.decode_sum(total, num_summed=t)
    err = (floats["w"] - np.sum(data, axis=0)) * spec.scale  # integer units
    frac = [(x + clip) * spec.scale % 1.0 for x in data]
    rounding_var = float(np.mean(np.sum([f * (1 - f) for f in frac], axis=0)))
    predicted = sigma_int**2 + rounding_var
    assert abs(err.mean()) < 5 * math.sqrt(predicted / d)
    assert err.var() == pytest.approx(predicted, rel=5 * math.sqrt(2 / d))
    assert stats.kstest(err / math.sqrt(predicted), "norm").pvalue > 1e-3
    # a single client's share alone is narrower by √t: the full noise needs all t shares
    one = layout.encode({"w": np.zeros(d)}, rng=rng, noise=noise).astype(np.float64)
    centred = one - clip * spec.scale
    assert centred.std() == pytest.approx(sigma_int / math.sqrt(t), rel=0.03)


def test_round_that_would_clip_or_wrap_is_refused() -> None:
    spec = QuantizationSpec(clip=1.0, num_clients=4)
    rng = SecureRandom.for_testing(5)
    with pytest.raises(DDGError, match="beyond the quantisation range"):
        quantize_with_noise(np.array([0.2, -1.5]), spec=spec, share_sigma=3.0, rng=rng)
    # a noise share that pushes a level out of [0, max_level] (the ring sum would wrap)
    with pytest.raises(DDGError, match="would wrap"):
        quantize_with_noise(np.full(1000, 0.999999), spec=spec,
                            share_sigma=0.01 * spec.max_level, rng=rng)  # fmt: skip
    ok = quantize_with_noise(np.array([0.5, -0.5]), spec=spec, share_sigma=3.0, rng=rng)
    assert ok.dtype == np.uint32
    # the non-DP encoder still clips silently (its documented behaviour), the DP one never
    layout = PayloadLayout.from_arrays({"w": np.zeros(2)}, clip=1.0, num_clients=4)
    noise = IntegerNoise(groups={"w": "g"}, share_sigma={"g": 3.0}, norm_bound=None, plans={})
    with pytest.raises(DDGError):
        layout.encode({"w": np.array([0.0, 2.0])}, rng=rng, noise=noise)
    with pytest.raises(TypeError, match="SecureRandom"):
        layout.encode({"w": np.zeros(2)}, rng=np.random.default_rng(0), noise=noise)


def test_plan_refuses_shares_too_wide_for_the_ring() -> None:
    with pytest.raises(DDGError, match="clip_range"):
        plan_integer_noise({"w": 10}, key_group=lambda _: "g", noise_multipliers={"g": 50.0},
                           sensitivities={"g": 1.0}, shares=2, scale=100.0, half_range=1000.0,
                           client_level=False)  # fmt: skip


def test_client_level_plan_uses_the_conditional_rounding_bound() -> None:
    noise = plan_integer_noise({"a": 300, "b": 100}, key_group=lambda _: "all",
                               noise_multipliers={"all": 0.9}, sensitivities={"all": 1.0},
                               shares=3, scale=500.0, half_range=2**28, client_level=True)  # fmt: skip
    bound = conditional_rounding_bound(500.0, 400)
    assert noise.norm_bound == {"all": bound}
    assert noise.plans["all"].sensitivity == bound
    assert noise.share_sigma["all"] == pytest.approx(0.9 * bound / math.sqrt(3))


def _secagg_messages(delta_scale: float, rho: int) -> tuple[object, object, dict]:
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    from umbra.federation.common import to_record

    x = {
        "encoders.image.net.0.weight": np.zeros((40, 200), np.float32),
        "head.weight": np.zeros((10, 600), np.float32),
    }
    rng = SecureRandom.for_testing(8)
    delta = {k: rng.normal(v.shape, std=delta_scale) for k, v in x.items()}
    config = ConfigRecord({
        "server-round": 1, "clip-range": 4.0, "weight-scale": 100.0, "modality-aware": True,
        "dp-mode": 1, "dp-noise-shares": 3, "dp-integer-noise": True, "dp-range": rho,
        "dp-sigma-image": 2.0, "dp-clip-image": 0.5, "dp-sigma-shared": 3.0,
        "dp-clip-shared": 1.0,
    })  # fmt: skip
    msg = Message(RecordDict({"arrays": to_record(x), "config": config}), dst_node_id=1,
                  message_type=MessageType.TRAIN)  # fmt: skip
    metrics = MetricRecord({"num-examples": 100, "n-image": 100, "dp-unweighted": 1.0,
                            "dp-sens-image": 0.01, "dp-sens-shared": 0.02})  # fmt: skip
    reply = Message(RecordDict({"arrays": to_record(delta), "metrics": metrics}), reply_to=msg)
    return msg, reply, delta


def test_masked_contribution_vector_adds_the_planned_shares_and_refuses_clipping() -> None:
    """The client side of a SecAgg+ DP round: the encoded model arrays minus the encoded
    noiseless values are discrete Gaussian shares of the planned std per group."""
    from umbra.secure.secagg.client_mod import masked_contribution_vector

    n, rho = 4, 2
    msg, reply, delta = _secagg_messages(0.05, rho)
    vector, clipped = masked_contribution_vector(msg, reply, num_clients=n)  # type: ignore[arg-type]
    assert clipped == 0.0
    spec = QuantizationSpec(clip=4.0, num_clients=n)
    scale = spec.scale / rho  # integer units per float unit of the update
    # payload order: sorted model keys first ("encoders..." then "head...")
    offset = 0
    for key, group, sigma, sens in (("encoders.image.net.0.weight", "image", 2.0, 0.01),
                                    ("head.weight", "shared", 3.0, 0.02)):  # fmt: skip
        size = delta[key].size
        levels = vector[offset : offset + size].astype(np.float64)
        offset += size
        noise = levels - spec.clip * spec.scale - delta[key].ravel() * scale
        plan = plan_group(noise_multiplier=sigma,
                          sensitivity=rounding_sensitivity(sens * scale, size), shares=3)  # fmt: skip
        assert abs(noise.mean()) < 5 * plan.share_sigma / math.sqrt(size), group
        assert noise.std() == pytest.approx(plan.share_sigma, rel=0.06), group
    msg, reply, _ = _secagg_messages(5.0, 1)  # values far beyond ±clip_range
    with pytest.raises(DDGError, match="refusing to clip"):
        masked_contribution_vector(msg, reply, num_clients=n)  # type: ignore[arg-type]
