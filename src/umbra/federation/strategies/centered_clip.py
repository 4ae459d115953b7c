"""Centered clipping with momentum (Karimireddy, He, Jaggi, "Learning from History for
Byzantine Robust Optimization", ICML 2021, https://arxiv.org/abs/2012.10333).

The aggregate starts at a centre ``v`` (the previous round's aggregate update) and moves
by the mean of the clients' deviations from it, each clipped to a radius ``τ``::

    v ← v + Σ_i w_i · clip_τ(m_i − v) / Σ_i w_i,   clip_τ(z) = z · min(1, τ / ‖z‖)

iterated ``l`` times. A client can move the aggregate by at most ``w_i · τ / Σ w`` per
iteration whatever it sends, so a minority of attackers shifts it by a bounded amount,
while honest inputs closer to the centre than ``τ`` are averaged unchanged (with τ = ∞
and one iteration this is the weighted mean).

``m_i`` is client i's **momentum**: ``m_i ← β · m_i + (1 − β) · Δ_i`` over the rounds it
took part in (the paper's Algorithm 2, worker momentum β = 0.9). The paper's workers
keep it; here the server keeps it from the updates it receives, so an attacking
organisation cannot opt out: an honest organisation's round-to-round noise averages out
of its momentum, while a persistent attacker's stays where its updates point. The
aggregate is the model's step and the next round's centre, so with β > 0 the step is an
average of past updates and lags the model; β = 0 (the default, which did best in
docs/robustness.md's runs) clips the updates themselves around the previous aggregate.

``τ`` is a number (in the units of the update's L2 norm, per parameter group), or
``"median"``: the median of the distances ``‖m_i − v‖`` at each iteration. It is
scale-free (update norms shrink over training, a fixed τ would clip everything early
and nothing late) and, while attackers are fewer than half, lies within the honest
distances: the closer half passes unchanged and every farther input, an attacker's among
them, is pulled in to the median distance (the logic of median norm clipping, Sun et
al. 2019).

:func:`centered_clip` and :func:`momentum_step` are pure; :class:`CenteredClipState`
holds the momenta and the centre between rounds and is checkpointed with the strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from umbra.federation.common import NUM_EXAMPLES, count_key
from umbra.federation.strategies.modality import strip_prefix

__all__ = [
    "MEDIAN_RADIUS",
    "CenteredClipState",
    "centered_clip",
    "clip_radius",
    "modality_centered_clip",
    "momentum_step",
]

#: ``centered_clip_tau`` value: the median distance to the centre at each iteration
MEDIAN_RADIUS = "median"
_MOMENTUM = "centered-clip/momentum/"
_CENTER = "centered-clip/center/"

Arrays = dict[str, np.ndarray]


def clip_radius(tau: float | str, distances: np.ndarray) -> float:
    """The radius of one iteration: ``tau`` itself, or the median of ``distances`` for
    ``tau = "median"``."""
    if tau == MEDIAN_RADIUS:
        return float(np.median(distances))
    if isinstance(tau, str) or not tau > 0:
        raise ValueError(f"tau must be > 0 or {MEDIAN_RADIUS!r}, got {tau!r}")
    return float(tau)


def centered_clip(
    inputs: np.ndarray,
    weights: Sequence[float] | np.ndarray,
    center: np.ndarray,
    *,
    tau: float | str,
    iterations: int = 1,
) -> np.ndarray:
    """Centered clipping of ``inputs`` (n, D) around ``center`` (D,): ``iterations``
    times ``v ← v + Σ w_i clip_τ(x_i − v) / Σ w_i`` (float64). ``weights`` (n,) are ≥ 0
    with a positive sum; ``tau`` a radius > 0 (``np.inf``: no clipping) or ``"median"``."""
    x = np.asarray(inputs, dtype=np.float64)  # (n, D)
    w = np.asarray(weights, dtype=np.float64)  # (n,)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"inputs must be (n, D) with n >= 1, got shape {x.shape}")
    if w.shape != (len(x),) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights: one non-negative weight per input, with a positive sum")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    v = np.asarray(center, dtype=np.float64).copy()  # (D,)
    if v.shape != x.shape[1:]:
        raise ValueError(f"center has shape {v.shape}, inputs {x.shape[1:]}")
    for _ in range(iterations):
        dev = x - v  # (n, D)
        dist = np.linalg.norm(dev, axis=1)  # (n,)
        radius = clip_radius(tau, dist)
        if radius <= 0:  # at least half the inputs sit on the centre: it stays
            break
        scale = np.minimum(1.0, radius / np.maximum(dist, np.finfo(np.float64).tiny))  # (n,)
        v = v + (w * scale) @ dev / w.sum()
    return v


def modality_centered_clip(
    inputs: Sequence[Mapping[str, np.ndarray]],
    counts: Sequence[Mapping[str, float]],
    key_modality: Callable[[str], str | None],
    centers: Mapping[str, np.ndarray],
    *,
    tau: float | str,
    iterations: int = 1,
) -> dict[str, np.ndarray]:
    """:func:`centered_clip` per parameter group, as modality-aware averaging groups
    them: each modality's arrays over the clients with ``n-<modality>`` > 0 (weights:
    those counts), shared arrays over all (weights: ``num-examples``); one distance and
    one radius per group. ``centers`` holds every name. A group nobody holds is left out
    of the result (its parameters keep their value, its centre stays). float64 results."""
    if not inputs:
        raise ValueError("inputs: need at least one client")
    if len(inputs) != len(counts):
        raise ValueError(f"inputs ({len(inputs)}) and counts ({len(counts)}) differ in length")
    groups: dict[str | None, list[str]] = {}
    for key in inputs[0]:
        groups.setdefault(key_modality(strip_prefix(key)), []).append(key)
    out: dict[str, np.ndarray] = {}
    for modality, keys in groups.items():
        wkey = NUM_EXAMPLES if modality is None else count_key(modality)
        weights = np.array([float(c.get(wkey, 0.0)) for c in counts])  # (n,)
        holders = [int(i) for i in np.flatnonzero(weights > 0)]
        if len(holders) == 0:
            continue
        shapes = [np.shape(centers[k]) for k in keys]
        flat = np.stack([np.concatenate([np.ravel(inputs[i][k]) for k in keys])
                         for i in holders]).astype(np.float64)  # fmt: skip  # (h, D)
        center = np.concatenate([np.ravel(centers[k]) for k in keys])  # (D,)
        v = centered_clip(flat, weights[holders], center, tau=tau, iterations=iterations)
        start = 0
        for k, shape in zip(keys, shapes, strict=True):
            size = int(np.prod(shape))
            out[k] = v[start : start + size].reshape(shape)
            start += size
    return {k: out[k] for k in inputs[0] if k in out}


def momentum_step(previous: np.ndarray | None, update: np.ndarray, beta: float) -> np.ndarray:
    """``β · previous + (1 − β) · update``; a client's first update is its momentum
    (no zero start, whose bias would shrink early rounds)."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    u = np.asarray(update, dtype=np.float64)
    if previous is None:
        return u.copy()
    return beta * np.asarray(previous, dtype=np.float64) + (1.0 - beta) * u


