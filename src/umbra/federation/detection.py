"""Anomaly scores of individual client updates and a robust rule that flags outliers.

Runs on the server and needs every client's update in the clear: it cannot run under
secure aggregation (docs/robustness.md). Pure functions, no Flower.

Each update is the delta ``Δ_i = y_i − x`` of client i's returned model from the global
one. Its scores: the L2 norm, the cosine to the coordinate-wise median of all deltas of
the round (a reference the attackers cannot drag far while they are a minority) and the
L2 norm per modality (clients holding it). A client is flagged when its log-norm lies
more than ``k`` robust deviations above the round's median, or its cosine more than
``k`` robust deviations below the median cosine; a robust deviation is 1.4826 · MAD
(the standard deviation for Gaussian data), floored so that a tight honest cluster does
not turn small differences into outliers (a norm ≥ e^(0.25 k) times the median, a cosine
≥ 0.1 k below it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "COSINE_FLOOR",
    "LOG_NORM_FLOOR",
    "Screening",
    "UpdateScore",
    "detection_quality",
    "flatten_updates",
    "robust_z",
    "score_updates",
    "screen_updates",
]

#: minimum robust deviation of the log-norms (a factor e^0.25 ≈ 1.28 per unit of k)
LOG_NORM_FLOOR = 0.25
#: minimum robust deviation of the cosines
COSINE_FLOOR = 0.1
#: MAD -> standard deviation for Gaussian data
_MAD_SCALE = 1.4826


@dataclass(frozen=True)
class UpdateScore:
    """One client's update in one round: L2 norm, cosine to the median delta, and the
    L2 norm of each modality's parameters it holds."""

    partition: int
    norm: float
    cosine: float
    modality_norms: dict[str, float]

    def row(self) -> dict[str, object]:
        return {
            "norm": round(self.norm, 6),
            "cosine": round(self.cosine, 6),
            "modality_norms": {m: round(v, 6) for m, v in self.modality_norms.items()},
        }


@dataclass(frozen=True)
class Screening:
    """A round's scores and the partition ids the rule flagged (sorted); with a
    reputation (:mod:`umbra.federation.reputation`), the partition ids it excluded from
    this round's aggregate and the clients' reputations (partition id as text -> row)."""

    scores: tuple[UpdateScore, ...]
    flagged: tuple[int, ...]
    excluded: tuple[int, ...] = ()
    reputation: dict[str, dict[str, float | int]] = field(default_factory=dict)

    @property
    def partitions(self) -> tuple[int, ...]:
        return tuple(s.partition for s in self.scores)


def robust_z(values: Sequence[float], *, floor: float) -> np.ndarray:
    """(value − median) / max(1.4826 · MAD, floor) for each value."""
    v = np.asarray(values, dtype=np.float64)
    med = np.median(v)
    spread = max(_MAD_SCALE * float(np.median(np.abs(v - med))), floor)
    return np.asarray((v - med) / spread)


def flatten_updates(
    partitions: Sequence[int], deltas: Sequence[Mapping[str, np.ndarray]]
) -> np.ndarray:
    """The clients' deltas (name -> array, the same names for every client, in the first
    one's order) as rows of one float64 matrix ``(n, D)``; ValueError when the counts of
    partitions and deltas differ."""
    if len(partitions) != len(deltas):
        raise ValueError(f"partitions ({len(partitions)}) and deltas ({len(deltas)}) differ")
    if not deltas:
        return np.zeros((0, 0))
    keys = list(deltas[0])
    return np.stack(
        [np.concatenate([np.ravel(np.asarray(d[k], dtype=np.float64)) for k in keys])
         for d in deltas]
    )  # fmt: skip


def score_updates(
    partitions: Sequence[int],
    deltas: Sequence[Mapping[str, np.ndarray]],
    key_modality: Callable[[str], str | None],
    holds: Sequence[Iterable[str]] | None = None,
) -> list[UpdateScore]:
    """Scores of each client's delta (name -> array; same names for every client).

    ``holds``: the modalities each client holds (default: every modality); per-modality
    norms are given only for those.
    """
    flat = flatten_updates(partitions, deltas)  # (n, D)
    if len(flat) == 0:
        return []
    keys = list(deltas[0])
    reference = np.median(flat, axis=0)  # (D,)
    ref_norm = float(np.linalg.norm(reference))
    norms = np.linalg.norm(flat, axis=1)
    by_modality: dict[str, list[str]] = {}
    for k in keys:
        if (m := key_modality(k)) is not None:
            by_modality.setdefault(m, []).append(k)
    out = []
    for i, (pid, d) in enumerate(zip(partitions, deltas, strict=True)):
        denom = float(norms[i]) * ref_norm
        cosine = float(flat[i] @ reference / denom) if denom > 0 else 0.0
        held = set(by_modality) if holds is None else set(holds[i])
        mod_norms = {
            m: float(np.sqrt(sum(float(np.sum(np.square(d[k], dtype=np.float64))) for k in ks)))
            for m, ks in sorted(by_modality.items())
            if m in held
        }
        out.append(UpdateScore(int(pid), float(norms[i]), cosine, mod_norms))
    return out


def screen_updates(scores: Sequence[UpdateScore], *, k: float = 3.0) -> Screening:
    """Flag the clients whose norm is far above, or whose cosine is far below, the rest
    (see the module docstring). Fewer than three updates: nobody is flagged."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if len(scores) < 3:
        return Screening(tuple(scores), ())
    log_norms = [float(np.log(max(s.norm, 1e-12))) for s in scores]
    z_norm = robust_z(log_norms, floor=LOG_NORM_FLOOR)
    z_cos = robust_z([s.cosine for s in scores], floor=COSINE_FLOOR)
    flagged = sorted(
        s.partition for s, zn, zc in zip(scores, z_norm, z_cos, strict=True) if zn > k or zc < -k
    )
    return Screening(tuple(scores), tuple(flagged))


def detection_quality(
    rounds: Iterable[tuple[Iterable[int], Iterable[int]]], attackers: Iterable[int]
) -> dict[str, float | int | None]:
    """Precision and recall of flagging over (round, client) pairs.

    ``rounds``: per round, (the partition ids screened, the ones flagged). A true positive
    is a flagged attacker; recall counts every screened attacker-round. None where the
    ratio is undefined (nothing flagged; no attacker took part).
    """
    bad = set(attackers)
    tp = fp = fn = tn = 0
    for screened, flagged in rounds:
        f = set(flagged)
        for pid in set(screened):
            if pid in bad:
                tp, fn = (tp + 1, fn) if pid in f else (tp, fn + 1)
            else:
                fp, tn = (fp + 1, tn) if pid in f else (fp, tn + 1)
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
    }
