"""The fixed map of one modality's features into the generator's space, and back.

Each record's features become one unit vector ``u`` and a norm ratio ``ρ`` in [0, 1]:

* image and audio maps ``(C, H, W)`` are average-pooled to ``(C, p, p)`` (fewer
  dimensions: the noise on a ``D × D`` covariance grows with ``D`` while every record's
  share of the signal shrinks with it);
* the vector is divided by its norm ``r``, so every record has norm 1 exactly: clipping
  never distorts a record, and ``u uᵀ`` has Frobenius norm 1 (the sensitivity of the
  second moment);
* ``ρ = log1p(r) / log1p(NORM_BOUND)``, clipped to [0, 1], carries the scale back.

Every step is a function of the record alone, so the map costs no privacy; :meth:`inverse`
undoes it (the pooled maps through the minimum-norm right inverse of the pooling), which puts synthetic records in the
run's own feature space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["NORM_BOUND", "FeatureMap", "feature_map_for"]

#: The public bound of a record's norm in the map's space; a larger norm is clipped to it.
#: Generous: ``log1p`` compresses it, and no record of standardised features is near it.
NORM_BOUND = 1e4


@dataclass(frozen=True)
class FeatureMap:
    """The map of one modality with per-record feature shape ``shape``.

    Attributes:
        shape: the run's per-record feature shape, e.g. ``(81, 7, 7)``.
        pool: pooled side for ``(C, H, W)`` maps (None: flattened as they are).
    """

    shape: tuple[int, ...]
    pool: int | None

    @property
    def dim(self) -> int:
        """``D``: the length of ``u``."""
        if self.pool is not None:
            return self.shape[0] * self.pool * self.pool
        return math.prod(self.shape)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, *shape)`` features -> ``(N, D)`` unit vectors and ``(N,)`` ratios ρ.

        A record whose features are all zero (a missing modality) maps to ``u = 0``, ρ = 0.
        """
        if len(x) == 0:
            return np.zeros((0, self.dim)), np.zeros(0)
        v = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if self.pool is not None:
            v = F.adaptive_avg_pool2d(v, self.pool)  # (N, C, pool, pool)
        flat = v.reshape(len(v), -1).double().numpy()
        r = np.linalg.norm(flat, axis=1)
        u = flat / np.where(r > 0, r, 1.0)[:, None]
        rho = np.clip(np.log1p(r) / math.log1p(NORM_BOUND), 0.0, 1.0)
        return u, rho

    def inverse(self, u: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """``(N, D)`` vectors and ``(N,)`` ratios -> ``(N, *shape)`` float32 features."""
        r = np.expm1(np.clip(rho, 0.0, 1.0) * math.log1p(NORM_BOUND))
        norm = np.linalg.norm(u, axis=1)
        flat = u / np.where(norm > 0, norm, 1.0)[:, None] * r[:, None]
        if self.pool is None:
            return flat.reshape(len(flat), *self.shape).astype(np.float32)
        c, h, w = self.shape
        small = flat.reshape(len(flat), c, self.pool * self.pool)
        big = small @ _unpooling(h, w, self.pool).T  # (N, C, H·W)
        return big.reshape(len(flat), c, h, w).astype(np.float32)


def _unpooling(h: int, w: int, side: int) -> np.ndarray:
    """``(H·W, side²)``: the minimum-norm right inverse of adaptive average pooling from
    ``H × W`` to ``side × side`` (pooling its output gives the input back exactly; the
    pooling windows may overlap, so no plain upsampling does)."""
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    pool = F.adaptive_avg_pool2d(basis, side).reshape(h * w, side * side).T.numpy()
    return np.linalg.pinv(pool)


def feature_map_for(shape: tuple[int, ...], *, max_dim: int) -> FeatureMap:
    """The map of a modality with per-record shape ``shape``: a ``(C, H, W)`` map with more
    than ``max_dim`` numbers is average-pooled to ``(C, p, p)``, the largest ``p`` with
    ``C·p² ≤ max_dim`` (at least 1); anything else is flattened as it is."""
    if len(shape) != 3 or math.prod(shape) <= max_dim:
        return FeatureMap(tuple(shape), None)
    c, h, w = shape
    side = max(1, min(math.isqrt(max_dim // c), h, w))
    return FeatureMap(tuple(shape), side)
