"""An organisation's clipped sufficient statistics of a class-conditional Gaussian.

The generator (:mod:`umbra.synth.generator`) is fitted by minimising, over its parameters
θ, the moment-matching loss ``½ Σ_i ‖θ − φ(x_i)‖²`` of each statistic φ below; its
gradient's data-dependent part is ``−Σ_i φ(x_i)``, so one full-batch DP-SGD step (sample
rate 1, per-record clip ``C_g`` of each group, Gaussian noise ``σ_g C_g``) is the Gaussian
mechanism on these clipped sums. The groups, per modality ``m`` with feature map ``u`` and
norm ratio ρ (:mod:`umbra.synth.feature_map`):

========================  ===============================================  ==========
group                     one record's contribution                        clip norm
========================  ===============================================  ==========
``<m>.mean``              row ``y`` of a ``(K, D)`` matrix: ``u``            1
``<m>.count``             row ``y`` of a ``(K, 2)`` matrix: ``[1, ρ]``       √2
``<m>.cov``               ``u uᵀ`` (``D × D``, upper triangle released)       1
``pattern``               one-hot of (class, which modalities are present)   1
========================  ===============================================  ==========

``‖u‖ = 1`` and ρ ∈ [0, 1] by construction, so no record is ever clipped and the bounds
are exact. A record lacking modality ``m`` adds nothing to ``m``'s groups (the mask is its
own: a function of the record). Pure: no noise, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from umbra.synth.feature_map import FeatureMap

__all__ = [
    "CLIP_NORMS",
    "MODALITY_GROUPS",
    "SufficientStatistics",
    "clipped_statistics",
    "pattern_index",
    "statistics_groups",
]

#: Per-record L2 bound of each kind of group (see the module docstring).
CLIP_NORMS: dict[str, float] = {"mean": 1.0, "count": math.sqrt(2.0), "cov": 1.0, "pattern": 1.0}
#: The kinds of group of each modality, in release order.
MODALITY_GROUPS = ("mean", "count", "cov")


@dataclass
class SufficientStatistics:
    """Sums over records (clipped; noised once an organisation releases them).

    Attributes:
        means: modality -> ``(K, D)``: per class, Σu.
        counts: modality -> ``(K, 2)``: per class, the count and Σρ.
        covs: modality -> ``(D, D)`` Σ u uᵀ (symmetric).
        patterns: ``(K, 2^M)`` counts of each class and presence pattern.
    """

    means: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    covs: dict[str, np.ndarray]
    patterns: np.ndarray

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        return SufficientStatistics(
            {m: self.means[m] + other.means[m] for m in self.means},
            {m: self.counts[m] + other.counts[m] for m in self.counts},
            {m: self.covs[m] + other.covs[m] for m in self.covs},
            self.patterns + other.patterns,
        )

    def groups(self) -> list[str]:
        """The released groups, in a fixed order."""
        return statistics_groups(self.means)


def statistics_groups(modalities: Iterable[str]) -> list[str]:
    """The groups released for ``modalities``: ``<m>.mean``, ``<m>.count``, ``<m>.cov`` per
    modality, then ``pattern``."""
    return [f"{m}.{k}" for m in modalities for k in MODALITY_GROUPS] + ["pattern"]


def pattern_index(mask: np.ndarray) -> np.ndarray:
    """``(N, M)`` presence mask -> ``(N,)`` pattern ids ``Σ_j mask[:, j] · 2^j``."""
    mask = np.asarray(mask, dtype=bool)
    return (mask * (1 << np.arange(mask.shape[1]))).sum(axis=1).astype(np.int64)


def clipped_statistics(
    features: Mapping[str, np.ndarray],
    mask: np.ndarray,
    labels: np.ndarray,
    maps: Mapping[str, FeatureMap],
    num_classes: int,
) -> SufficientStatistics:
    """The statistics of one organisation's records.

    Args:
        features: modality -> ``(N, *shape)`` features in the run's feature space.
        mask: ``(N, M)`` presence of each modality of ``maps`` (in its order).
        labels: ``(N,)`` classes in ``[0, num_classes)``.
        maps: modality -> its :class:`FeatureMap`, in the data set's modality order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    means: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    covs: dict[str, np.ndarray] = {}
    for j, (m, fmap) in enumerate(maps.items()):
        have = mask[:, j]
        u, rho = fmap.forward(np.asarray(features[m])[have])  # (n, D), (n,)
        y = labels[have]
        onehot = np.eye(num_classes)[y]  # (n, K)
        means[m] = onehot.T @ u  # (K, D)
        counts[m] = onehot.T @ np.stack([np.ones(len(u)), rho], axis=1)  # (K, 2)
        covs[m] = u.T @ u  # (D, D)
    k = 1 << len(maps)
    patterns = np.zeros((num_classes, k))
    np.add.at(patterns, (labels, pattern_index(mask)), 1.0)
    return SufficientStatistics(means, counts, covs, patterns)
