"""The discriminant generator: class-conditional Gaussians in a subspace a DP classifier
finds, fitted from three rounds of noised sums.

A Gaussian with a shared covariance (:mod:`umbra.synth.generator`) puts its classes apart
through a ``D × D`` second moment, and the directions that tell the classes apart in
scattering coefficients carry tiny variance, below what a noised ``D × D`` matrix
resolves. This model (Fisher's reduced-rank discriminant model, Hastie & Tibshirani 1996,
with the subspace found by DP gradient descent instead of an eigendecomposition) asks
for no ``D × D`` statistic. Per modality, with ``u`` its feature map's unit vector:

1. **scale** (one release): per channel ``g`` (a ``(C, H, W)`` map's channel; each number
   of any other feature), the record's root energy ``a_g = ‖u_g‖`` and mean
   ``√|g| · mean(u_g)``, both vectors of norm ≤ 1, and a 1 that counts it. Their noised sums
   give a centre ``c`` and a spread ``s`` per number; ``ũ = (u − c) / s`` (:class:`Standardiser`).
2. **teacher** (``steps`` releases): multinomial logistic regression on ``[ũ, 1]`` by full-batch
   DP gradient descent with momentum: per-record gradients ``[ũ, 1] (p − y)ᵀ`` clipped to
   ``clip`` in Frobenius norm, summed, noised. Its weights, centred over the classes, span
   a ``K − 1``-dimensional subspace ``B`` of the standardised space (:func:`subspace_of`).
3. **subspace** (one release): per class the count and Σρ, ``Σ z`` with ``z = Bᵀ ũ`` clipped to
   ``zclip``, and the shared ``Σ z zᵀ``; for the rest ``X = ũ − B z`` (clipped to
   :data:`RESIDUAL_CLIP`, read as a channels × positions matrix) ``Σ X Xᵀ`` and ``Σ Xᵀ X``;
   the pattern counts.

The model (:class:`DiscriminantModel`)::

    z | y ~ N(m_y, Σ)                                  # in the K − 1 discriminant directions
    ũ     = B z + α (I − B Bᵀ) e,  e ~ N(0, R ⊗ P)     # the rest: channels ⊗ positions
    u     = c + s ⊙ ũ

with ``R ⊗ P`` the Kronecker-structured covariance of the rest (its channel and position
second moments, scaled to its energy: a classifier trained on the records must see the
rest's large directions to learn to ignore them), and α ≥ 0 set
per record so that ``‖u‖ = 1``, as the feature map makes every real record. With
classifier guidance γ > 0 (the default of ``umbra synth``), class ``y``'s records come from
``p(u | y) ∝ p(u) softmax(γ ℓ(u))_y`` instead: the marginal ``p(u) = Σ_c π_c p(u | c)`` of
the model above reweighted by the teacher's own class probabilities (ℓ its logits), so
that a classifier trained on the records learns the teacher's boundary, not the one the
noised subspace moments imply (:meth:`DiscriminantModel.sample`). Every
statistic is a sum of clipped per-record terms, so each release is a Gaussian mechanism at
sample rate 1 (one DP-SGD step on a moment-matching loss, as in
:mod:`umbra.synth.statistics`); the rounds compose in the ledger. Pure functions and the
model here; :func:`umbra.synth.discriminant_fit.fit_discriminant` runs the rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp, softmax

from umbra.synth.feature_map import FeatureMap

__all__ = [
    "MIN_RESIDUAL",
    "RESIDUAL_CLIP",
    "DiscriminantModel",
    "Standardiser",
    "channel_sizes",
    "clipped_gradient_sum",
    "scale_vectors",
    "subspace_of",
    "subspace_statistics",
]

#: Draws of the marginal per requested record before a guided class falls back to its own
#: Gaussian, and the most drawn at once (memory: ``GUIDED_BATCH × D`` numbers).
GUIDED_DRAWS = 50
GUIDED_BATCH = 8192
#: Draws of the Monte Carlo estimates of a guided model's normaliser and expectation.
NORMALISER_DRAWS = 8192
#: Smallest eigenvalue kept of a fitted covariance (a proper density always).
MIN_RESIDUAL = 1e-6
#: Per-record bound of the standardised rest ``v − B Bᵀ v`` in the rows / cols sums
#: (standardised records have norm about 1).
RESIDUAL_CLIP = 1.0


def channel_sizes(fmap: FeatureMap) -> np.ndarray:
    """``(G,)`` the sizes of the groups the scale is shared in: the channels of a
    ``(C, H, W)`` map (after pooling), each number of anything else."""
    if len(fmap.shape) == 3:
        c = fmap.shape[0]
        return np.full(c, fmap.dim // c, dtype=np.int64)
    return np.ones(fmap.dim, dtype=np.int64)


def scale_vectors(u: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(N, 2G + 1)``: each record's ``[a, √|g| · mean_g, 1]`` (norm ≤ √3: ‖u‖ ≤ 1 and
    ``√|g| · |mean(u_g)| ≤ ‖u_g‖``). Records are contiguous groups of ``u``'s numbers."""
    n = len(u)
    if not np.all(sizes == sizes[0]):
        raise ValueError("channels of one modality must have one size")
    blocks = u.reshape(n, len(sizes), int(sizes[0]))
    energy = np.sqrt((blocks**2).sum(axis=2))
    mean = blocks.sum(axis=2) / np.sqrt(sizes)
    return np.concatenate([energy, mean, np.ones((n, 1))], axis=1)


