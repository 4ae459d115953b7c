"""Which party holds which entities and modalities: the vertical split of a data set.

A vertical federation has K parties; party ``p`` holds the modalities ``parties[p]`` of its
own entities (its rows, in its own order, each with an opaque id) and, if it is a label
party, their labels. :func:`split_parties` builds such a layout from one pooled data set for
simulations and benchmarks: a ``shared`` fraction of the entities is held by every party,
the rest by one subset of ``K - 1`` parties each (round robin), and every party shuffles its
rows. The layout is data set-up, not a privacy mechanism, so it follows ``run.seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from umbra.data.dataset import MultimodalData
from umbra.vertical.errors import VerticalError

__all__ = ["PartyData", "entity_ids", "holder_sets", "split_parties"]


@dataclass(frozen=True)
class PartyData:
    """One party's own records.

    Attributes:
        name: the party's name (``"party-0"``), used in messages and errors.
        modalities: the modalities it holds, in the data's canonical order.
        ids: one id per row (its own row order).
        features: modality -> ``(rows, *shape)`` array.
        labels: ``(rows,)`` int64 labels, or None for a party without labels.
    """

    name: str
    modalities: tuple[str, ...]
    ids: tuple[str, ...]
    features: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.modalities:
            raise VerticalError(f"{self.name} holds no modality: it has nothing to train on")
        n = len(self.ids)
        for m in self.modalities:
            if m not in self.features or len(self.features[m]) != n:
                raise VerticalError(f"{self.name}: features of {m!r} must have one row per id")
        if self.labels is not None and len(self.labels) != n:
            raise VerticalError(f"{self.name}: labels must have one entry per id")

    def __len__(self) -> int:
        return len(self.ids)


def entity_ids(n: int, seed: int) -> list[str]:
    """``n`` distinct opaque ids (random-looking hex, stable for ``seed``)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return [f"{a:016x}{b:016x}" for a, b in raw]


def holder_sets(n: int, k: int, *, shared: float, seed: int) -> np.ndarray:
    """``(n, k)`` bool: which parties hold each entity.

    ``round(shared * n)`` entities (chosen at random) are held by all ``k`` parties; entity
    ``r`` of the rest by every party but ``r mod k`` (for ``k = 2``, by one party).
    """
    if k < 2:
        raise ValueError(f"need at least 2 parties, got {k}")
    if not 0.0 <= shared <= 1.0:
        raise ValueError(f"shared must be in [0, 1], got {shared}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_shared = round(shared * n)
    held = np.ones((n, k), dtype=bool)
    rest = order[n_shared:]
    held[rest, np.arange(len(rest)) % k] = False
    return held


def split_parties(
    data: MultimodalData,
    parties: Sequence[Sequence[str]],
    label_parties: Sequence[int],
    *,
    shared: float,
    seed: int,
) -> tuple[list[PartyData], list[np.ndarray]]:
    """Split ``data`` vertically: each party's rows, features of its modalities and labels.

    Returns the parties and, per party, the row of ``data`` behind each of its rows (what
    the simulation knows and no party does: for the centralized reference and tests).
    A party's rows are in its own shuffled order; ids are shared across parties.
    """
    unknown = sorted({m for mods in parties for m in mods} - set(data.modalities))
    if unknown:
        raise VerticalError(f"vertical.parties names {unknown}, not in {list(data.modalities)}")
    k = len(parties)
    held = holder_sets(len(data), k, shared=shared, seed=seed)
    ids = entity_ids(len(data), seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    sources = []
    for p, mods in enumerate(parties):
        rows = rng.permutation(np.flatnonzero(held[:, p]))
        sources.append(rows)
        own = tuple(m for m in data.modalities if m in mods)
        out.append(
            PartyData(
                name=f"party-{p}",
                modalities=own,
                ids=tuple(ids[r] for r in rows),
                features={m: data.features[m][rows] for m in own},
                labels=data.labels[rows].copy() if p in label_parties else None,
            )
        )
    return out, sources
