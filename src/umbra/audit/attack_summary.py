"""One attack's figures for results.json: AUC (with its standard error), TPR at chosen
FPRs (with exact binomial intervals), a downsampled ROC, the same per modality subset,
and, for a DP run, how the curve compares with the (ε, δ) ceiling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import beta

from umbra.audit.membership import dp_ceiling
from umbra.audit.roc import (
    Roc,
    auc_standard_error,
    clopper_pearson,
    downsample,
    roc_curve,
    tpr_at_fpr,
)

__all__ = ["attack_summary", "ceiling_check", "fpr_key"]


def fpr_key(fpr: float) -> str:
    """The results.json key of an FPR level: ``0.001`` -> ``"0.001"``."""
    return f"{fpr:g}"


def _cp_bounds(k: np.ndarray, n: int, *, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Clopper-Pearson bounds of ``k`` successes in ``n`` (see clopper_pearson)."""
    a = 1.0 - level
    with np.errstate(invalid="ignore"):
        lo = np.where(k == 0, 0.0, beta.ppf(a / 2, k, n - k + 1))
        hi = np.where(k == n, 1.0, beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def ceiling_check(roc: Roc, *, epsilon: float, delta: float, level: float = 0.95) -> dict[str, Any]:
    """Does the measured curve stay under the DP ceiling?

    ``max_excess``: the largest ``TPR - ceiling(FPR)`` over the curve's points (> 0: a
    point lies above it). With finitely many records a point may lie above by chance, so
    ``significant`` says whether some point lies above even when its TPR is taken at the
    lower and its FPR at the upper end of their exact ``level`` intervals (per point, not
    corrected for the many points: conservative towards reporting a violation).
    """
    excess = roc.tpr - dp_ceiling(roc.fpr, epsilon=epsilon, delta=delta)
    tp = np.rint(roc.tpr * roc.n_members)
    fp = np.rint(roc.fpr * roc.n_non_members)
    tpr_lo, _ = _cp_bounds(tp, roc.n_members, level=level)
    _, fpr_hi = _cp_bounds(fp, roc.n_non_members, level=level)
    sure = tpr_lo - dp_ceiling(fpr_hi, epsilon=epsilon, delta=delta)
    return {
        "max_excess": float(excess.max()),
        "under_ceiling": bool(excess.max() <= 1e-12),
        "significant_violation": bool(sure.max() > 0),
    }


def attack_summary(
    members: np.ndarray,
    non_members: np.ndarray,
    *,
    fprs: Sequence[float],
    roc_points: int,
    subsets: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    dp: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The figures of one attack from its scores (higher = member).

    ``subsets``: name -> (member selector, non-member selector) boolean arrays; a subset
    with no record on a side is left out. ``dp``: the run's (ε, δ) for the ceiling check.
    """
    roc = roc_curve(members, non_members)
    auc = roc.auc
    tprs = {fpr_key(f): tpr_at_fpr(roc, f) for f in fprs}
    fpr_s, tpr_s = downsample(roc, roc_points)
    out: dict[str, Any] = {
        "auc": auc,
        "auc_standard_error": auc_standard_error(auc, roc.n_members, roc.n_non_members),
        "tpr_at_fpr": tprs,
        "tpr_interval_95": {
            k: list(clopper_pearson(round(v * roc.n_members), roc.n_members))
            for k, v in tprs.items()
        },
        "roc": {"fpr": fpr_s, "tpr": tpr_s},
    }
    if dp is not None:
        out["dp_ceiling_check"] = ceiling_check(roc, epsilon=dp[0], delta=dp[1])
    parts: dict[str, Any] = {}
    for name, (sel_m, sel_n) in (subsets or {}).items():
        if sel_m.any() and sel_n.any():
            sub = roc_curve(np.asarray(members)[sel_m], np.asarray(non_members)[sel_n])
            parts[name] = {
                "auc": sub.auc,
                "auc_standard_error": auc_standard_error(sub.auc, sub.n_members, sub.n_non_members),
                "members": sub.n_members,
                "non_members": sub.n_non_members,
            }
    if parts:
        out["subsets"] = parts
    return out