@dataclass(frozen=True)
class Standardiser:
    """``ũ = (u − centre) / scale``, per number of ``u``."""

    centre: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_sums(cls, sums: np.ndarray, sizes: np.ndarray, noise_std: float) -> Standardiser:
        """From the noised sum of :func:`scale_vectors` and the noise's standard deviation
        per entry (each channel's root energy is floored at twice it: a noise-swamped
        channel is scaled as if it held that much)."""
        g = len(sizes)
        count = max(float(sums[-1]), 1.0)
        energy = np.maximum(sums[:g], 2.0 * noise_std) / count
        mean = sums[g : 2 * g] / count / np.sqrt(sizes)
        dim = int(sizes.sum())
        # a per-number RMS of the channel, times √D: a typical record's ũ has norm about 1
        scale = energy / np.sqrt(sizes) * math.sqrt(dim)
        return cls(np.repeat(mean, sizes), np.repeat(scale, sizes))

    def forward(self, u: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> standardised ``(N, D)``."""
        return (u - self.centre) / self.scale

    def inverse(self, v: np.ndarray) -> np.ndarray:
        """Standardised ``(N, D)`` -> ``u``."""
        return self.centre + v * self.scale


def clipped_gradient_sum(
    x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, clip: float
) -> torch.Tensor:
    """``(P, K)``: Σ over records of the cross-entropy gradient of softmax(``x`` W) with
    respect to W, each record's ``x_i (p_i − y_i)ᵀ`` scaled to Frobenius norm ≤ ``clip``
    (the norm of an outer product is ``‖x_i‖ ‖p_i − y_i‖``)."""
    k = weights.shape[1]
    r = torch.softmax(x @ weights, dim=1) - torch.nn.functional.one_hot(labels, k).to(x.dtype)
    norms = x.norm(dim=1) * r.norm(dim=1)
    scale = torch.clamp(clip / torch.clamp(norms, min=1e-12), max=1.0)
    return ((r * scale[:, None]).T @ x).T  # (R.T @ X).T: far faster than X.T @ R on CPU


def subspace_of(weights: np.ndarray) -> np.ndarray:
    """``(D, K − 1)`` orthonormal basis of the span of the teacher's class weights
    (``(D + 1, K)``, the last row the bias) centred over the classes: the directions its
    logits differ along."""
    w = weights[:-1] - weights[:-1].mean(axis=1, keepdims=True)
    k = max(w.shape[1] - 1, 1)
    basis, _, _ = np.linalg.svd(w, full_matrices=False)
    return basis[:, :k]


def subspace_statistics(
    v: np.ndarray,
    labels: np.ndarray,
    rho: np.ndarray,
    basis: np.ndarray,
    zclip: float,
    num_classes: int,
    channels: int = 1,
) -> dict[str, np.ndarray]:
    """Clipped sums of one organisation's standardised records ``v``:

    * ``count``: ``(K, 2)`` per class the count and Σρ (norm ≤ √2);
    * ``mean``: ``(K, k)`` per class Σz (norm ≤ ``zclip``), ``z = Bᵀ v`` scaled to norm
      ≤ ``zclip``;
    * ``cov``: ``(k, k)`` Σ z zᵀ (norm ≤ ``zclip²``);
    * ``rows`` / ``cols``: ``(C, C)`` Σ X Xᵀ and ``(P, P)`` Σ Xᵀ X of the rest
      ``X = (v − B Bᵀ v)`` scaled to norm ≤ :data:`RESIDUAL_CLIP` and read as a
      ``(channels, D / channels)`` matrix (norm ≤ ``RESIDUAL_CLIP²`` each: ‖X Xᵀ‖_F ≤ ‖X‖_F²).
    """
    z = v @ basis
    rest = v - z @ basis.T
    norms = np.linalg.norm(z, axis=1)
    z = z * np.minimum(1.0, zclip / np.maximum(norms, 1e-12))[:, None]
    rnorm = np.linalg.norm(rest, axis=1)
    rest = rest * np.minimum(1.0, RESIDUAL_CLIP / np.maximum(rnorm, 1e-12))[:, None]
    x = rest.reshape(len(v), channels, -1)
    onehot = np.eye(num_classes)[np.asarray(labels, dtype=np.int64)]
    return {
        "count": onehot.T @ np.stack([np.ones(len(v)), rho], axis=1),
        "mean": onehot.T @ z,
        "cov": z.T @ z,
        "rows": np.einsum("ncp,ndp->cd", x, x),
        "cols": np.einsum("ncp,ncq->pq", x, x),
    }


def _psd(m: np.ndarray, floor: float) -> np.ndarray:
    """The symmetric part of ``m`` with eigenvalues floored at ``floor``."""
    lam, vec = np.linalg.eigh((m + m.T) / 2)
    return (vec * np.maximum(lam, floor)) @ vec.T


def _unit_norm_factor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N,)`` the factor α ≥ 0 per row with ``‖a + α b‖ = 1`` where one exists (the
    larger root), else 1. Every real record's ``u`` has norm 1; without this, a sampled
    record whose rest carries too little energy is rescaled by the map, and its centre
    with it, which in standardised units moves it far along ``c / s``."""
    bb = (b**2).sum(axis=1)
    ab = (a * b).sum(axis=1)
    aa = (a**2).sum(axis=1)
    disc = ab**2 - bb * (aa - 1.0)
    ok = (bb > 0) & (disc >= 0)
    alpha = np.ones(len(a))
    root = (-ab[ok] + np.sqrt(disc[ok])) / bb[ok]
    alpha[ok] = np.where(root >= 0, root, 1.0)
    return alpha


@dataclass(frozen=True)
class DiscriminantModel:
    """One modality's discriminant model (see the module docstring).

    Attributes:
        centre, scale: ``(D,)`` the standardiser.
        basis: ``(D, k)`` orthonormal discriminant directions B.
        means: ``(K, k)`` class means m_y of z.
        cov: ``(k, k)`` shared within-class covariance Σ of z (positive definite).
        rows, cols: ``(C, C)`` and ``(P, P)`` (``C·P = D``) the rest's covariance
            ``rows ⊗ cols`` before the subspace is projected out of it.
        rho: ``(K,)`` class mean of the norm ratio ρ.
        teacher: ``(D + 1, K)`` the DP classifier's weights on ``[ũ, 1]``.
        prior: ``(K,)`` class shares (noised counts) of the marginal ``Σ_y π_y p(u | y)``.
        guidance: γ of the classifier guidance (0: none; see :meth:`sample`).
        label_mass: ``(K,)`` ``P_γ(y) = E_u[softmax(γ ℓ(u))_y]`` under the marginal, the
            guided law's normaliser (Monte Carlo at fit time; None without guidance).
        expected: E[log p(u | y)] under the guided sampler (Monte Carlo; None without).
    """

    centre: np.ndarray
    scale: np.ndarray
    basis: np.ndarray
    means: np.ndarray
    cov: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    rho: np.ndarray
    teacher: np.ndarray
    prior: np.ndarray
    guidance: float = 0.0
    label_mass: np.ndarray | None = None
    expected: float | None = None

    kind = "discriminant"

    @classmethod
    def fit(
        cls,
        standardiser: Standardiser,
        basis: np.ndarray,
        sums: Mapping[str, np.ndarray],
        *,
        floors: Mapping[str, float],
        teacher: np.ndarray,
        guidance: float = 0.0,
    ) -> DiscriminantModel:
        """From the noised sums of :func:`subspace_statistics` (``count``, ``mean``,
        ``cov``, ``rows``, ``cols``), added over the organisations; ``floors``: per
        second-moment group the smallest eigenvalue kept, per record (the noise's scale:
        below it a direction's variance is not resolved); the teacher's weights and the
        guidance γ (post-processing: the guided law's normaliser is estimated from draws of
        the model, with a fixed seed)."""
        counts = np.maximum(sums["count"][:, 0], 1.0)
        n = float(counts.sum())
        means = sums["mean"] / counts[:, None]
        rho = np.clip(sums["count"][:, 1] / counts, 0.0, 1.0)
        scatter = (sums["cov"] - (means.T * counts) @ means) / n
        cov = _psd(scatter, max(floors["cov"], MIN_RESIDUAL))
        rows = _psd(sums["rows"] / n, max(floors["rows"], MIN_RESIDUAL))
        cols = _psd(sums["cols"] / n, max(floors["cols"], MIN_RESIDUAL))
        # both traces estimate E‖X‖²; rows ⊗ cols / t has trace tr(rows)·tr(cols)/t ≈ t
        t = (float(np.trace(rows)) + float(np.trace(cols))) / 2
        prior = counts / counts.sum()
        model = cls(
            standardiser.centre, standardiser.scale, basis, means, cov, rows / t, cols, rho,
            np.asarray(teacher, dtype=np.float64), prior,
        )  # fmt: skip
        if guidance < 0 or not math.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        return model if guidance == 0 else model._guided(float(guidance))

    def _guided(self, guidance: float, draws: int = NORMALISER_DRAWS) -> DiscriminantModel:
        """This model with guidance γ, its normaliser and expected log-density estimated."""
        rng = np.random.default_rng(0)
        comp = rng.choice(len(self.prior), size=draws, p=self.prior)
        u = self._draw(comp, rng)
        probs = softmax(guidance * self.logits(u), axis=1)
        mass = np.maximum(probs.mean(axis=0), 1.0 / draws)
        model = replace(self, guidance=guidance, label_mass=mass / mass.sum())
        labels = (probs.cumsum(axis=1) > rng.random((draws, 1))).argmax(axis=1)
        return replace(model, expected=float(model.log_density(u, labels).mean()))

    def logits(self, u: np.ndarray) -> np.ndarray:
        """``(N, K)`` the teacher's logits ``[ũ, 1] W`` of feature-map vectors ``u``."""
        v = (u - self.centre) / self.scale
        return v @ self.teacher[:-1] + self.teacher[-1]

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(N, D)`` draws of ``u`` for classes ``labels``.

        Without guidance, from each class's Gaussian (:meth:`_draw`). With guidance γ > 0,
        from ``p(u | y) ∝ p(u) softmax(γ ℓ(u))_y`` (classifier guidance, Dhariwal & Nichol
        2021, with the DP teacher as the classifier): draws of the marginal
        ``p(u) = Σ_c π_c p(u | c)`` each get a class from the guided softmax and fill the
        requests of that class (exact rejection sampling). A class still short after
        :data:`GUIDED_DRAWS` times the request (the teacher almost never picks it) takes
        the rest from its own Gaussian."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.guidance == 0:
            return self._draw(labels, rng)
        out = np.empty((len(labels), self.basis.shape[0]))
        todo = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        budget = GUIDED_DRAWS * len(labels)
        while budget > 0 and any(len(v) for v in todo.values()):
            need = sum(len(v) for v in todo.values())
            m = int(min(max(2 * need, 256), GUIDED_BATCH, budget))
            budget -= m
            u = self._draw(rng.choice(len(self.prior), size=m, p=self.prior), rng)
            probs = softmax(self.guidance * self.logits(u), axis=1)
            got = (probs.cumsum(axis=1) > rng.random((m, 1))).argmax(axis=1)
            for c, idx in todo.items():
                pick = u[got == c][: len(idx)]
                out[idx[: len(pick)]] = pick
                todo[c] = idx[len(pick) :]
        short = np.concatenate([v for v in todo.values()] + [np.zeros(0, dtype=np.int64)])
        if len(short):
            out[short] = self._draw(labels[short], rng)
        return out

    def _draw(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(N, D)`` draws of class ``labels``' Gaussians: the subspace part from its
        Gaussian, the rest from ``rows ⊗ cols`` with the subspace projected out, then
        scaled to unit norm (:func:`_unit_norm_factor`)."""
        n = len(labels)
        k = self.basis.shape[1]
        z = self.means[labels] + rng.standard_normal((n, k)) @ np.linalg.cholesky(self.cov).T
        g = rng.standard_normal((n, len(self.rows), len(self.cols)))
        lr, lc = np.linalg.cholesky(self.rows), np.linalg.cholesky(self.cols)
        e = (lr @ g @ lc.T).reshape(n, -1)  # vec(L_r G L_cᵀ) ~ N(0, rows ⊗ cols)
        e -= (e @ self.basis) @ self.basis.T
        a = self.centre + (z @ self.basis.T) * self.scale  # (N, D): centre and subspace
        b = e * self.scale  # (N, D): the rest
        return a + b * _unit_norm_factor(a, b)[:, None]

    def _precision(self, w: np.ndarray) -> np.ndarray:
        """``(N, D)``: ``(rows ⊗ cols)⁻¹`` applied to each row of ``w``."""
        x = w.reshape(len(w), len(self.rows), len(self.cols))
        return (np.linalg.solve(self.rows, x) @ np.linalg.inv(self.cols)).reshape(len(w), -1)

    def log_density(self, u: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(N,)`` log-density of ``u`` given the class: ``z`` under its Gaussian times the
        rest under ``rows ⊗ cols`` marginalised to the complement of the subspace (precision
        ``Q − Q B (Bᵀ Q B)⁻¹ Bᵀ Q``), the standardiser's Jacobian included; the sampler's
        unit-norm scaling is not in it."""
        labels = np.asarray(labels, dtype=np.int64)
        v = (u - self.centre) / self.scale
        z = v @ self.basis
        w = v - z @ self.basis.T
        qw = self._precision(w)
        bqw = qw @ self.basis  # (N, k)
        m = np.linalg.inv(self._bqb())
        rest = (w * qw).sum(axis=1) - np.einsum("ni,ij,nj->n", bqw, m, bqw)
        prec = np.linalg.inv(self.cov)
        if self.guidance == 0:
            diff = z - self.means[labels]
            maha = np.einsum("ni,ij,nj->n", diff, prec, diff)
            return -0.5 * (maha + rest + self._log_normaliser())
        # p(u) softmax(γ ℓ(u))_y / P_γ(y): the marginal's mixture over the classes
        diff = z[:, None, :] - self.means[None]  # (N, K, k)
        maha_k = np.einsum("nci,ij,ncj->nc", diff, prec, diff)
        log_mix = logsumexp(np.log(np.maximum(self.prior, 1e-300)) - 0.5 * maha_k, axis=1)
        log_soft = log_softmax(self.guidance * self.logits(u), axis=1)[np.arange(len(u)), labels]
        assert self.label_mass is not None
        return (
            log_mix - 0.5 * (rest + self._log_normaliser()) + log_soft
            - np.log(self.label_mass[labels])
        )  # fmt: skip

    def _bqb(self) -> np.ndarray:
        return self.basis.T @ self._precision(self.basis.T).T

    def _log_normaliser(self) -> float:
        d = self.basis.shape[0]
        c, p = len(self.rows), len(self.cols)
        logdet_rest = (
            p * float(np.linalg.slogdet(self.rows)[1])
            + c * float(np.linalg.slogdet(self.cols)[1])
            + float(np.linalg.slogdet(self._bqb())[1])
        )
        logdet = float(np.linalg.slogdet(self.cov)[1]) + logdet_rest
        return logdet + 2.0 * float(np.log(self.scale).sum()) + d * math.log(2 * math.pi)

    def expected_log_density(self) -> float:
        """E[log p(u | y)] for u drawn from the model itself (closed form without
        guidance; with it, the fit's Monte Carlo estimate)."""
        if self.guidance != 0 and self.expected is not None:
            return self.expected
        return -0.5 * (self.basis.shape[0] + self._log_normaliser())

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The parameters as named arrays (numbers only)."""
        out = {f"{prefix}.{a}": getattr(self, a) for a in _ARRAYS}
        out[f"{prefix}.guidance"] = np.array(self.guidance)
        if self.label_mass is not None and self.expected is not None:
            out[f"{prefix}.label_mass"] = self.label_mass
            out[f"{prefix}.expected"] = np.array(self.expected)
        return out

    @classmethod
    def from_arrays(cls, z: Mapping[str, np.ndarray], prefix: str) -> DiscriminantModel:
        """Read what :meth:`arrays` wrote."""
        fields: dict[str, Any] = {a: np.asarray(z[f"{prefix}.{a}"]) for a in _ARRAYS}
        model = cls(**fields)
        guidance = float(z[f"{prefix}.guidance"])
        if guidance == 0:
            return model
        return replace(
            model,
            guidance=guidance,
            label_mass=np.asarray(z[f"{prefix}.label_mass"]),
            expected=float(z[f"{prefix}.expected"]),
        )


_ARRAYS = ("centre", "scale", "basis", "means", "cov", "rows", "cols", "rho", "teacher", "prior")
