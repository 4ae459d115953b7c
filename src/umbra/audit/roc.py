"""ROC curves of a membership score: pure numpy, no model and no I/O.

Convention: a higher score means "member". A threshold ``t`` calls every record with a
score ``>= t`` a member; the curve runs over every distinct score, so ties move together
(the area then counts a member-non-member tie as one half, as the Mann-Whitney U does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

__all__ = [
    "Roc",
    "auc_standard_error",
    "clopper_pearson",
    "downsample",
    "roc_curve",
    "tpr_at_fpr",
]


@dataclass(frozen=True)
class Roc:
    """An ROC curve from (0, 0) to (1, 1): ``fpr[k]``, ``tpr[k]`` at threshold ``thresholds[k]``
    (``+inf`` first: nobody is called a member). ``n_members``, ``n_non_members``: the
    records behind it (the resolution of the rates is 1/n)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_non_members: int

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoids; equals the Mann-Whitney U / (n1 n0), ties 1/2)."""
        return float(np.trapezoid(self.tpr, self.fpr))


def roc_curve(members: np.ndarray, non_members: np.ndarray) -> Roc:
    """The ROC of ``members`` (positives) against ``non_members`` (negatives) scores.

    Raises ValueError on an empty side or a non-finite score (a NaN would sort anywhere).
    """
    pos = np.asarray(members, dtype=np.float64).ravel()
    neg = np.asarray(non_members, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("an ROC needs at least one member and one non-member score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("membership scores must be finite")
    scores = np.concatenate([pos, neg])
    is_member = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # the last index of each run of equal scores: one point per distinct threshold
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    tp = np.cumsum(is_member)[last]
    fp = (last + 1) - tp
    return Roc(
        fpr=np.r_[0.0, fp / neg.size],
        tpr=np.r_[0.0, tp / pos.size],
        thresholds=np.r_[np.inf, scores[last]],
        n_members=int(pos.size),
        n_non_members=int(neg.size),
    )


def tpr_at_fpr(roc: Roc, fpr: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``fpr`` (Carlini et al.'s
    convention: the attacker picks the threshold on the non-members)."""
    ok = roc.fpr <= fpr + 1e-12
    return float(roc.tpr[ok].max())


def clopper_pearson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval of ``k`` successes in ``n`` trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def auc_standard_error(auc: float, n_members: int, n_non_members: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from ``n_members`` positives and
    ``n_non_members`` negatives (https://doi.org/10.1148/radiology.143.1.7063747)."""
    a = min(max(auc, 1e-12), 1 - 1e-12)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_members - 1) * (q1 - a * a) + (n_non_members - 1) * (q2 - a * a)) / (
        n_members * n_non_members
    )
    return math.sqrt(max(var, 0.0))


def downsample(roc: Roc, points: int) -> tuple[list[float], list[float]]:
    """At most about ``points`` points of the curve for plots and results.json: half spread
    evenly in FPR, half log-spaced at low FPR (where membership attacks are judged), always
    keeping the ends; each kept point is a real point of the curve."""
    n = roc.fpr.size
    if n <= points:
        return roc.fpr.tolist(), roc.tpr.tolist()
    half = max(2, points // 2)
    lin = np.linspace(0.0, 1.0, half)
    low = np.logspace(math.log10(max(1e-5, 1.0 / max(1, roc.n_non_members))), 0.0, half)
    # for each target FPR, the last curve point at or below it (the best TPR there)
    idx = np.searchsorted(roc.fpr, np.r_[lin, low], side="right") - 1
    keep = np.unique(np.r_[0, np.clip(idx, 0, n - 1), n - 1])
    return roc.fpr[keep].tolist(), roc.tpr[keep].tolist()
