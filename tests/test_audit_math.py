"""Membership-audit math against independent references: sklearn's ROC, hand-counted
TPR at an FPR, the softmax written out, the DP ceiling's closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from umbra.audit.attack_summary import attack_summary, ceiling_check
from umbra.audit.membership import (
    cross_entropy,
    dp_ceiling,
    lira_offline,
    logit_confidence,
    loss_scores,
)
from umbra.audit.roc import (
    auc_standard_error,
    clopper_pearson,
    downsample,
    roc_curve,
    tpr_at_fpr,
)


def _brute_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie), by counting every pair."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = rng.normal(0.4, 1.0, 300).round(1)  # rounding makes many ties
    neg = rng.normal(0.0, 1.0, 450).round(1)
    roc = roc_curve(pos, neg)
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s = np.r_[pos, neg]
    assert roc.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc.auc == pytest.approx(_brute_auc(pos, neg), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(roc.tpr, tpr, atol=1e-12)


def test_tpr_at_fpr_by_hand() -> None:
    # sorted: 0.95 m, 0.9 n, 0.8 m, 0.7 m, 0.6 n, 0.5 m, 0.4 n, 0.3 n, 0.2 n, 0.1 n
    members = np.array([0.95, 0.8, 0.7, 0.5])
    non = np.array([0.9, 0.6, 0.4, 0.3, 0.2, 0.1])
    roc = roc_curve(members, non)
    assert tpr_at_fpr(roc, 0.0) == 0.25  # threshold 0.95: one member, no non-member
    assert tpr_at_fpr(roc, 0.1) == 0.25  # 1/6 > 0.1: still only above 0.9
    assert tpr_at_fpr(roc, 1 / 6) == 0.75  # threshold 0.7: 3 members, 1 non-member
    assert tpr_at_fpr(roc, 0.34) == 1.0  # threshold 0.5: 4 members, 2 non-members
    assert roc.auc == pytest.approx((6 + 5 + 5 + 4) / 24)  # pairs won per member


def test_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError, match="at least one"):
        roc_curve(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        roc_curve(np.array([np.nan]), np.array([1.0]))


def test_downsample_keeps_real_points_and_ends() -> None:
    rng = np.random.default_rng(3)
    roc = roc_curve(rng.normal(0.5, 1, 2000), rng.normal(0, 1, 2000))
    fpr, tpr = downsample(roc, 100)
    assert len(fpr) <= 101 and (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    points = set(zip(roc.fpr.tolist(), roc.tpr.tolist(), strict=True))
    assert all(p in points for p in zip(fpr, tpr, strict=True))
    assert min(f for f in fpr if f > 0) <= 1e-3  # the low-FPR end is resolved


def test_clopper_pearson_and_auc_error() -> None:
    lo, hi = clopper_pearson(0, 1000)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-9)  # closed form
    lo, hi = clopper_pearson(12, 1000)
    assert lo < 0.012 < hi
    # Hanley-McNeil at AUC 0.5: var = (0.25 + (n1-1)(1/3-1/4) + (n0-1)(1/3-1/4)) / (n1 n0)
    n1, n0 = 400, 600
    want = math.sqrt((0.25 + (n1 - 1) / 12 + (n0 - 1) / 12) / (n1 * n0))
    assert auc_standard_error(0.5, n1, n0) == pytest.approx(want)


def test_loss_and_confidence_against_torch() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0, 5, (50, 7))
    y = rng.integers(0, 7, 50)
    ce = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(cross_entropy(z, y), ce.numpy(), rtol=1e-9)
    np.testing.assert_allclose(loss_scores(z, y), -ce.numpy(), rtol=1e-9)
    p = torch.softmax(torch.tensor(z), 1).numpy()[np.arange(50), y]
    np.testing.assert_allclose(logit_confidence(z, y), np.log(p / (1 - p)), rtol=1e-7, atol=1e-9)
    # stays finite where p_y rounds to 1
    big = np.array([[60.0, 0.0, 0.0]])
    assert logit_confidence(big, np.array([0]))[0] == pytest.approx(60 - math.log(2))


def test_lira_offline_is_the_gaussian_test() -> None:
    rng = np.random.default_rng(5)
    mu = rng.normal(0, 3, 400)  # per-record difficulty
    shadows = mu[None, :] + rng.normal(0, 1, (32, 400))  # OUT φ
    member = mu[:200] + 2.0  # trained on: φ higher than OUT models give
    non = mu[200:] + rng.normal(0, 1, 200)
    target = np.r_[member, non]
    s = lira_offline(target, shadows, variance="per-record")
    want = norm.logcdf((target - shadows.mean(0)) / shadows.std(0, ddof=1))
    np.testing.assert_allclose(s, want, rtol=1e-12)
    assert roc_curve(s[:200], s[200:]).auc > 0.9
    # the raw φ ranks by difficulty, not by membership: far weaker than the per-record test
    assert roc_curve(target[:200], target[200:]).auc < 0.75
    pooled = lira_offline(target, shadows[:4], variance="auto")  # few shadows: pooled σ
    sd = math.sqrt(shadows[:4].var(0, ddof=1).mean())
    np.testing.assert_allclose(pooled, norm.logcdf((target - shadows[:4].mean(0)) / sd))


def test_dp_ceiling() -> None:
    f = np.array([0.0, 0.001, 0.01, 0.5, 1.0])
    np.testing.assert_allclose(dp_ceiling(f, epsilon=0.0, delta=0.0), f)  # no test beats chance
    eps, delta = 1.0, 1e-5
    c = dp_ceiling(f, epsilon=eps, delta=delta)
    assert c[1] == pytest.approx(math.e * 0.001 + delta)
    assert c[3] == pytest.approx(1 - math.exp(-1) * (1 - delta - 0.5))  # the other side binds
    assert c[-1] == 1.0


def test_ceiling_check_flags_a_curve_above() -> None:
    rng = np.random.default_rng(6)
    strong = roc_curve(rng.normal(3, 1, 2000), rng.normal(0, 1, 2000))
    weak = roc_curve(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))
    above = ceiling_check(strong, epsilon=0.5, delta=1e-5)
    assert above["max_excess"] > 0.3 and not above["under_ceiling"]
    assert above["significant_violation"]
    loose = ceiling_check(weak, epsilon=8.0, delta=1e-5)
    # a weak curve may poke above δ at FPR 0 by one lucky member: never significantly
    assert loose["max_excess"] < 0.01 and not loose["significant_violation"]


def test_attack_summary_fields_and_subsets() -> None:
    rng = np.random.default_rng(7)
    m, n = rng.normal(1, 1, 500), rng.normal(0, 1, 400)
    sel_m, sel_n = np.arange(500) < 250, np.arange(400) < 100
    out = attack_summary(m, n, fprs=[0.01, 0.1], roc_points=50,
                         subsets={"a": (sel_m, sel_n), "empty": (sel_m, np.zeros(400, bool))},
                         dp=(2.0, 1e-5))  # fmt: skip
    assert out["auc"] == pytest.approx(
        roc_auc_score(np.r_[np.ones(500), np.zeros(400)], np.r_[m, n])
    )
    assert set(out["tpr_at_fpr"]) == {"0.01", "0.1"}
    lo, hi = out["tpr_interval_95"]["0.1"]
    assert lo <= out["tpr_at_fpr"]["0.1"] <= hi
    assert set(out["subsets"]) == {"a"}  # a subset without non-members is left out
    sub = out["subsets"]["a"]
    assert (sub["members"], sub["non_members"]) == (250, 100)
    assert sub["auc"] == pytest.approx(_brute_auc(m[sel_m], n[sel_n]))
    assert "dp_ceiling_check" in out
