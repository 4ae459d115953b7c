"""The distributed discrete Gaussian: DP noise that survives the integer rounding of SecAgg+.

Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", ICML 2021 (https://arxiv.org/abs/2102.06387). Secure
aggregation sums integers modulo 2^32, so float updates are rounded before masking. Adding
continuous noise *before* that rounding (and before a clip to the ring's range) leaves the
released integer sum with noise that is not the analysed Gaussian and a rounding that
depends on the data. Instead every client

1. scales its clipped, noiseless vector to integer units (``γ`` units per float unit),
2. rounds it to integers with *randomised* rounding from the privacy stream (unbiased:
   ``E[R(x)] = x``), and
3. adds a discrete Gaussian share ``N_Z(0, σ²/t)`` per coordinate,

so the unmasked sum of ``k ≥ t`` contributions carries the sum of ``k`` shares, within
``τ`` (below) of ``N_Z(0, kσ²/t) ⊇ N_Z(0, σ²)``.

Sensitivity in integer units (this module's pure functions):

* **A record inside a client's sum** (example-level DP-SGD, :func:`rounding_sensitivity`):
  the client rounds the *sum* of its clipped per-record gradients, so adding a record moves
  the rounded vector by ``R_u(v + γg) - R_u(v)`` with ``‖γg‖₂ ≤ γC``. Coupling the rounding
  randomness ``u`` of both worlds, each coordinate moves by less than ``|γ g_j| + 1`` and only
  where ``g_j ≠ 0``, so ``Δ₂ ≤ γC + √d``; the released distribution is a mixture over ``u``
  of shifted discrete Gaussians, each pair within the Gaussian mechanism of sensitivity
  ``Δ₂``, and hockey-stick (and Rényi, via ``exp((α-1)D_α)``) divergences are jointly
  convex, so the mixture is too. No data-dependent resampling is used here (it would break
  the coupling).
* **A whole client's vector** (client-level DP, :func:`conditional_rounding_bound`): the
  rounded vector itself is the contribution. Conditional randomised rounding (Kairouz et
  al., §4 and Lemma 4.1's bound) resamples the rounding until
  ``‖R(x)‖₂² ≤ ‖x‖₂² + d/4 + √(2 ln(1/β)) (‖x‖₂ + √d/2)``, which a single draw meets with
  probability ≥ 1 - β; the bound is then the sensitivity.

Accounting: with ``σ_int = σ · Δ₂`` the noise multiplier of the integer release is
``σ_int / Δ₂ = σ``, the multiplier the budget allocated, so the dp-accounting events of
:mod:`umbra.privacy.accounting` hold unchanged for the inflated sensitivity. The gap
between a sum of ``t`` discrete Gaussians and one discrete Gaussian is bounded by their
Theorem's ``τ = 10 Σ_{k=1}^{t-1} exp(-2π² s² k/(k+1))`` per coordinate (``s²`` the share
variance); :func:`plan_group` refuses any plan with ``τ > 1e-12``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from umbra.errors import UmbraError
from umbra.privacy.randomness import SecureRandom

__all__ = [
    "TAU_MAX",
    "DDGError",
    "DDGGroup",
    "IntegerNoise",
    "conditional_round",
    "conditional_rounding_bound",
    "ddg_tau",
    "plan_group",
    "plan_integer_noise",
    "randomized_round",
    "range_divisor",
    "rounding_sensitivity",
]

#: Largest per-coordinate τ (distance of a sum of discrete Gaussians from one) accepted.
TAU_MAX = 1e-12
#: β of conditional rounding: probability a single rounding draw exceeds the norm bound.
ROUNDING_BETA = math.exp(-0.5)


class DDGError(UmbraError):
    """A DP round whose integer release cannot carry the analysed noise (plan or range)."""


def randomized_round(v: np.ndarray, rng: SecureRandom) -> np.ndarray:
    """Unbiased randomised rounding ``⌊v + u⌋``, ``u ~ U[0, 1)`` from the privacy stream.

    Returns float64 integral values (``E = v``; each moves by less than 1).
    """
    x = np.asarray(v, dtype=np.float64)
    return np.floor(x + rng.uniform(x.shape))


def conditional_rounding_bound(norm: float, dim: int, *, beta: float = ROUNDING_BETA) -> float:
    """Kairouz et al. (2021) §4: the L2 bound conditional rounding enforces on ``R(x)``.

    ``sqrt(‖x‖² + d/4 + √(2 ln(1/β)) (‖x‖ + √d/2))`` (also at most ``‖x‖ + √d``).
    """
    if not (math.isfinite(norm) and norm >= 0):
        raise ValueError(f"norm must be a finite number >= 0, got {norm}")
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    root_d = math.sqrt(dim)
    sq = norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + root_d / 2)
    return min(math.sqrt(sq), norm + root_d)


def conditional_round(
    v: np.ndarray,
    *,
    center: float,
    bound: float,
    rng: SecureRandom,
    max_tries: int = 100,
) -> np.ndarray:
    """Randomised rounding of ``v``, redrawn until ``‖R(v) - center‖₂ ≤ bound``.

    ``center`` is the encoding offset (the rounded vector is ``center + integers``-valued
    around the value it encodes). Raises :class:`DDGError` after ``max_tries`` draws.
    """
    for _ in range(max_tries):
        r = randomized_round(v, rng)
        if float(np.linalg.norm(r - center)) <= bound:
            return r
    raw = float(np.linalg.norm(np.asarray(v, dtype=np.float64) - center))
    raise DDGError(
        f"conditional rounding exceeded its norm bound {bound:.4g} {max_tries} times (the "
        f"unrounded vector's norm is {raw:.4g} over {np.size(v)} coordinates)"
    )


def rounding_sensitivity(l2_sensitivity: float, dim: int) -> float:
    """``Δ₂ = γC + √d``: a record's L2 sensitivity (integer units) after randomised
    rounding of a sum it is part of (module docstring: coupling argument)."""
    if not (math.isfinite(l2_sensitivity) and l2_sensitivity > 0):
        raise ValueError(f"l2_sensitivity must be a finite number > 0, got {l2_sensitivity}")
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    return l2_sensitivity + math.sqrt(dim)


def ddg_tau(share_sigma: float, shares: int) -> float:
    """``τ = 10 Σ_{k=1}^{t-1} exp(-2π² s² k/(k+1))`` for ``t`` shares of std ``s``."""
    if shares < 1:
        raise ValueError(f"shares must be >= 1, got {shares}")
    if share_sigma <= 0:
        return math.inf if shares > 1 else 0.0
    c = 2 * math.pi**2 * share_sigma**2
    return 10.0 * sum(math.exp(-c * k / (k + 1)) for k in range(1, shares))


@dataclass(frozen=True)
class DDGGroup:
    """One parameter group's integer noise plan.

    Attributes:
        noise_multiplier: σ of the accounting (the budget's).
        sensitivity: Δ₂ in integer units.
        shares: t, the fewest contributions an unmaskable sum holds.
        share_sigma: std of each client's discrete Gaussian share, ``σ Δ₂ / √t``.
        tau: the per-coordinate τ of the sum of ``t`` shares.
    """

    noise_multiplier: float
    sensitivity: float
    shares: int
    share_sigma: float
    tau: float

    @property
    def total_sigma(self) -> float:
        """std of the sum of ``t`` shares: ``σ Δ₂``."""
        return self.share_sigma * math.sqrt(self.shares)


def plan_group(
    *, noise_multiplier: float, sensitivity: float, shares: int, tau_max: float = TAU_MAX
) -> DDGGroup:
    """Share size for one group: ``σ_int = σ Δ₂`` split into ``t`` discrete Gaussian shares.

    Raises:
        DDGError: τ exceeds ``tau_max`` (shares too narrow for the sum of discrete Gaussians
            to be one), naming the group's numbers.
        ValueError: σ ≤ 0, Δ₂ ≤ 0 or t < 1.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier}")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity}")
    if isinstance(shares, bool) or int(shares) != shares or shares < 1:
        raise ValueError(f"shares must be an integer >= 1, got {shares!r}")
    share_sigma = noise_multiplier * sensitivity / math.sqrt(shares)
    tau = ddg_tau(share_sigma, int(shares))
    if tau > tau_max:
        raise DDGError(
            f"discrete Gaussian shares of std {share_sigma:.3g} integer units are too narrow:"
            f" τ = {tau:.3g} > {tau_max:g} per coordinate (raise the quantisation resolution)"
        )
    return DDGGroup(float(noise_multiplier), float(sensitivity), int(shares), share_sigma, tau)


