"""The server's defences against poisoning organisations, as one object a strategy holds:
clip each update's norm, screen the updates for anomalies, aggregate with a robust rule.

All three need each client's update in the clear, so they run only in plaintext rounds
(the configuration refuses them with secure aggregation and with client-level DP, whose
sensitivity analysis assumes the clipped mean). The order, per round:

1. screening (:mod:`umbra.federation.detection`) of the updates as sent;
2. clipping: ``y_i ← x + Δ_i · min(1, C / ‖Δ_i‖)`` with ``Δ_i = y_i − x``, where ``C`` is
   a fixed bound or, with ``clip_updates = "median"``, the median of the round's update
   norms (Sun et al. 2019, https://arxiv.org/abs/1911.07963): the smaller half passes
   unchanged, every larger update (a scaled attacker's among them) is cut back to the
   median, and no bound has to be tuned;
3. aggregation: the modality-aware weighted mean, or a robust rule
   (:mod:`umbra.federation.strategies.robust`) per parameter group, applied to the
   updates ``Δ_i`` in float64 and added to ``x``. The rules are translation-equivariant,
   but Krum's distances are computed as ``‖a‖² + ‖b‖² − 2a·b``: on float32 models that
   cancels catastrophically (two models close together, far from the origin), while on
   the updates the distances keep their precision.

With ``bucket_size = s`` > 1 the rule of step 3 sees the means of random buckets of s
updates instead of the updates (:mod:`umbra.federation.strategies.bucketing`). With
``aggregator = "centered-clip"`` step 3 folds each update into its client's momentum and
clips the momenta around the previous aggregate
(:mod:`umbra.federation.strategies.centered_clip`; the momenta are bucketed, not the raw
updates, as in the bucketing paper).

Per-round flags are reported, not acted on. With ``reputation`` on, a client's history
decides instead (:mod:`umbra.federation.reputation`): step 1 also adds the round's scores
to each client's running means, and the clients whose means are robust outliers (after
the warm-up) are left out of steps 2 and 3 for this round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from umbra.federation.common import count_key
from umbra.federation.detection import Screening, score_updates, screen_updates
from umbra.federation.reputation import Reputation
from umbra.federation.strategies.bucketing import bucket_means, buckets
from umbra.federation.strategies.centered_clip import (
    MEDIAN_RADIUS,
    CenteredClipState,
    modality_centered_clip,
)
from umbra.federation.strategies.modality import modality_weighted_average, strip_prefix
from umbra.federation.strategies.robust import (
    AGGREGATORS,
    CENTERED_CLIP,
    modality_robust_aggregate,
)

__all__ = ["MEDIAN_BOUND", "Defence", "clip_update", "median_norm", "update_norm"]

Arrays = dict[str, np.ndarray]
#: ``clip_updates`` value that bounds each round's updates by their median norm
MEDIAN_BOUND = "median"


def update_norm(x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]) -> float:
    """``‖y − x‖₂`` over every array of ``x`` (float64)."""
    squares = (np.square(np.asarray(y[k], np.float64) - np.asarray(x[k], np.float64)) for k in x)
    return float(np.sqrt(sum(float(np.sum(sq)) for sq in squares)))


def median_norm(x: Mapping[str, np.ndarray], ys: Sequence[Mapping[str, np.ndarray]]) -> float:
    """The median of the update norms ``‖y_i − x‖`` of one round (Sun et al. 2019's bound):
    while attackers are fewer than half, it lies within the honest updates' norms."""
    if not ys:
        raise ValueError("ys: need at least one update")
    return float(np.median([update_norm(x, y) for y in ys]))


def clip_update(
    x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], max_norm: float
) -> dict[str, np.ndarray]:
    """``x + Δ · min(1, max_norm / ‖Δ‖)`` with ``Δ = y − x`` (L2 over every array of ``x``;
    arrays not in ``x`` pass unchanged)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    delta = {k: np.asarray(y[k], dtype=np.float64) - np.asarray(x[k], dtype=np.float64) for k in x}
    norm = update_norm(x, y)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    out = dict(y)
    for k, d in delta.items():
        ref = np.asarray(y[k])
        out[k] = (np.asarray(x[k], dtype=np.float64) + factor * d).astype(ref.dtype, copy=False)
    return out


@dataclass(frozen=True)
class Defence:
    """``federation.aggregator`` (+ ``trim_fraction``, ``byzantine``: the assumed number
    of attackers, also the reputation's lowest-f exclusion), ``clip_updates``
    (a bound, ``"median"``: the round's median update norm, None: off), ``detect``
    (+ ``detect_k``) and ``reputation`` (+ ``reputation_k``, ``reputation_warmup``,
    ``reputation_min_cosine``, ``reputation_max_response``,
    ``reputation_cosine_outliers``), ``centered_clip_tau`` (a radius or ``"median"``),
    ``centered_clip_iterations``, ``centered_clip_beta`` (the clients' momentum) and
    ``bucket_size`` of one run; ``seed`` (``run.seed``) draws the buckets."""

    aggregator: str = "mean"
    trim_fraction: float = 0.2
    byzantine: int = 0
    clip_updates: float | str | None = None
    detect: bool = False
    detect_k: float = 3.0
    reputation: bool = False
    reputation_k: float = 3.0
    reputation_warmup: int = 3
    reputation_min_cosine: float | None = None
    reputation_max_response: float | None = None
    reputation_cosine_outliers: bool = True
    centered_clip_tau: float | str = MEDIAN_RADIUS
    centered_clip_iterations: int = 1
    centered_clip_beta: float = 0.0
    bucket_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(
                f"unknown aggregator {self.aggregator!r}; choose one of {', '.join(AGGREGATORS)}"
            )
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, got {self.byzantine}")
        c = self.clip_updates
        if isinstance(c, str) and c != MEDIAN_BOUND:
            raise ValueError(f"clip_updates must be > 0 or {MEDIAN_BOUND!r}, got {c!r}")
        if isinstance(c, int | float) and not c > 0:
            raise ValueError(f"clip_updates must be > 0 or {MEDIAN_BOUND!r}, got {c}")
        if not self.detect_k > 0:
            raise ValueError(f"detect_k must be > 0, got {self.detect_k}")
        if not self.reputation_k > 0:
            raise ValueError(f"reputation_k must be > 0, got {self.reputation_k}")
        if self.reputation_warmup < 1:
            raise ValueError(f"reputation_warmup must be >= 1, got {self.reputation_warmup}")
        mc = self.reputation_min_cosine
        if mc is not None and not -1 <= mc < 1:
            raise ValueError(
                f"reputation_min_cosine must be in [-1, 1), got {self.reputation_min_cosine}"
            )
        mr = self.reputation_max_response
        if mr is not None and not -1 <= mr <= 1:
            raise ValueError(f"reputation_max_response must be in [-1, 1], got {mr}")
        tau = self.centered_clip_tau
        if (isinstance(tau, str) and tau != MEDIAN_RADIUS) or (
            isinstance(tau, int | float) and not tau > 0
        ):
            raise ValueError(f"centered_clip_tau must be > 0 or {MEDIAN_RADIUS!r}, got {tau!r}")
        if not 1 <= self.centered_clip_iterations <= 10:
            raise ValueError(
                f"centered_clip_iterations must be in [1, 10], got {self.centered_clip_iterations}"
            )
        if not 0 <= self.centered_clip_beta < 1:
            raise ValueError(f"centered_clip_beta must be in [0, 1), got {self.centered_clip_beta}")
        if self.bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {self.bucket_size}")
        if self.bucket_size > 1 and self.aggregator == "mean":
            raise ValueError(
                "bucket_size > 1 needs a robust aggregator: the weighted mean of bucket means "
                "is the mean"
            )

    @classmethod
    def from_federation(cls, fed: Any, *, seed: int = 0) -> Defence:
        """The defence a FederationConfig-like ``fed`` asks for (``seed``: run.seed)."""
        return cls(
            aggregator=fed.aggregator,
            trim_fraction=fed.trim_fraction,
            byzantine=fed.byzantine,
            clip_updates=fed.clip_updates,
            detect=fed.detect,
            detect_k=fed.detect_k,
            reputation=fed.reputation,
            reputation_k=fed.reputation_k,
            reputation_warmup=fed.reputation_warmup,
            reputation_min_cosine=fed.reputation_min_cosine,
            reputation_max_response=fed.reputation_max_response,
            reputation_cosine_outliers=fed.reputation_cosine_outliers,
            centered_clip_tau=fed.centered_clip_tau,
            centered_clip_iterations=fed.centered_clip_iterations,
            centered_clip_beta=fed.centered_clip_beta,
            bucket_size=fed.bucket_size,
            seed=seed,
        )

    @property
    def active(self) -> bool:
        """Whether this changes anything against plain modality-aware averaging."""
        return (
            self.aggregator != "mean"
            or self.clip_updates is not None
            or self.detect
            or self.reputation
        )

    def new_reputation(self) -> Reputation | None:
        """A fresh per-client history for a run with ``reputation`` on (None: off)."""
        if not self.reputation:
            return None
        return Reputation(
            k=self.reputation_k,
            warmup=self.reputation_warmup,
            min_cosine=self.reputation_min_cosine,
            drop_lowest=self.byzantine,
            max_response=self.reputation_max_response,
            cosine_outliers=self.reputation_cosine_outliers,
        )

    def new_centered_clip(self) -> CenteredClipState | None:
        """Fresh momenta and centre for ``aggregator = "centered-clip"`` (None: another
        rule)."""
        if self.aggregator != CENTERED_CLIP:
            return None
        return CenteredClipState(beta=self.centered_clip_beta)

    def aggregate(
        self,
        partitions: Sequence[int],
        arrays: Sequence[Arrays],
        counts: Sequence[Mapping[str, float]],
        key_modality: Callable[[str], str | None],
        previous: Mapping[str, np.ndarray],
        global_arrays: Mapping[str, np.ndarray] | None,
        reputation: Reputation | None = None,
        centered: CenteredClipState | None = None,
        server_round: int = 0,
    ) -> tuple[Arrays, Screening | None]:
        """Screen, clip and aggregate one round's updates (see the module docstring);
        ``reputation`` (the run's history, updated in place) excludes persistent
        outliers; ``centered`` (momenta and centre, updated in place; None: a fresh one)
        is centered clipping's history; ``server_round`` draws the buckets."""
        screening = None
        x = {k: v for k, v in (global_arrays or {}).items() if k in arrays[0]}
        if (self.detect or reputation is not None) and x:
            deltas = [{k: np.asarray(a[k], np.float64) - np.asarray(x[k], np.float64) for k in x}
                      for a in arrays]  # fmt: skip
            mods = {m for k in x if (m := key_modality(k)) is not None}
            holds = [{m for m in mods if float(c.get(count_key(m), 0.0)) > 0} for c in counts]
            scores = score_updates(partitions, deltas, key_modality, holds)
            screening = (
                screen_updates(scores, k=self.detect_k)
                if self.detect
                else Screening(tuple(scores), ())
            )
            if reputation is not None:
                excluded = reputation.observe(partitions, deltas)
                keep = [i for i, p in enumerate(partitions) if p not in excluded]
                screening = replace(
                    screening,
                    excluded=tuple(p for p in partitions if p in excluded),
                    reputation=reputation.rows(partitions),
                )
                if keep:  # outliers are a minority of the judged clients; never nobody
                    arrays = [arrays[i] for i in keep]
                    counts = [counts[i] for i in keep]
                    partitions = [partitions[i] for i in keep]
        if self.clip_updates is not None and x:
            bound = (
                median_norm(x, arrays)
                if self.clip_updates == MEDIAN_BOUND
                else float(self.clip_updates)
            )
            if bound > 0:  # a round where most clients sent no change clips nothing
                arrays = [clip_update(x, a, bound) for a in arrays]
        if self.aggregator == "mean":
            return modality_weighted_average(arrays, counts, key_modality, previous), screening
        if self.aggregator == CENTERED_CLIP and centered is None:
            centered = self.new_centered_clip()
        robust = self.robust(
            arrays, counts, key_modality, previous, x,
            partitions=partitions, centered=centered, server_round=server_round,
        )  # fmt: skip
        return robust, screening

    def robust(
        self,
        arrays: Sequence[Arrays],
        counts: Sequence[Mapping[str, float]],
        key_modality: Callable[[str], str | None],
        previous: Mapping[str, np.ndarray],
        x: Mapping[str, np.ndarray],
        *,
        partitions: Sequence[int] = (),
        centered: CenteredClipState | None = None,
        server_round: int = 0,
    ) -> Arrays:
        """The robust rule on the updates ``y_i − x`` (float64), added back to ``x``;
        arrays without a global value are aggregated as sent. Centered clipping takes
        the clients' momenta (``partitions`` name them in ``centered``) instead of the
        updates; with ``bucket_size`` > 1 the rule sees bucket means."""
        deltas = [
            {k: np.asarray(a[k], np.float64) - np.asarray(x[k], np.float64) if k in x else a[k]
             for k in a}
            for a in arrays
        ]  # fmt: skip
        base = {k: np.asarray(previous[k], np.float64) - np.asarray(x[k], np.float64)
                if k in x else previous[k] for k in previous}  # fmt: skip
        if centered is not None:
            deltas = [
                {**d, **centered.observe(p, _held(d, c, key_modality))}
                for p, d, c in zip(partitions or range(len(deltas)), deltas, counts, strict=True)
            ]
        if self.bucket_size > 1:
            groups = buckets(
                len(deltas), self.bucket_size, seed=self.seed, server_round=server_round
            )
            deltas, counts = bucket_means(groups, deltas, counts, key_modality, base)
        if centered is not None:
            centers = {k: centered.center_of(k, v) for k, v in deltas[0].items()}
            held = modality_centered_clip(
                deltas,
                counts,
                key_modality,
                centers,
                tau=self.centered_clip_tau,
                iterations=self.centered_clip_iterations,
            )
            centered.center = {**centered.center, **held}
            agg = {k: held[k] if k in held else base[k] for k in deltas[0]}
        else:
            agg = modality_robust_aggregate(
                self.aggregator,
                deltas,
                counts,
                key_modality,
                base,
                trim_fraction=self.trim_fraction,
                byzantine=self.byzantine,
            )
        out: Arrays = {}
        for k, v in agg.items():
            ref = np.asarray(arrays[0][k])
            total = np.asarray(x[k], np.float64) + v if k in x else v
            out[k] = np.asarray(total).astype(ref.dtype, copy=False)
        return out


def _held(
    delta: Mapping[str, np.ndarray],
    counts: Mapping[str, float],
    key_modality: Callable[[str], str | None],
) -> Arrays:
    """The arrays of ``delta`` whose parameter group the client holds this round (shared
    ones always; a modality's with ``n-<modality>`` > 0): what its momentum may learn."""
    out: Arrays = {}
    for k, v in delta.items():
        m = key_modality(strip_prefix(k))
        if m is None or float(counts.get(count_key(m), 0.0)) > 0:
            out[k] = np.asarray(v, np.float64)
    return out
