"""The synthetic-data generator: a class-conditional Gaussian per modality, low-rank plus
isotropic covariance shared by the classes, and a joint law of (class, presence pattern).

Per modality ``m`` with feature map ``u = φ_m(x)`` (:mod:`umbra.synth.feature_map`)::

    y, pattern ~ p(y, pattern)                               # the missing-modality pattern
    u | y      ~ N(μ_y, V diag(λ) Vᵀ + s (I − V Vᵀ))          # rank k, shared by classes
    x          = φ_m⁻¹(u, ρ̄_y)                                # the run's feature space

Modalities are independent given the class (naive Bayes across modalities): cross-modal
structure beyond the label is not modelled. Fitting (:meth:`GaussianGenerator.fit`) is
post-processing of the noised sums of :mod:`umbra.synth.statistics`: the class means, the
within-class scatter ``(Σ u uᵀ − Σ_y n_y μ_y μ_yᵀ) / n``, its top-``k`` eigenpairs, and
the mean of the rest of its trace as ``s``; this is linear discriminant analysis' model
(a shared covariance), which a linear classifier trained on its samples recovers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umbra.data.dataset import MultimodalData
from umbra.synth.discriminant import DiscriminantModel
from umbra.synth.feature_map import FeatureMap
from umbra.synth.statistics import SufficientStatistics

__all__ = ["MODEL_KINDS", "GaussianGenerator", "ModalityModel"]

#: Smallest variance kept (in units of the unit-norm feature map), so that a noise-swamped
#: spectrum still gives a proper density.
MIN_VARIANCE = 1e-6


@dataclass(frozen=True)
class ModalityModel:
    """One modality's class-conditional Gaussian in its feature-map space.

    Attributes:
        means: ``(K, D)`` class means μ_y.
        rho: ``(K,)`` class mean of the norm ratio ρ (the scale, see ``FeatureMap``).
        basis: ``(D, k)`` orthonormal principal directions V.
        variances: ``(k,)`` variances λ along them (each ≥ ``residual``).
        residual: the isotropic variance s of the other ``D − k`` directions.
    """

    means: np.ndarray
    rho: np.ndarray
    basis: np.ndarray
    variances: np.ndarray
    residual: float

    kind = "gaussian"

    @classmethod
    def fit(
        cls, sums: np.ndarray, tallies: np.ndarray, second: np.ndarray, rank: int
    ) -> ModalityModel:
        """From noised ``(K, D)`` class sums Σu, ``(K, 2)`` class counts and Σρ, and
        ``(D, D)`` Σ u uᵀ."""
        d = sums.shape[1]
        counts = np.maximum(tallies[:, 0], 1.0)  # (K,)
        means = sums / counts[:, None]
        rho = np.clip(tallies[:, 1] / counts, 0.0, 1.0)
        sym = (second + second.T) / 2
        scatter = (sym - (means.T * counts) @ means) / counts.sum()  # (D, D) within-class
        lam, vec = np.linalg.eigh(scatter)
        order = np.argsort(lam)[::-1]
        k = min(rank, d - 1) if d > 1 else 0
        top = np.maximum(lam[order[:k]], 0.0)
        rest = (float(np.trace(scatter)) - float(top.sum())) / max(d - k, 1)
        residual = max(rest, MIN_VARIANCE)
        return cls(means, rho, vec[:, order[:k]], np.maximum(top, residual), residual)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(N, D)`` draws of ``u`` for classes ``labels``."""
        n, d = len(labels), self.means.shape[1]
        z = rng.standard_normal((n, len(self.variances))) * np.sqrt(
            self.variances - self.residual
        )  # (N, k)
        return (
            self.means[labels]
            + z @ self.basis.T
            + rng.standard_normal((n, d)) * math.sqrt(self.residual)
        )

    def log_density(self, u: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(N,)`` log N(u; μ_y, Σ) (Woodbury: the rank-k part and the isotropic rest)."""
        diff = u - self.means[labels]  # (N, D)
        proj = diff @ self.basis  # (N, k)
        s = self.residual
        maha = (diff**2).sum(axis=1) / s - (proj**2 * (1 / s - 1 / self.variances)).sum(axis=1)
        return -0.5 * (maha + self._log_normaliser())

    def _log_normaliser(self) -> float:
        d, k = self.means.shape[1], len(self.variances)
        logdet = float(np.log(self.variances).sum()) + (d - k) * math.log(self.residual)
        return logdet + d * math.log(2 * math.pi)

    def expected_log_density(self) -> float:
        """E[log N(u; μ_y, Σ)] for u drawn from the model itself (Mahalanobis² averages D)."""
        return -0.5 * (self.means.shape[1] + self._log_normaliser())

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The parameters as named arrays (numbers only)."""
        return {
            f"{prefix}.means": self.means,
            f"{prefix}.rho": self.rho,
            f"{prefix}.basis": self.basis,
            f"{prefix}.variances": self.variances,
            f"{prefix}.residual": np.array(self.residual),
        }

    @classmethod
    def from_arrays(cls, z: Mapping[str, np.ndarray], prefix: str) -> ModalityModel:
        """Read what :meth:`arrays` wrote."""
        return cls(
            z[f"{prefix}.means"],
            z[f"{prefix}.rho"],
            z[f"{prefix}.basis"],
            z[f"{prefix}.variances"],
            float(z[f"{prefix}.residual"]),
        )


#: The kinds of per-modality model a generator holds, by :attr:`kind`.
MODEL_KINDS: dict[str, type[ModalityModel] | type[DiscriminantModel]] = {
    "gaussian": ModalityModel,
    "discriminant": DiscriminantModel,
}


@dataclass(frozen=True)
class GaussianGenerator:
    """Class-conditional Gaussians of every modality and the (class, pattern) law.

    Attributes:
        modalities, class_names: as the run's data.
        maps: modality -> its feature map.
        models: modality -> its :class:`ModalityModel` or
            :class:`~umbra.synth.discriminant.DiscriminantModel`.
        joint: ``(K, 2^M)`` probabilities of (class, presence pattern); pattern 0 (no
            modality) has probability 0.
    """

    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    maps: dict[str, FeatureMap]
    models: dict[str, ModalityModel | DiscriminantModel]
    joint: np.ndarray

    @classmethod
    def fit(
        cls,
        stats: SufficientStatistics,
        maps: Mapping[str, FeatureMap],
        class_names: Sequence[str],
        *,
        rank: int,
    ) -> GaussianGenerator:
        """The generator of noised statistics (post-processing: no privacy spent here)."""
        models = {
            m: ModalityModel.fit(stats.means[m], stats.counts[m], stats.covs[m], rank) for m in maps
        }
        return cls.from_models(maps, class_names, models, stats.patterns)

    @classmethod
    def from_models(
        cls,
        maps: Mapping[str, FeatureMap],
        class_names: Sequence[str],
        models: Mapping[str, ModalityModel | DiscriminantModel],
        patterns: np.ndarray,
    ) -> GaussianGenerator:
        """The generator of fitted ``models`` and noised ``(K, 2^M)`` pattern counts."""
        joint = np.maximum(patterns, 0.0)
        joint[:, 0] = 0.0
        if joint.sum() <= 0:
            joint = np.ones_like(joint)
            joint[:, 0] = 0.0
        return cls(tuple(maps), tuple(class_names), dict(maps), dict(models), joint / joint.sum())

    def sample(self, n: int, rng: np.random.Generator) -> MultimodalData:
        """``n`` synthetic records in the run's feature space, with their presence mask.

        ``rng`` may be seeded: sampling from the released generator is post-processing,
        and its randomness protects nobody.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        k, p = self.joint.shape
        cell = rng.choice(k * p, size=n, p=self.joint.ravel())
        labels, patterns = cell // p, cell % p
        mask = (patterns[:, None] >> np.arange(len(self.modalities))) & 1 == 1  # (N, M)
        features: dict[str, np.ndarray] = {}
        for j, m in enumerate(self.modalities):
            u = self.models[m].sample(labels, rng)
            x = self.maps[m].inverse(u, self.models[m].rho[labels])
            x[~mask[:, j]] = 0.0
            features[m] = x
        return MultimodalData(
            features, mask, labels.astype(np.int64), self.modalities, self.class_names
        )

    def density_score(self, data: MultimodalData) -> np.ndarray:
        """``(N,)`` Σ over each record's present modalities of ``log p(u | y)`` minus its
        expectation under the model (``−½(Mahalanobis² − D)``), so that a record is not
        scored lower or higher for the modalities it lacks."""
        out = np.zeros(len(data))
        for j, m in enumerate(self.modalities):
            have = data.mask[:, j]
            if have.any():
                u, _ = self.maps[m].forward(np.asarray(data.features[m])[have])
                model = self.models[m]
                expected = model.expected_log_density()
                out[have] += model.log_density(u, data.labels[have]) - expected
        return out

    def save(self, path: Path) -> None:
        """Write the parameters as one ``.npz`` (numbers only, no pickles)."""
        arrays: dict[str, np.ndarray] = {"joint": self.joint}
        for m, mod in self.models.items():
            arrays.update(mod.arrays(m))
        meta = {
            "modalities": list(self.modalities),
            "class_names": list(self.class_names),
            "maps": {m: {"shape": list(f.shape), "pool": f.pool} for m, f in self.maps.items()},
            "models": {m: mod.kind for m, mod in self.models.items()},
        }
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, path: Path) -> GaussianGenerator:
        """Read what :meth:`save` wrote."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            maps = {m: FeatureMap(tuple(v["shape"]), v["pool"]) for m, v in meta["maps"].items()}
            kinds = meta.get("models", {})
            models = {m: MODEL_KINDS[kinds.get(m, "gaussian")].from_arrays(z, m) for m in maps}
            return cls(
                tuple(meta["modalities"]), tuple(meta["class_names"]), maps, models, z["joint"]
            )
