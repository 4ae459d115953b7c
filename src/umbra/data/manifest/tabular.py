"""Tabular statistics of one partition, and standardisation that never pools raw values
across organisations (see :mod:`umbra.data.manifest` for why DP forbids both)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umbra.data.dataset import MultimodalData
from umbra.data.manifest.load import client_indices
from umbra.errors import DataError

__all__ = [
    "TabularMoments",
    "moments_by_client",
    "public_moments",
    "read_tabular_stats",
    "standardize_tabular",
    "tabular_moments",
    "tabular_stats_table",
]


@dataclass(frozen=True)
class TabularMoments:
    """Sufficient statistics of one partition's tabular features.

    ``count`` records, per-feature ``total`` (sum) and ``total_sq`` (sum of squares), all
    float64. Moments add: the moments of a union of partitions are the sum of their
    moments, which is what secure aggregation computes from each client's vector
    (:meth:`to_vector`) without revealing any single client's.
    """

    count: float
    total: np.ndarray
    total_sq: np.ndarray

    def __add__(self, other: TabularMoments) -> TabularMoments:
        return TabularMoments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    @property
    def mean(self) -> np.ndarray:
        """Per-feature mean (zeros when ``count`` is 0)."""
        return self.total / self.count if self.count > 0 else np.zeros_like(self.total)

    @property
    def std(self) -> np.ndarray:
        """Per-feature population standard deviation (``E[x²] − E[x]²``, clipped at 0)."""
        if self.count <= 0:
            return np.zeros_like(self.total)
        var = self.total_sq / self.count - self.mean**2
        return np.sqrt(np.maximum(var, 0.0))

    def to_vector(self) -> np.ndarray:
        """``[count, total..., total_sq...]`` (float64, length 2D+1) for vector aggregation."""
        return np.concatenate([[self.count], self.total, self.total_sq]).astype(np.float64)

    @classmethod
    def from_vector(cls, vec: np.ndarray) -> TabularMoments:
        """Inverse of :meth:`to_vector` (also for a sum of such vectors)."""
        vec = np.asarray(vec, dtype=np.float64)
        if vec.ndim != 1 or len(vec) % 2 != 1:
            raise ValueError(f"vec must be 1-D with odd length 2D+1, got shape {vec.shape}")
        d = (len(vec) - 1) // 2
        return cls(float(vec[0]), vec[1 : 1 + d].copy(), vec[1 + d :].copy())


def tabular_moments(values: np.ndarray, present: np.ndarray) -> TabularMoments:
    """(count, sum, sum of squares) of the rows of ``values`` (N, D) where ``present`` (N,)."""
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if values.ndim != 2 or present.shape != (len(values),):
        raise ValueError(
            f"values must be (N, D) and present (N,), got {values.shape} and {present.shape}"
        )
    x = values[present]
    return TabularMoments(float(len(x)), x.sum(axis=0), (x * x).sum(axis=0))


def moments_by_client(data: MultimodalData, clients: Sequence[str]) -> dict[str, TabularMoments]:
    """Each client's :func:`tabular_moments` (computed on that client's records only)."""
    if "tabular" not in data.modalities:
        raise ValueError("data has no 'tabular' modality")
    if len(clients) != len(data):
        raise ValueError(f"clients has {len(clients)} entries, data has {len(data)} records")
    j = data.modality_index("tabular")
    x = data.features["tabular"]
    return {
        c: tabular_moments(x[ix], data.mask[ix, j]) for c, ix in client_indices(clients).items()
    }


def public_moments(mean: Sequence[float], std: Sequence[float]) -> TabularMoments:
    """Fixed :class:`TabularMoments` whose ``mean`` and ``std`` are the given public values
    (no record enters them)."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    if m.shape != s.shape or m.ndim != 1:
        raise ValueError(f"mean and std must be 1-D of one length, got {m.shape} and {s.shape}")
    if not np.all(np.isfinite(m)) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("public statistics must be finite with std > 0")
    return TabularMoments(1.0, m, s * s + m * m)


def tabular_stats_table(
    stats: str | Mapping[str, Sequence[float]], columns: Sequence[str], *, base: Path | None = None
) -> dict[str, list[float]]:
    """Public ``{column: [mean, std]}`` for the manifest's ``tab:`` ``columns`` (feature
    order, names as in the manifest), checked, values as given.

    Args:
        stats: ``{name: [mean, std]}`` (``name`` with or without the ``tab:`` prefix), or
            the path of a JSON file holding that object (relative to ``base``).
        columns: the tabular column names in feature order.

    Raises:
        DataError: unreadable file, a column without statistics, or a malformed entry.
    """
    if isinstance(stats, str):
        path = Path(stats)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"data.tabular_stats: cannot read {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise DataError(f"data.tabular_stats: {path} must hold a JSON object")
        stats = loaded
    table = {k.removeprefix("tab:"): v for k, v in stats.items()}
    names = [c.removeprefix("tab:") for c in columns]
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"data.tabular_stats has no [mean, std] for column(s) {missing}")
    try:
        pairs = {
            c: [float(table[n][0]), float(table[n][1])] for c, n in zip(columns, names, strict=True)
        }
        public_moments([p[0] for p in pairs.values()], [p[1] for p in pairs.values()])
    except (TypeError, IndexError, ValueError, KeyError) as err:
        raise DataError(f"data.tabular_stats: {err}") from None
    return pairs


def read_tabular_stats(
    stats: str | Mapping[str, Sequence[float]], columns: Sequence[str], *, base: Path | None = None
) -> TabularMoments:
    """Public per-column ``[mean, std]`` (:func:`tabular_stats_table`) as fixed moments."""
    pairs = tabular_stats_table(stats, columns, base=base)
    return public_moments([p[0] for p in pairs.values()], [p[1] for p in pairs.values()])


def standardize_tabular(
    data: MultimodalData, moments: TabularMoments | None = None, *, min_std: float = 1e-6
) -> MultimodalData:
    """Standardise the tabular modality to zero mean and unit variance.

    Args:
        data: one partition (typically one client's records).
        moments: the statistics to use; None means ``data``'s own (per-client
            standardisation). Pass the securely aggregated sum of all clients' moments
            for global standardisation.
        min_std: a feature whose standard deviation is below this is only centred
            (divided by 1), so constant columns do not blow up. Must be > 0.

    Returns:
        A new ``MultimodalData``; absent tabular cells stay zero. ``data`` is returned
        unchanged when it has no tabular modality.
    """
    if not min_std > 0:
        raise ValueError(f"min_std must be > 0, got {min_std}")
    if "tabular" not in data.modalities:
        return data
    j = data.modality_index("tabular")
    x = data.features["tabular"]
    present = data.mask[:, j]
    if moments is None:
        moments = tabular_moments(x, present)
    if moments.total.shape != (x.shape[1],):
        raise ValueError(f"moments have {moments.total.shape[0]} features, data {x.shape[1]}")
    std = moments.std
    scale = np.where(std < min_std, 1.0, std)
    z = ((x - moments.mean) / scale).astype(x.dtype)
    z[~present] = 0
    feats = dict(data.features)
    feats["tabular"] = z
    return MultimodalData(
        feats, data.mask, data.labels, data.modalities, data.class_names, data.ids
    )