class CenteredClipState:
    """The server's history for centered clipping: each client's momentum per array
    (name -> float64 array, only for the parameter groups it has held) and the previous
    aggregate update (the centre; zero before the first round). Checkpointed as arrays."""

    def __init__(self, *, beta: float = 0.0) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"centered-clip beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.momenta: dict[int, Arrays] = {}
        self.center: Arrays = {}

    def observe(self, partition: int, update: Mapping[str, np.ndarray]) -> Arrays:
        """Fold one client's update (name -> Δ) into its momentum; returns the momentum
        of those names. With β = 0 that is the update, and nothing is kept (no n
        model-sized arrays in every round's checkpoint)."""
        if self.beta == 0:
            return {k: np.asarray(d, np.float64) for k, d in update.items()}
        own = self.momenta.setdefault(int(partition), {})
        for k, d in update.items():
            own[k] = momentum_step(own.get(k), d, self.beta)
        return {k: own[k] for k in update}

    def center_of(self, key: str, like: np.ndarray) -> np.ndarray:
        """The centre for array ``key`` (zeros shaped like ``like`` before any round)."""
        c = self.center.get(key)
        return np.zeros(np.shape(like), np.float64) if c is None else c

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Momenta and centre as checkpointable arrays (empty before the first round)."""
        out = {f"{_CENTER}{k}": v for k, v in self.center.items()}
        for pid, arrays in self.momenta.items():
            out |= {f"{_MOMENTUM}{pid}/{k}": v for k, v in arrays.items()}
        return out

    def load_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` returned (other keys are ignored)."""
        self.center = {
            k[len(_CENTER) :]: np.asarray(v, np.float64)
            for k, v in state.items()
            if k.startswith(_CENTER)
        }
        self.momenta = {}
        for k, v in state.items():
            if k.startswith(_MOMENTUM):
                pid, name = k[len(_MOMENTUM) :].split("/", 1)
                self.momenta.setdefault(int(pid), {})[name] = np.asarray(v, np.float64)