def range_divisor(*, value_bound: float, share_std: float, clip: float) -> int:
    """ρ: the smallest power of two with ``(value_bound + 12 share_std) / ρ ≤ clip``.

    A DP contribution travels divided by ρ so that its values and its noise share stay well
    inside the quantiser's ``±clip`` (no value clipped, no level out of the ring's
    per-client range); the resolution left, ``scale / ρ`` integer units per float unit, is
    what the plan's sensitivity and shares are computed in.
    """
    for name, v in (("value_bound", value_bound), ("share_std", share_std)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip}")
    need = (value_bound + 12 * share_std) / clip
    return 1 if need <= 1 else 1 << math.ceil(math.log2(need))


@dataclass(frozen=True)
class IntegerNoise:
    """Which arrays of a contribution get integer-domain DP noise, and how much.

    Attributes:
        groups: array name -> parameter group (arrays absent here are encoded as usual).
        share_sigma: group -> std (integer units) of one client's discrete Gaussian share.
        norm_bound: group -> L2 bound of conditional rounding (client-level DP), or None:
            unconditional randomised rounding (example-level DP, :func:`rounding_sensitivity`).
        plans: group -> the :class:`DDGGroup` behind the numbers.
    """

    groups: Mapping[str, str]
    share_sigma: Mapping[str, float]
    norm_bound: Mapping[str, float] | None
    plans: Mapping[str, DDGGroup]


