"""Separating a batch's records from a normalised linear layer's gradient (pure).

For ``z = W x + b`` on a batch, every row of ``[∂L/∂W | ∂L/∂b]`` is ``Σ_i g_ir (x_i, 1)``:
the rows span (at most) the ``B``-dimensional space of the records' ``(x_i, 1)``, and every
point of it with a non-zero last entry, divided by that entry, is an affine combination
``Σ_i α_i x_i`` with ``Σ_i α_i = 1`` (the candidates of
:func:`~umbra.audit.reconstruction_analytic.linear_inputs` are such points). Which of them
are records? When ``x`` is the output of a normalisation layer the records carry a
signature a mixture lacks: ``x = γ ⊙ u + β`` where ``u`` has, in each of its ``G``
normalisation groups, mean 0 and mean square ``v ≈ 1`` (GroupNorm: per group of channels;
LayerNorm: ``G = 1``). A mixture keeps the zero means but its mean square in group ``g`` is
``Σ_ij α_i α_j ρ_ij^g < 1`` whenever the records differ there. So the records are the
points of the affine hull whose every group has mean square ``v``: ``G`` quadratic
equations in ``B − 1`` unknowns, over-determined for ``G ≥ B`` (27 groups of a 28×28
image's scattering coefficients against batches of up to 8). Solved by Levenberg-Marquardt
from each candidate row (a row dominated by one record starts next to it).

This is the linear-layer leakage of Fowl et al. ("Robbing the Fed", ICLR 2022) with the
normalisation's statistics used to disaggregate rows shared by several records, in the
spirit of the sparsity/statistics priors of the linear-layer analyses (Boenisch et al.,
"When the Curious Abandon Honesty", EuroS&P 2023). Needs no labels and no model beyond the
normalisation's ``γ``, ``β``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

__all__ = ["separate_records", "update_rank"]


def update_rank(weight_grad: np.ndarray, bias_grad: np.ndarray, *, rel_tol: float = 1e-5) -> int:
    """Numerical rank of ``[weight_grad | bias_grad]``: the number of records the layer's
    update mixes (at most), as its observer can read it off the update alone."""
    m = np.concatenate(
        [np.asarray(weight_grad, np.float64), np.asarray(bias_grad, np.float64)[:, None]], axis=1
    )
    s = np.linalg.svd(m, compute_uv=False)
    return 0 if s.size == 0 or not s[0] > 0 else int(np.sum(s > rel_tol * s[0]))


def separate_records(
    weight_grad: np.ndarray,
    bias_grad: np.ndarray,
    *,
    gamma: np.ndarray,
    beta: np.ndarray,
    groups: np.ndarray,
    starts: np.ndarray,
    mean_square: float = 1.0,
    rel_tol: float = 1e-5,
    fit_tol: float = 1e-4,
) -> np.ndarray | None:
    """The records behind a normalised linear layer's gradient, or ``None`` where the
    normalisation cannot separate them (fewer groups than unknowns: the equations leave a
    continuum of solutions).

    Args:
        weight_grad: ``(out, in)`` gradient (or SGD update) of the layer's weight.
        bias_grad: ``(out,)`` gradient (or update) of its bias, the same scaling.
        gamma: ``(in,)`` the normalisation's scale, expanded to the layer's inputs.
        beta: ``(in,)`` its shift, expanded likewise.
        groups: ``(in,)`` integer group of each input (``0 … G − 1``), ``-1`` for inputs
            whose group is left unconstrained (a group whose records' variance is not
            large against the layer's eps: its mean square is not ``mean_square``).
        starts: ``(s, in)`` points to start from (the candidate rows).
        mean_square: a record's mean square per group after normalisation
            (``σ²/(σ² + eps)``, 1 up to the layer's eps).
        rel_tol: singular values below ``rel_tol`` times the largest are noise.
        fit_tol: a solution whose RMS residual exceeds this is discarded.

    Returns:
        ``(k, in)`` float64, at most ``rank`` distinct solutions (best fit first).
    """
    w = np.asarray(weight_grad, np.float64)
    b = np.asarray(bias_grad, np.float64)
    g = np.asarray(gamma, np.float64)
    sh = np.asarray(beta, np.float64)
    grp = np.asarray(groups)
    n_groups = len(np.unique(grp[grp >= 0]))
    rank = update_rank(w, b, rel_tol=rel_tol)
    if rank < 2 or n_groups < rank:
        return None
    _, _, vt = np.linalg.svd(np.concatenate([w, b[:, None]], axis=1), full_matrices=False)
    vw, vb = vt[:rank, :-1], vt[:rank, -1]  # (k, in), (k,)
    if not np.linalg.norm(vb) > 0:
        return None
    safe = np.where(np.abs(g) < 1e-12, np.inf, g)
    u_basis = (vw - vb[:, None] * sh[None, :]) / safe[
        None, :
    ]  # (k, in): u of a = a @ u_basis / (a @ vb)
    # Points with a @ vb = 1: a = a0 + P t, P spanning the complement of vb.
    a0 = vb / float(vb @ vb)
    p = np.linalg.svd(vb[None, :])[2][1:].T  # (k, k-1)
    u0 = a0 @ u_basis  # (in,)
    d = p.T @ u_basis  # (k-1, in)
    used = grp >= 0
    onehot = np.zeros((n_groups, grp.size))
    onehot[np.unique(grp[used], return_inverse=True)[1], np.flatnonzero(used)] = 1.0
    onehot /= onehot.sum(axis=1, keepdims=True)  # (G, in): group means

    def residual(t: np.ndarray) -> np.ndarray:
        u = u0 + t @ d
        return np.concatenate([onehot @ u, onehot @ (u * u) - mean_square])

    def jacobian(t: np.ndarray) -> np.ndarray:
        u = u0 + t @ d
        return np.concatenate([onehot @ d.T, 2.0 * (onehot * u[None, :]) @ d.T])

    found: list[tuple[float, np.ndarray]] = []
    for s in np.atleast_2d(np.asarray(starts, np.float64)):
        us = (s - sh) / safe
        t_start, *_ = np.linalg.lstsq(d.T, us - u0, rcond=None)
        fit = least_squares(residual, t_start, jac=jacobian, method="lm", xtol=1e-12)
        rms = float(np.sqrt(np.mean(fit.fun**2)))
        if rms > fit_tol:
            continue
        u = u0 + fit.x @ d
        if all(_cos(u, v) < 1.0 - 1e-6 for _, v in found):
            found.append((rms, u))
    if not found:
        return None
    found.sort(key=lambda e: e[0])
    return np.stack([u * g + sh for _, u in found[:rank]])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-300))
