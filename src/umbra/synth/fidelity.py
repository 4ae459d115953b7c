"""Fidelity of synthetic records: the Fréchet distance between Gaussians fitted to the
synthetic and to the real records, per modality, in the generator's feature maps.

``FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½})`` (Fréchet, 1957; the formula of
FID, Heusel et al. NeurIPS 2017, https://arxiv.org/abs/1706.08500, here on the fixed
feature maps instead of Inception features). 0 for identical distributions; comparing it
with the distance between two real samples shows how much is sampling error. Pure.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = ["frechet_distance", "gaussian_moments"]


def gaussian_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``(N, D)`` rows (N ≥ 2)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (N >= 2, D) rows, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to rows ``a`` and ``b``."""
    mu1, s1 = gaussian_moments(a)
    mu2, s2 = gaussian_moments(b)
    root1 = linalg.sqrtm(s1)
    cross = linalg.sqrtm(root1 @ s2 @ root1)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(cross)))
    return max(value, 0.0)
