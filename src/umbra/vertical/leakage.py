"""Label leakage from the gradients a feature party receives (Li et al., ICLR 2022,
"Label Leakage and Protection in Two-party Split Learning",
https://arxiv.org/abs/2102.08504), scored as ROC AUC against the true labels.

* **Norm attack**: a record of the rare (positive) class gets a larger gradient than the
  others (the model is less sure of it): the score is ``‖g‖``, positives = ``label == c``.
* **Direction attack**: gradients of two records with the same label point the same way
  (for cross-entropy, ``g ∝ (p - onehot(y))`` pushed through the head): the score of a pair
  is ``cos(g_i, g_j)``, positives = pairs with equal labels. For binary labels this is Li et
  al.'s attack with a known reference record; for K classes it is its pairwise form.

Pure functions; AUC from :mod:`umbra.audit.roc` (Mann-Whitney, ties 1/2).
"""

from __future__ import annotations

import numpy as np

from umbra.audit.roc import roc_curve

__all__ = ["direction_attack_auc", "norm_attack_auc"]


def norm_attack_auc(grads: np.ndarray, labels: np.ndarray, *, positive: int) -> float:
    """AUC of ``‖g_i‖`` for telling ``labels == positive`` from the rest."""
    g = np.asarray(grads, dtype=np.float64)
    y = np.asarray(labels)
    norms = np.linalg.norm(g.reshape(len(g), -1), axis=1)
    return roc_curve(norms[y == positive], norms[y != positive]).auc


def direction_attack_auc(grads: np.ndarray, labels: np.ndarray, *, max_records: int = 600) -> float:
    """AUC of ``cos(g_i, g_j)`` over all pairs ``i < j`` of the first ``max_records``
    records for telling same-label pairs from different-label pairs."""
    g = np.asarray(grads, dtype=np.float64)[:max_records]
    y = np.asarray(labels)[:max_records]
    g = g.reshape(len(g), -1)
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
    cos = unit @ unit.T
    i, j = np.triu_indices(len(g), k=1)
    same = y[i] == y[j]
    return roc_curve(cos[i, j][same], cos[i, j][~same]).auc
