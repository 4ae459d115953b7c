"""How much noise each group of the generator's statistics gets for a total (ε, δ).

The statistics are released once, together (one Gaussian per group on the same records,
sample rate 1, one step), so they compose as one Gaussian with ``σ_eff⁻² = Σ_g σ_g⁻²``
(:func:`umbra.privacy.accounting.effective_noise_multiplier`). σ_eff is calibrated to the
total ε by dp-accounting (:func:`umbra.privacy.budget.calibrate_noise_multiplier`), and
shared out by weight in Gaussian-DP terms, ``σ_g⁻² = (w_g / Σ w) σ_eff⁻²``, as the
per-modality budgets of DP-SGD share theirs (:mod:`umbra.privacy.budget`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from umbra.privacy.accounting import DEFAULT_ACCOUNTANT
from umbra.privacy.budget import calibrate_noise_multiplier

__all__ = ["COUNT_WEIGHT", "PATTERN_WEIGHT", "plan_noise"]

#: Weight of each kind of group: the counts (per class: records and Σρ) and the presence
#: patterns are histograms whose cells hold hundreds of records: they need little of the
#: budget; the class means and the covariance share the rest (``cov_weight``).
COUNT_WEIGHT = 0.1
PATTERN_WEIGHT = 0.1


def plan_noise(
    *,
    epsilon: float,
    delta: float,
    groups: Sequence[str],
    cov_weight: float = 1.0,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> dict[str, float]:
    """σ_g of every group (``<m>.mean`` weight 1, ``<m>.cov`` ``cov_weight``, ``<m>.count``
    :data:`COUNT_WEIGHT`, ``pattern`` :data:`PATTERN_WEIGHT`) whose one joint release spends at most ``epsilon`` at ``delta``.

    Raises:
        ConfigError: ε or δ out of range (from the calibration).
        ValueError: ``cov_weight`` not > 0, or a group of another kind.
    """
    if not (math.isfinite(cov_weight) and cov_weight > 0):
        raise ValueError(f"cov_weight must be finite and > 0, got {cov_weight}")
    weights: dict[str, float] = {}
    for g in groups:
        kind = g.rsplit(".", 1)[-1]
        table = {"mean": 1.0, "count": COUNT_WEIGHT, "cov": cov_weight, "pattern": PATTERN_WEIGHT}
        if kind not in table:
            raise ValueError(f"unknown statistics group {g!r}")
        weights[g] = table[kind]
    sigma = calibrate_noise_multiplier(
        epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )
    total = sum(weights.values())
    return {g: sigma * math.sqrt(total / w) for g, w in weights.items()}
