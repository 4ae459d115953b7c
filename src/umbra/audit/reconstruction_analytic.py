"""Closed-form recovery of a linear layer's inputs from its gradient (pure).

For ``z = W x + b`` and any loss, ``∂L/∂W_r = Σ_i g_ir x_iᵀ`` and ``∂L/∂b_r = Σ_i g_ir`` with
``g_ir = ∂L/∂z_ir``. With one record, every row with a non-zero bias gradient gives that
record exactly: ``x = (∂L/∂W_r) / (∂L/∂b_r)`` (Phong et al., "Privacy-Preserving Deep
Learning via Additively Homomorphic Encryption", 2017). With a batch, a row that only one
record activates (a ReLU after the layer leaves the others' ``g_ir`` at zero) still gives
that record exactly; a row several records reach gives a weighted mix of them ("rows
dominated by one record", Fowl et al., "Robbing the Fed", ICLR 2022, with a benign
model). An SGD update ``Δ = −lr·∇`` has the same ratios, so the server needs no gradient.
"""

from __future__ import annotations

import numpy as np

__all__ = ["distinct_candidates", "idlg_label", "linear_inputs"]


def linear_inputs(
    weight_grad: np.ndarray, bias_grad: np.ndarray, *, rel_tol: float = 1e-6
) -> np.ndarray:
    """One candidate input per row of a linear layer with a usable bias gradient.

    Args:
        weight_grad: ``(out, in)`` gradient (or update) of the weight.
        bias_grad: ``(out,)`` gradient (or update) of the bias, the same scaling.
        rel_tol: rows whose ``|bias_grad|`` is below ``rel_tol`` times the largest are
            skipped (no record reached them: the ratio is noise).

    Returns:
        ``(k, in)`` float64: ``weight_grad[r] / bias_grad[r]`` for the ``k`` usable rows,
        largest ``|bias_grad|`` first; ``(0, in)`` when the layer got no gradient.
    """
    w = np.asarray(weight_grad, dtype=np.float64)
    b = np.asarray(bias_grad, dtype=np.float64)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise ValueError(f"need weight (out, in) and bias (out,), got {w.shape} and {b.shape}")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    if not scale > 0.0:
        return np.zeros((0, w.shape[1]))
    rows = np.flatnonzero(np.abs(b) > rel_tol * scale)
    rows = rows[np.argsort(-np.abs(b[rows]), kind="stable")]
    return w[rows] / b[rows, None]  # (k, in)


def distinct_candidates(candidates: np.ndarray, *, cos_tol: float = 1e-4) -> np.ndarray:
    """The candidates of :func:`linear_inputs` with near-duplicates merged (rows that one
    record dominates repeat that record; keep the first of each group, cosine distance
    below ``cos_tol``)."""
    c = np.asarray(candidates, dtype=np.float64)
    if len(c) == 0:
        return c
    unit = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    kept: list[int] = []
    for i in range(len(c)):
        if all(1.0 - float(unit[i] @ unit[j]) > cos_tol for j in kept):
            kept.append(i)
    return c[kept]


def idlg_label(last_bias_grad: np.ndarray) -> int:
    """The label of a single record from the gradient of the last layer's bias (iDLG,
    Zhao et al. 2020, https://arxiv.org/abs/2001.02610): with softmax cross-entropy the
    gradient is ``softmax(z) − onehot(y)``, negative only at ``y``. Pass the gradient, not
    an SGD update (the update ``−lr·∇`` flips the sign)."""
    g = np.asarray(last_bias_grad, dtype=np.float64)
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"need a (C,) bias gradient with C >= 2, got shape {g.shape}")
    return int(np.argmin(g))
