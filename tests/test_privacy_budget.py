"""The per-group budget allocator never overshoots a target or the total (dp-accounting as oracle)."""

from __future__ import annotations

import re

import pytest
from dp_accounting import dp_event as E
from dp_accounting.rdp import RdpAccountant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umbra.errors import ConfigError
from umbra.privacy.accounting import (
    accountant_names,
    dpsgd_event,
    effective_noise_multiplier,
    epsilon_for,
    register_accountant,
)
from umbra.privacy.budget import (
    MIN_NOISE_MULTIPLIER,
    Budget,
    allocate_budget,
    calibrate_noise_multiplier,
    validate_noise_multipliers,
    validate_privacy_params,
)

GROUPS = ("image", "audio", "shared")
# dp-accounting's RDP accountant on integer orders only: ~5x faster than its default orders
# (which add fractional ones), so the property test can afford more examples. The property
# checked (never overshoot, as measured by the accountant in use) does not depend on orders.
INT_ORDERS = [*range(2, 65), 128, 256]
if "rdp-int" not in accountant_names():
    register_accountant("rdp-int", lambda: RdpAccountant(INT_ORDERS))


def _rdp(sigmas: dict[str, float], q: float, steps: int, delta: float) -> float:
    """ε by dp-accounting's RDP accountant directly, from the composed event."""
    inner = E.ComposedDpEvent([E.GaussianDpEvent(s) for s in sigmas.values()])
    acc = RdpAccountant(INT_ORDERS)
    acc.compose(E.PoissonSampledDpEvent(q, inner), steps)
    return float(acc.get_epsilon(delta))


_plans = st.fixed_dictionaries(
    {
        "epsilon": st.floats(0.5, 8.0),
        "delta": st.sampled_from([1e-5, 1e-6]),
        "sample_rate": st.floats(0.005, 0.2),
        "steps_per_round": st.integers(1, 20),
        "rounds": st.integers(1, 5),
    }
)


@settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    plan=_plans,
    shares=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    use_targets=st.booleans(),
)
def test_allocation_never_overshoots(plan, shares, use_targets):
    spec = {g: s * plan["epsilon"] for g, s in zip(GROUPS, shares, strict=True)}
    kwargs = (
        {"targets": spec} if use_targets else {"weights": dict(zip(GROUPS, shares, strict=True))}
    )
    alloc = allocate_budget(accountant="rdp-int", tol=1e-2, **plan, **kwargs)
    steps = plan["steps_per_round"] * plan["rounds"]
    assert alloc.steps == steps
    q, d = plan["sample_rate"], plan["delta"]
    for g in GROUPS:
        eps_g = _rdp({g: alloc.noise_multipliers[g]}, q, steps, d)
        assert eps_g <= alloc.targets[g]
        if use_targets:
            assert alloc.targets[g] == spec[g]
    total = _rdp(alloc.noise_multipliers, q, steps, d)
    assert total <= plan["epsilon"]
    assert total == pytest.approx(alloc.epsilon_total, rel=1e-9)
    sigma_eff = effective_noise_multiplier(alloc.noise_multipliers.values())
    if not use_targets and sigma_eff > 1.01 * MIN_NOISE_MULTIPLIER:
        # Weights spend (almost) all of the total: the calibration is tight (unless the
        # budget is so loose that the smallest σ considered already fits).
        assert total >= 0.95 * plan["epsilon"]


def test_weights_order_noise_and_shares():
    alloc = allocate_budget(
        epsilon=3.0,
        delta=1e-5,
        sample_rate=0.02,
        steps_per_round=50,
        rounds=4,
        weights={"image": 2.0, "audio": 1.0, "shared": 2.0},
        accountant="rdp-int",
        tol=1e-2,
    )
    s = alloc.noise_multipliers
    assert s["audio"] > s["image"] == pytest.approx(s["shared"])
    # σ_g^-2 ∝ w_g: audio gets half of image's share of the privacy loss.
    assert s["image"] ** -2 / s["audio"] ** -2 == pytest.approx(2.0, rel=1e-9)
    assert alloc.epsilons["audio"] < alloc.epsilons["image"] < alloc.epsilon_total <= 3.0
    b = alloc.budget()
    assert b.epsilon == 3.0 and b.groups == alloc.targets