def plan_integer_noise(
    sizes: Mapping[str, int],
    *,
    key_group: Callable[[str], str],
    noise_multipliers: Mapping[str, float],
    sensitivities: Mapping[str, float],
    shares: int,
    scale: float,
    half_range: float,
    client_level: bool,
) -> IntegerNoise:
    """The distributed discrete Gaussian plan of one round (same on clients and server).

    Args:
        sizes: array name -> number of coordinates (the DP-released arrays only).
        key_group: array name -> its parameter group (its own clip and σ).
        noise_multipliers: group -> σ_g of the accounting.
        sensitivities: group -> L2 sensitivity of the float contribution (float units): a
            record's ``lr·C_g / B̄`` (example-level) or the client clip ``C`` (client-level).
        shares: t.
        scale: integer units per float unit of the quantiser.
        half_range: the largest distance from its centre a client's level may take.
        client_level: conditional rounding (the client's whole vector is the unit).

    Raises:
        DDGError: τ not negligible, or a share's tail (12 std) beyond the range.
    """
    groups = {k: key_group(k) for k in sizes}
    missing = sorted(set(groups.values()) - (set(sensitivities) & set(noise_multipliers)))
    if missing:
        raise ValueError(f"arrays of the groups {missing} have no noise plan")
    dims: dict[str, int] = {}
    for k, n in sizes.items():
        dims[groups[k]] = dims.get(groups[k], 0) + int(n)
    plans: dict[str, DDGGroup] = {}
    bounds: dict[str, float] = {}
    for g, sens in sensitivities.items():
        if g not in dims:
            continue  # a group with no arrays releases nothing
        c_int = float(sens) * float(scale)
        if client_level:
            bounds[g] = conditional_rounding_bound(c_int, dims[g])
            delta2 = bounds[g]
        else:
            delta2 = rounding_sensitivity(c_int, dims[g])
        plan = plan_group(noise_multiplier=float(noise_multipliers[g]), sensitivity=delta2,
                          shares=shares)  # fmt: skip
        if 12 * plan.share_sigma > half_range:
            raise DDGError(
                f"group {g!r}: discrete Gaussian shares of std {plan.share_sigma:.3g} do not fit"
                f" the ring's per-client range ±{half_range:.3g} (raise secure.clip_range)"
            )
        plans[g] = plan
    return IntegerNoise(
        groups=groups,
        share_sigma={g: p.share_sigma for g, p in plans.items()},
        norm_bound=bounds if client_level else None,
        plans=plans,
    )
