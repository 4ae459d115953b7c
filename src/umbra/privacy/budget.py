"""Per-modality privacy budgets: pick one noise multiplier per parameter group.

Given a total (ε, δ) and either *weights* or explicit *per-group ε targets*, the allocator
returns σ_g for every parameter group (modalities plus ``"shared"``) such that, for the
planned ``steps_per_round × rounds`` DP-SGD steps at Poisson rate q,

* every group's own ε_g (its releases alone) is ≤ its target, and
* the composed total (all groups on the shared sample, see :mod:`umbra.privacy.accounting`)
  is ≤ the total ε.

All ε values come from dp-accounting; σ is found by
``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` (Brent's method on σ, whose
result is guaranteed not to exceed the target ε), then checked once more with
:func:`~umbra.privacy.accounting.epsilon_for`.

*Weights* share the total in Gaussian-DP terms: the composed mechanism is one Gaussian with
``σ_eff⁻² = Σ_g σ_g⁻²``, so ``σ_g⁻² = (w_g / Σ w) σ_eff⁻²`` gives group g the fraction
``w_g / Σ w`` of the total privacy loss (of μ² in μ-GDP, Dong, Roth & Su 2019,
https://arxiv.org/abs/1905.02383), and σ_eff is calibrated to the total ε. A larger weight
means less noise and a larger ε_g.

*Targets* are calibrated group by group; if the groups then compose above the total, every
σ_g is multiplied by one common factor c > 1 (the smallest that brings the composed total
within budget). That scales every target down while keeping the groups' relative shares of
the privacy loss, and no ε_g can grow because ε decreases in σ.

Settings named in error messages follow the ``privacy`` config section:
``privacy.epsilon``, ``privacy.delta``, ``privacy.weights.<group>``, ``privacy.targets.<group>``,
``privacy.noise_multipliers.<group>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dp_accounting.mechanism_calibration import ExplicitBracketInterval, calibrate_dp_mechanism

from umbra.errors import ConfigError
from umbra.privacy.accounting import (
    DEFAULT_ACCOUNTANT,
    dpsgd_event,
    effective_noise_multiplier,
    epsilon_for,
    make_accountant,
)

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "Allocation",
    "Budget",
    "allocate_budget",
    "calibrate_noise_multiplier",
    "validate_noise_multipliers",
    "validate_privacy_params",
]

#: Smallest σ the calibration considers; a target loose enough to allow less noise gets this.
MIN_NOISE_MULTIPLIER = 0.1
#: Largest σ the calibration considers before declaring a target unreachable.
MAX_NOISE_MULTIPLIER = 1e4


@dataclass(frozen=True)
class Budget:
    """What may be spent: a total ε at δ and optional per-group ε caps.

    Attributes:
        epsilon: total ε (all groups composed), > 0.
        delta: δ in (0, 1).
        groups: ``group -> ε_g`` caps (each group's releases alone); may be empty.
    """

    epsilon: float
    delta: float
    groups: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_privacy_params(epsilon=self.epsilon, delta=self.delta)
        for g, e in self.groups.items():
            if not e > 0:
                raise ConfigError(f"privacy.targets.{g} must be > 0, got {e}")
        object.__setattr__(self, "groups", dict(self.groups))


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`allocate_budget`.

    Attributes:
        noise_multipliers: ``group -> σ_g`` (noise std / clip norm of that group).
        targets: ``group -> ε_g`` cap guaranteed for the planned steps (after any scaling).
        epsilons: ``group -> ε_g`` actually reached for the planned steps (≤ targets).
        epsilon_total: composed ε of all groups for the planned steps (≤ ``epsilon``).
        epsilon, delta: the total budget.
        sample_rate, steps: the plan (steps = steps_per_round × rounds).
        accountant: accountant name.
        scale: common factor applied to the targets' σ (1.0 = none; > 1 when the targets
            did not compose within the total).
    """

    noise_multipliers: dict[str, float]
    targets: dict[str, float]
    epsilons: dict[str, float]
    epsilon_total: float
    epsilon: float
    delta: float
    sample_rate: float
    steps: int
    accountant: str
    scale: float = 1.0

    def budget(self) -> Budget:
        """The budget to enforce during training: the total and every group's target."""
        return Budget(epsilon=self.epsilon, delta=self.delta, groups=dict(self.targets))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- validation


def validate_privacy_params(
    *, epsilon: float, delta: float, num_records: int | None = None
) -> None:
    """Check a total (ε, δ) budget.

    Raises:
        ConfigError: ``privacy.epsilon`` ≤ 0 or not finite, ``privacy.delta`` outside
            (0, 1), or ``privacy.delta`` > 1 / ``num_records`` (δ must be small against the
            number of records, or releasing one record in full would fit the guarantee).
    """
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"privacy.epsilon must be a finite number > 0, got {epsilon!r}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ConfigError(f"privacy.delta must be in (0, 1), got {delta!r}")
    if num_records is not None:
        if num_records < 1:
            raise ConfigError(f"number of records must be >= 1, got {num_records}")
        if delta > 1.0 / num_records:
            raise ConfigError(
                f"privacy.delta = {delta} exceeds 1 / number of records = 1/{num_records};"
                f" use privacy.delta <= {1.0 / num_records:.3g}"
            )


def validate_noise_multipliers(noise_multipliers: Mapping[str, float]) -> None:
    """Check explicitly configured σ_g with DP switched on.

    Raises:
        ConfigError: a σ_g is not a finite number > 0 (σ = 0 would release without noise).
    """
    for g, s in noise_multipliers.items():
        if not (isinstance(s, int | float) and math.isfinite(s) and s > 0):
            raise ConfigError(
                f"privacy.noise_multipliers.{g} must be a finite number > 0 while DP is on,"
                f" got {s!r}"
            )


def _check_plan(sample_rate: float, steps_per_round: int, rounds: int) -> None:
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    for name, v in (("steps per round", steps_per_round), ("federation.rounds", rounds)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")


# --------------------------------------------------------------------------- calibration


def _calibrate(
    eps_of_sigma: Callable[[float], float],
    make_event: Callable[[float], Any],
    *,
    epsilon: float,
    delta: float,
    accountant: str,
    tol: float,
    what: str,
) -> float:
    """Smallest σ (within ``tol``) with ε(σ) ≤ ``epsilon``, via dp-accounting's calibrator."""
    lo, hi = 1.0, 1.0
    if eps_of_sigma(hi) <= epsilon:
        # Less noise than σ = 1 suffices: walk down until the target is violated.
        while eps_of_sigma(lo) <= epsilon:
            if lo <= MIN_NOISE_MULTIPLIER:
                return MIN_NOISE_MULTIPLIER
            hi, lo = lo, max(lo / 2, MIN_NOISE_MULTIPLIER)
    else:
        while eps_of_sigma(hi) > epsilon:
            if hi >= MAX_NOISE_MULTIPLIER:
                raise ConfigError(
                    f"{what} = {epsilon:g} cannot be reached with a noise multiplier up to"
                    f" {MAX_NOISE_MULTIPLIER:g}; raise it or plan fewer steps/rounds"
                )
            lo, hi = hi, min(hi * 2, MAX_NOISE_MULTIPLIER)
    sigma = float(
        calibrate_dp_mechanism(
            lambda: make_accountant(accountant),
            make_event,
            epsilon,
            delta,
            ExplicitBracketInterval(lo, hi),
            tol=tol,
        )
    )
    # calibrate_dp_mechanism guarantees ε(σ) <= target; check through our own path anyway.
    while eps_of_sigma(sigma) > epsilon:
        sigma *= 1 + 1e-6
    return sigma


def calibrate_noise_multiplier(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = DEFAULT_ACCOUNTANT,
    tol: float = 1e-3,
) -> float:
    """Smallest σ (within ``tol``) whose ``steps`` Poisson-subsampled Gaussian steps at rate
    ``sample_rate`` spend at most ``epsilon`` at ``delta``.

    Used for one DP-SGD group, and for client-level DP (``steps`` = rounds, ``sample_rate``
    = client sampling rate).

    Raises:
        ConfigError: bad ε/δ, or ε unreachable with σ ≤ ``MAX_NOISE_MULTIPLIER``.
    """
    validate_privacy_params(epsilon=epsilon, delta=delta)
    _check_plan(sample_rate, steps, 1)

    def make_event(s: float) -> Any:
        return dpsgd_event(noise_multiplier=s, sample_rate=sample_rate, steps=steps)

    return _calibrate(
        lambda s: epsilon_for(make_event(s), delta=delta, accountant=accountant),
        make_event,
        epsilon=epsilon,
        delta=delta,
        accountant=accountant,
        tol=tol,
        what="privacy.epsilon",
    )


def allocate_budget(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    weights: Mapping[str, float] | None = None,
    targets: Mapping[str, float] | None = None,
    groups: Sequence[str] | None = None,
    accountant: str = DEFAULT_ACCOUNTANT,
    tol: float = 1e-3,
) -> Allocation:
    """Noise multipliers per parameter group for a total (ε, δ) budget.

    Args:
        epsilon: total ε (all groups composed), > 0.
        delta: δ in (0, 1).
        sample_rate: Poisson rate q of each DP-SGD step, in (0, 1].
        steps_per_round: DP-SGD steps a client runs per round, >= 1.
        rounds: planned rounds, >= 1 (a client is assumed to take part in every round).
        weights: ``group -> weight > 0``: share of the total privacy loss (see module doc).
        targets: ``group -> ε_g`` caps, each in (0, ``epsilon``]. Exactly one of
            ``weights`` / ``targets`` must be given.
        groups: if given, the groups the model has; ``weights``/``targets`` must name
            exactly these.
        accountant: registered accountant name.
        tol: absolute tolerance on σ of the calibration (the result never overshoots).

    Raises:
        ConfigError: naming the setting, for a bad budget, weights or targets.
    """
    validate_privacy_params(epsilon=epsilon, delta=delta)
    _check_plan(sample_rate, steps_per_round, rounds)
    try:
        make_accountant(accountant)
    except ValueError as err:
        raise ConfigError(f"privacy.accountant: {err}") from None
    if (weights is None) == (targets is None):
        raise ConfigError("set exactly one of privacy.weights and privacy.targets")
    spec: Mapping[str, float] = weights if weights is not None else targets  # type: ignore[assignment]
    kind = "weights" if weights is not None else "targets"
    if not spec:
        raise ConfigError(f"privacy.{kind} must name at least one parameter group")
    if "total" in spec:
        raise ConfigError(f"privacy.{kind}: 'total' is not a parameter group name")
    if groups is not None and set(groups) != set(spec):
        missing = sorted(set(groups) - set(spec))
        extra = sorted(set(spec) - set(groups))
        raise ConfigError(
            f"privacy.{kind} must name exactly the model's groups {sorted(groups)};"
            + (f" missing {missing}" if missing else "")
            + (f" unknown {extra} (a modality the data lacks?)" if extra else "")
        )
    for g, v in spec.items():
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ConfigError(f"privacy.{kind}.{g} must be a finite number > 0, got {v!r}")
        if kind == "targets" and v > epsilon:
            raise ConfigError(
                f"privacy.targets.{g} = {v:g} exceeds privacy.epsilon = {epsilon:g}:"
                " a group's ε can never exceed the total it composes into"
            )

    steps = int(steps_per_round) * int(rounds)
    names = list(spec)

    def eps(sigmas: float | Mapping[str, float]) -> float:
        event = dpsgd_event(noise_multiplier=sigmas, sample_rate=sample_rate, steps=steps)
        return epsilon_for(event, delta=delta, accountant=accountant)

    def make_event(s: float) -> Any:
        return dpsgd_event(noise_multiplier=s, sample_rate=sample_rate, steps=steps)

    def calibrate(target: float, what: str) -> float:
        return _calibrate(
            eps,
            make_event,
            epsilon=target,
            delta=delta,
            accountant=accountant,
            tol=tol,
            what=what,
        )

    if weights is not None:
        total_w = float(sum(weights.values()))
        base = {g: math.sqrt(total_w / float(weights[g])) for g in names}  # σ_g / σ_eff
        unit = effective_noise_multiplier(base.values())  # == 1 up to rounding
        base = {g: b / unit for g, b in base.items()}
    else:
        assert targets is not None
        base = {g: calibrate(float(targets[g]), f"privacy.targets.{g}") for g in names}

    # One common factor c on all σ_g so the composition fits the total.
    sigma_eff0 = effective_noise_multiplier(base.values())
    scale = 1.0
    if weights is not None or eps(base) > epsilon:
        scale = calibrate(epsilon, "privacy.epsilon") / sigma_eff0
        if targets is not None:
            scale = max(scale, 1.0)
    sigmas = {g: base[g] * scale for g in names}
    while eps(sigmas) > epsilon:  # rounding of σ_eff; never overshoot
        scale *= 1 + 1e-6
        sigmas = {g: base[g] * scale for g in names}

    epsilons = {g: eps(sigmas[g]) for g in names}
    if targets is not None:
        final_targets = {g: float(targets[g]) for g in names}
        for g in names:  # monotone in σ, so this holds by construction
            assert epsilons[g] <= final_targets[g], (g, epsilons[g], final_targets[g])
    else:
        final_targets = dict(epsilons)
    return Allocation(
        noise_multipliers=sigmas,
        targets=final_targets,
        epsilons=epsilons,
        epsilon_total=eps(sigmas),
        epsilon=float(epsilon),
        delta=float(delta),
        sample_rate=float(sample_rate),
        steps=steps,
        accountant=accountant,
        scale=scale,
    )