def test_targets_that_overshoot_are_scaled_down():
    targets = {"audio": 1.0, "shared": 2.5}
    alloc = allocate_budget(
        epsilon=3.0,
        delta=1e-5,
        sample_rate=0.02,
        steps_per_round=50,
        rounds=4,
        targets=targets,
        accountant="rdp-int",
        tol=1e-2,
    )
    assert alloc.scale > 1.0  # the targets compose above 3
    assert alloc.epsilon_total <= 3.0
    assert all(alloc.epsilons[g] <= targets[g] for g in targets)
    # Relative noise levels of the separately calibrated targets are kept.
    ref = {
        g: calibrate_noise_multiplier(
            epsilon=t, delta=1e-5, sample_rate=0.02, steps=200, accountant="rdp-int", tol=1e-2
        )
        for g, t in targets.items()
    }
    for g in targets:
        assert alloc.noise_multipliers[g] / ref[g] == pytest.approx(alloc.scale, rel=1e-6)


def test_targets_that_fit_are_kept():
    targets = {"image": 0.5, "audio": 0.2}
    alloc = allocate_budget(
        epsilon=3.0,
        delta=1e-5,
        sample_rate=0.02,
        steps_per_round=50,
        rounds=2,
        targets=targets,
        accountant="rdp-int",
    )
    assert alloc.scale == 1.0
    for g, t in targets.items():
        assert alloc.epsilons[g] <= t
        assert alloc.epsilons[g] >= 0.97 * t  # tight


def test_calibration_pld_is_tight():
    sigma = calibrate_noise_multiplier(epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=40)
    ev = dpsgd_event(noise_multiplier=sigma, sample_rate=0.05, steps=40)
    assert epsilon_for(ev, delta=1e-5) <= 2.0
    looser = dpsgd_event(noise_multiplier=sigma * 0.98, sample_rate=0.05, steps=40)
    assert epsilon_for(looser, delta=1e-5) > 2.0


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"epsilon": 0.0}, "privacy.epsilon"),
        ({"epsilon": -1.0}, "privacy.epsilon"),
        ({"delta": 1.0}, "privacy.delta"),
        ({"delta": 0.0}, "privacy.delta"),
        ({"weights": None, "targets": {"image": 4.0, "shared": 1.0}}, "privacy.targets.image"),
        ({"weights": {"image": 0.0, "shared": 1.0}}, "privacy.weights.image"),
        ({"weights": None}, "exactly one of"),
        ({"targets": {"image": 1.0, "shared": 1.0}}, "exactly one of"),
        ({"groups": ["image", "shared", "audio"]}, "missing ['audio']"),
        ({"groups": ["shared"]}, "unknown ['image']"),
        ({"sample_rate": 0.0}, "sample rate"),
        ({"rounds": 0}, "federation.rounds"),
        ({"accountant": "prv"}, "privacy.accountant"),
    ],
)
def test_config_errors_name_the_setting(kwargs, setting):
    base = {
        "epsilon": 3.0,
        "delta": 1e-5,
        "sample_rate": 0.02,
        "steps_per_round": 10,
        "rounds": 2,
        "weights": {"image": 1.0, "shared": 1.0},
        "accountant": "rdp",
    }
    base.update(kwargs)
    with pytest.raises(ConfigError, match=re.escape(setting)):
        allocate_budget(**base)


def test_validate_helpers():
    validate_privacy_params(epsilon=3.0, delta=1e-5, num_records=1000)
    with pytest.raises(ConfigError, match=r"privacy\.delta"):
        validate_privacy_params(epsilon=3.0, delta=1e-2, num_records=1000)
    with pytest.raises(ConfigError, match=r"privacy\.noise_multipliers\.audio"):
        validate_noise_multipliers({"image": 1.0, "audio": 0.0})
    with pytest.raises(ConfigError, match=r"privacy\.targets\.audio"):
        Budget(epsilon=3.0, delta=1e-5, groups={"audio": -1.0})
    with pytest.raises(ConfigError, match="cannot be reached"):
        calibrate_noise_multiplier(
            epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps=10**6, accountant="rdp-int"
        )
