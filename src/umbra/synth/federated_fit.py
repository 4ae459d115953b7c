"""Fitting the generator across a run's organisations: each releases its noised
statistics once (its own full noise, or a share of one noise inside a secure sum:
:mod:`umbra.synth.secure_release`), the server sums them and fits the Gaussians.

The ledger entry of every organisation's release (one step, sample rate 1, one group per
statistic) is written and fsynced before the organisation computes anything that leaves
it (write-ahead, :class:`~umbra.privacy.ledger.PrivacyLedger`), so ε replayed from
ledger.jsonl covers every release that may have happened. The organisations run in this
process, one after the other; each draws its noise from its own privacy stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from umbra.data.dataset import MultimodalData
from umbra.privacy.ledger import PrivacyLedger, Release
from umbra.privacy.randomness import SecureRandom
from umbra.synth.feature_map import FeatureMap
from umbra.synth.generator import GaussianGenerator
from umbra.synth.release import noised_statistics
from umbra.synth.secure_release import GroupNoise, SecureNoise
from umbra.synth.statistics import (
    CLIP_NORMS,
    SufficientStatistics,
    clipped_statistics,
    statistics_groups,
)

__all__ = ["SYNTH_ROUND", "fit_federated"]

#: The ledger's round of the generator's releases: one release, after no training round.
SYNTH_ROUND = 0


def fit_federated(
    train: MultimodalData,
    parts: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    maps: Mapping[str, FeatureMap],
    *,
    noise_multipliers: Mapping[str, float],
    ledger: PrivacyLedger,
    rank: int,
    secure: SecureNoise | None = None,
    make_rng: Callable[[], SecureRandom] = SecureRandom,
) -> GaussianGenerator:
    """The generator of ``train``'s records split as ``parts`` (organisation i holds
    ``train.subset(parts[i])`` with presence ``masks[i]``).

    Args:
        noise_multipliers: σ_g of every group (:func:`umbra.synth.noise_plan.plan_noise`).
        ledger: where each organisation's release is recorded before it happens.
        secure: the organisations' secure sum (``synth.noise = "distributed"``), or None:
            each adds the full noise to its own statistics.
        make_rng: each organisation's privacy stream (tests pass a seeded one).
    """
    total: SufficientStatistics | None = None
    groups = statistics_groups(maps)
    noise = {g: GroupNoise(noise_multipliers[g], CLIP_NORMS[g.rsplit(".", 1)[-1]]) for g in groups}
    channel = secure.round(SYNTH_ROUND, noise) if secure is not None else None
    for i, (idx, mask) in enumerate(zip(parts, masks, strict=True)):
        own = train.subset(idx)
        ledger.record(
            Release.dpsgd(
                round=SYNTH_ROUND,
                party=str(i),
                sample_rate=1.0,
                steps=1,
                noise_multipliers={g: noise_multipliers[g] for g in groups},
                clip_norms={g: CLIP_NORMS[g.rsplit(".", 1)[-1]] for g in groups},
            )
        )
        stats = clipped_statistics(own.features, mask, own.labels, maps, train.num_classes)
        if channel is not None:
            channel.add(i, _flat(stats), make_rng())
            continue
        sent = noised_statistics(stats, noise_multipliers=noise_multipliers, rng=make_rng())
        total = sent if total is None else total + sent
    if channel is not None and parts:
        total = _unflat(channel.total(), list(maps))
    if total is None:
        raise ValueError("no organisation holds records")
    return GaussianGenerator.fit(total, maps, train.class_names, rank=rank)


def _flat(stats: SufficientStatistics) -> dict[str, np.ndarray]:
    """The released groups as arrays; each second moment as its upper triangle (a record's
    triangle has norm ≤ ‖u uᵀ‖_F ≤ 1, the group's bound)."""
    out: dict[str, np.ndarray] = {"pattern": stats.patterns}
    for m in stats.means:
        upper = np.triu_indices(len(stats.covs[m]))
        out.update({f"{m}.mean": stats.means[m], f"{m}.count": stats.counts[m],
                    f"{m}.cov": stats.covs[m][upper]})  # fmt: skip
    return out


def _unflat(sums: dict[str, np.ndarray], modalities: list[str]) -> SufficientStatistics:
    """:func:`_flat`'s arrays back, each second moment mirrored from its triangle."""
    covs = {}
    for m in modalities:
        d = sums[f"{m}.mean"].shape[1]
        upper = np.zeros((d, d))
        upper[np.triu_indices(d)] = sums[f"{m}.cov"]
        covs[m] = upper + np.triu(upper, 1).T
    return SufficientStatistics(
        {m: sums[f"{m}.mean"] for m in modalities},
        {m: sums[f"{m}.count"] for m in modalities},
        covs,
        sums["pattern"],
    )
