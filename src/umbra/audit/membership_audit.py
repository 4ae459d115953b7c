"""The membership-inference audit of a trained model: who holds the final model tries to
tell the run's training records (members) from records it never saw (non-members), with
Yeom et al.'s loss threshold and Carlini et al.'s offline LiRA (docs/audit.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from umbra.audit.attack_summary import attack_summary, fpr_key
from umbra.audit.membership import (
    MIN_PER_RECORD_SHADOWS,
    dp_ceiling,
    lira_offline,
    logit_confidence,
    loss_scores,
)
from umbra.audit.query import model_logits
from umbra.audit.records import audit_records
from umbra.audit.shadows import shadow_logits
from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.federation.train import TrainSettings
from umbra.models import ModelSpec, MultimodalNet
from umbra.run.prepare import PreparedData

__all__ = ["ATTACKER", "membership_audit", "model_holder_dp"]

#: Who the attacker is, in results.json and the report.
ATTACKER = (
    "whoever holds the final model (its weights, queried for the logits of chosen records) "
    "and records from the same population, but not the training data"
)

#: Second word of the audit's seed sequence [run.seed, _AUDIT_STREAM]: apart from the
#: run's own streams.
_AUDIT_STREAM = 0xA0D17


def model_holder_dp(privacy: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(ε, δ) that holds against whoever holds the model, from results.json's privacy
    object; None without DP (or when no ε holds against the model holder)."""
    if not isinstance(privacy, Mapping) or privacy.get("mode") in (None, "none"):
        return None
    holder = (privacy.get("observers") or {}).get("model_holder")
    eps = holder.get("epsilon") if isinstance(holder, Mapping) else privacy.get("epsilon")
    delta = privacy.get("delta")
    if not isinstance(eps, Mapping) or "total" not in eps or not isinstance(delta, int | float):
        return None
    return float(eps["total"]), float(delta)


def _concat(a: MultimodalData, b: MultimodalData) -> MultimodalData:
    return MultimodalData(
        {m: np.concatenate([a.features[m], b.features[m]]) for m in a.modalities},
        np.concatenate([a.mask, b.mask]),
        np.concatenate([a.labels, b.labels]),
        a.modalities,
        a.class_names,
    )


def membership_audit(
    model: MultimodalNet,
    model_spec: ModelSpec,
    prep: PreparedData,
    cfg: Config,
    settings: TrainSettings,
    *,
    privacy: Mapping[str, Any] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both attacks on ``model`` (trained on ``prep`` as ``cfg`` says) and return
    results.json's ``audit.membership`` object (docs/audit.md lists its fields).

    ``settings``: the run's local training settings, which the shadows reuse with
    ``audit.shadow_epochs``. ``privacy``: results.json's privacy object, for the DP ceiling.
    """
    say = on_status or (lambda s: None)
    t0 = time.perf_counter()
    a = cfg.audit
    # Which records are audited and how the shadows are drawn is not privacy-relevant
    # randomness (nothing here is released by the run): run.seed makes the audit repeatable.
    rng = np.random.default_rng([cfg.run.seed, _AUDIT_STREAM])
    recs = audit_records(prep, cfg, a, rng)
    queries = _concat(recs.members, recs.non_members)
    n_m = len(recs.members)
    labels = queries.labels
    target = model_logits(model, queries)  # (N, C)
    size = max(2, round(a.shadow_fraction * len(recs.shadow_pool)))
    say(
        f"membership audit: {n_m} members, {len(recs.non_members)} non-members; training "
        f"{a.shadows} shadow models on {min(size, len(recs.shadow_pool))} records each"
    )
    shadow = shadow_logits(
        model_spec,
        recs.shadow_pool,
        queries,
        settings=settings,
        shadows=a.shadows,
        fraction=a.shadow_fraction,
        epochs=a.shadow_epochs,
        rng=rng,
        on_shadow=lambda s: say(f"shadow model {s}/{a.shadows} trained"),
    )  # (S, N, C)
    phi_shadow = np.stack([logit_confidence(z, labels) for z in shadow])  # (S, N)
    scores = {
        "loss": loss_scores(target, labels),
        "lira": lira_offline(
            logit_confidence(target, labels), phi_shadow, variance=a.lira_variance
        ),
    }
    dp = model_holder_dp(privacy)
    mask = queries.mask
    subsets = {}
    if len(queries.modalities) > 1:
        for j, m in enumerate(queries.modalities):
            for name, sel in ((f"with {m}", mask[:, j]), (f"without {m}", ~mask[:, j])):
                subsets[name] = (sel[:n_m], sel[n_m:])
    attacks = {
        name: attack_summary(
            s[:n_m], s[n_m:], fprs=a.fpr, roc_points=a.roc_points, subsets=subsets, dp=dp
        )
        for name, s in scores.items()
    }
    per_record = a.lira_variance == "per-record" or (
        a.lira_variance == "auto" and a.shadows >= MIN_PER_RECORD_SHADOWS
    )
    return {
        "attacker": ATTACKER,
        "members": {"count": n_m, "origin": recs.origin["members"]},
        "non_members": {"count": len(recs.non_members), "origin": recs.origin["non_members"]},
        "shadows": {
            "count": a.shadows,
            "records_each": min(size, len(recs.shadow_pool)),
            "epochs": a.shadow_epochs,
            "origin": recs.origin["shadow_pool"],
            "training": "the run's model and features, trained centrally with plain SGD "
            f"(lr {settings.lr:g}, batch {settings.batch_size}, momentum {settings.momentum:g}), "
            "no DP",
            "lira_variance": "per record" if per_record and a.shadows >= 2 else "pooled",
        },
        "attacks": attacks,
        "dp": None
        if dp is None
        else {
            "epsilon": dp[0],
            "delta": dp[1],
            "observer": "model_holder",
            "ceiling_at_fpr": {
                fpr_key(f): float(dp_ceiling(f, epsilon=dp[0], delta=dp[1])) for f in a.fpr
            },
        },
        "fpr_resolution": 1.0 / len(recs.non_members),
        "seconds": time.perf_counter() - t0,
    }
