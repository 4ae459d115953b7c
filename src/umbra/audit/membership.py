"""Membership-inference scores from a model's logits: pure numpy, no model and no I/O.

* Loss threshold (Yeom et al., CSF 2018, https://arxiv.org/abs/1709.01604): the lower a
  record's loss under the model, the more likely it was trained on; score = -loss.
* Offline LiRA (Carlini et al., S&P 2022, https://arxiv.org/abs/2112.03570, §VI-C): the
  logit-scaled confidence φ = log(p_y / (1 - p_y)) of a record under the model is compared
  with a Gaussian fitted to φ under shadow models that did NOT train on it (OUT models);
  score = Φ((φ - μ_out) / σ_out), the one-sided test "φ is larger than OUT models give".

Higher score = "member" throughout (see :mod:`umbra.audit.roc`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

__all__ = [
    "MIN_PER_RECORD_SHADOWS",
    "cross_entropy",
    "dp_ceiling",
    "lira_offline",
    "logit_confidence",
    "loss_scores",
]

#: With fewer OUT shadows than this, ``lira_variance = "auto"`` pools the variance over
#: records: a per-record variance from a handful of draws is too noisy (Carlini et al.
#: use a global variance below 64 shadows; 16 is where ours stopped hurting).
MIN_PER_RECORD_SHADOWS = 16


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {z.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]})")
    return z, y


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-record cross-entropy ``-log softmax(z)_y``, (N,)."""
    z, y = _check(logits, labels)
    return logsumexp(z, axis=1) - z[np.arange(len(y)), y]


def loss_scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Yeom et al.'s loss-threshold score: ``-cross_entropy``, (N,)."""
    return -cross_entropy(logits, labels)


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log(p_y / (1 - p_y)) = z_y - logsumexp_{j≠y} z_j, computed without forming p
    (so it stays finite when p_y rounds to 1), (N,)."""
    z, y = _check(logits, labels)
    rows = np.arange(len(y))
    others = z.copy()
    others[rows, y] = -np.inf
    return z[rows, y] - logsumexp(others, axis=1)


def lira_offline(
    target: np.ndarray,
    shadows: np.ndarray,
    *,
    variance: Literal["auto", "per-record", "global"] = "auto",
) -> np.ndarray:
    """Offline LiRA scores.

    Args:
        target: φ of each record under the attacked model, (N,).
        shadows: φ of the same records under OUT shadow models, (S, N): no shadow trained
            on any of the N records.
        variance: σ_out per record, one pooled over records, or ``auto`` (per record from
            :data:`MIN_PER_RECORD_SHADOWS` shadows on).

    Returns:
        ``log Φ((φ - μ_out) / σ_out)`` per record, (N,), <= 0: the log of the one-sided
        test's statistic (how unusually high the target's φ is for a model that did not see
        the record), logged so that records far outside the OUT fit keep their order. With
        one shadow, σ_out is the spread of φ - μ_out over the records.
    """
    phi = np.asarray(target, dtype=np.float64)
    out = np.asarray(shadows, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != phi.shape[0]:
        raise ValueError(f"shadows must be (S, {phi.shape[0]}), got {out.shape}")
    mu = out.mean(axis=0)
    per_record = variance == "per-record" or (
        variance == "auto" and out.shape[0] >= MIN_PER_RECORD_SHADOWS
    )
    if per_record and out.shape[0] >= 2:
        sd = out.std(axis=0, ddof=1)
    elif out.shape[0] >= 2:
        sd = np.full_like(mu, np.sqrt(out.var(axis=0, ddof=1).mean()))
    else:  # one shadow: the spread of φ - μ is all there is
        sd = np.full_like(mu, (phi - mu).std())
    sd = np.maximum(sd, 1e-6)
    # norm.logcdf keeps the ranking where Φ rounds to 0 or 1 (far outside the OUT fit)
    return np.asarray(norm.logcdf((phi - mu) / sd))


def dp_ceiling(fpr: np.ndarray | float, *, epsilon: float, delta: float) -> np.ndarray:
    """The highest TPR any membership test can reach at ``fpr`` against an (ε, δ)-DP model:
    ``min(1, e^ε·FPR + δ, 1 - e^-ε·(1 - δ - FPR))`` (Kairouz, Oh & Viswanath 2015,
    https://arxiv.org/abs/1311.0776; the first bound is the one usually quoted, the second
    is the same inequality applied to the complementary test)."""
    f = np.asarray(fpr, dtype=np.float64)
    if epsilon < 0 or not 0 <= delta < 1:
        raise ValueError(f"need ε >= 0 and δ in [0, 1), got ε={epsilon}, δ={delta}")
    a = np.exp(epsilon) * f + delta
    b = 1.0 - np.exp(-epsilon) * (1.0 - delta - f)
    return np.minimum(1.0, np.minimum(a, b))
