"""The in-memory multimodal data set every layer above `data` works with.

A record has a label and, per modality, a feature array that may be missing. Missing
features are stored as zeros and flagged in ``mask`` so that batches stay rectangular.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MODALITIES", "MultimodalData", "modality_subsets"]

#: Every modality Umbra knows, in canonical order. A data set uses an ordered subset.
MODALITIES: tuple[str, ...] = ("image", "audio", "text", "tabular")


@dataclass(frozen=True)
class MultimodalData:
    """Records with per-modality features, a presence mask and integer labels.

    Attributes:
        features: modality -> float array of shape ``(N, *feature_shape)``; rows whose
            modality is missing hold zeros.
        mask: bool array ``(N, M)``; ``mask[i, j]`` says record i has ``modalities[j]``.
        labels: int64 array ``(N,)`` with values in ``[0, num_classes)``.
        modalities: the modalities of this data set, in canonical order.
        class_names: one name per class.
    """

    features: dict[str, np.ndarray]
    mask: np.ndarray
    labels: np.ndarray
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    ids: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.mask.shape != (n, len(self.modalities)):
            raise ValueError(f"mask shape {self.mask.shape} != ({n}, {len(self.modalities)})")
        for m in self.modalities:
            if m not in self.features:
                raise ValueError(f"features lack modality {m!r}")
            if len(self.features[m]) != n:
                raise ValueError(f"features[{m!r}] has {len(self.features[m])} rows, not {n}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample feature shape of each modality."""
        return {m: tuple(self.features[m].shape[1:]) for m in self.modalities}

    def modality_index(self, modality: str) -> int:
        return self.modalities.index(modality)

    def counts(self) -> dict[str, int]:
        """Number of records holding each modality."""
        return {m: int(self.mask[:, j].sum()) for j, m in enumerate(self.modalities)}

    def subset(self, idx: np.ndarray | Sequence[int]) -> MultimodalData:
        """Rows ``idx`` (copies for fancy indexing, views for slices)."""
        idx = np.asarray(idx)
        return MultimodalData(
            features={m: self.features[m][idx] for m in self.modalities},
            mask=self.mask[idx],
            labels=self.labels[idx],
            modalities=self.modalities,
            class_names=self.class_names,
            ids=None if self.ids is None else self.ids[idx],
        )

    def with_mask(self, mask: np.ndarray) -> MultimodalData:
        """The same records with a new presence mask; features of absent cells are zeroed."""
        mask = np.asarray(mask, dtype=bool)
        feats = {}
        for j, m in enumerate(self.modalities):
            f = self.features[m]
            keep = mask[:, j].reshape((-1,) + (1,) * (f.ndim - 1))
            feats[m] = np.where(keep, f, np.zeros((), dtype=f.dtype))
        return MultimodalData(feats, mask, self.labels, self.modalities, self.class_names, self.ids)


def modality_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` (in canonical order), smallest first."""
    mods = list(modalities)
    out: list[tuple[str, ...]] = []
    for bits in range(1, 2 ** len(mods)):
        out.append(tuple(m for k, m in enumerate(mods) if bits >> k & 1))
    out.sort(key=lambda s: (len(s), [mods.index(m) for m in s]))
    return out
