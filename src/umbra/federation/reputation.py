"""A per-client reputation over rounds: who keeps disagreeing with the federation.

Runs on the server and needs every client's update in the clear (it cannot run under
secure aggregation or client-level DP; docs/robustness.md). Per-round screening
(:mod:`umbra.federation.detection`) judges one round at a time; late in training an
honest update is mostly its client's heterogeneous part, so one round's cosine cannot
tell a sign-flipped update from an honest one. Attackers are persistent, though: an
honest organisation agrees with the round's robust direction *on average over rounds*,
a sign-flipper disagrees every round. The reputation keeps, per client, the running means
of two per-round scores (:func:`round_scores`):

* ``cosine``: the cosine of its update to the coordinate-wise median of the *other*
  clients' updates of the round (a reference a minority of attackers cannot drag far).
  Leaving the client out matters when updates are heterogeneous: each update is one of
  only n values per coordinate, so it pulls the median towards itself, and with the
  client in the reference a flipped update still scores a positive cosine on average —
  the bias the per-round screening's cosine carries;
* ``log_norm``: ``log(‖Δ_i‖ / median_j ‖Δ_j‖)``, its update's size against the round's;
* ``response`` (only with the response rule on): how its update *changed* since the
  previous round, against the step ``s`` the others' previous updates took the model
  in between: ``cos(Δ_i(t) − Δ_i(t−1), mean_{j≠i} Δ_j(t−1))``
  (:func:`round_responses`). An honest organisation's update is a descent step on its
  own loss, ``Δ_i(x) ≈ −η ∇L_i(x)``, so after the step ``s`` it changes by
  ``≈ −η H_i s``, whose inner product with ``s`` is ``−η sᵀ H_i s ≤ 0`` near a minimum
  (a positive semi-definite local Hessian): the response is negative. A sign-flipper
  sends ``−Δ_a``, an *ascent* step, which changes by ``+η H_a s``: positive. The sign
  holds under label skew, where cosines do not (late in training every honest update
  points away from the others'), and the noise between two rounds' updates is nearly
  orthogonal to ``s`` in many dimensions, so the mean over rounds separates the two.
  This is FLDetector's consistency check (Zhang et al., KDD 2022: a client's update
  should follow ``g(t) ≈ g(t−1) + H (x_t − x_{t−1})``) reduced to the sign of its
  projection on the step, which needs no Hessian estimate.

After ``warmup`` observations, a client is excluded from aggregation while

* its mean cosine lies more than ``k`` robust deviations below the clients' median
  (``cosine_outliers``, on by default);
* or its mean log-norm lies more than ``k`` robust deviations above the clients' median;
* or, with ``drop_lowest = f`` > 0 (the run's assumed number of attackers,
  ``federation.byzantine``), it is among the f judged clients with the lowest mean
  cosine: Multi-Krum's n − f selection (Blanchard et al. 2017) applied to the history
  instead of one round. Under label skew the honest means spread as wide as the
  attackers' distance from them, and no outlier rule separates them; ranking still puts
  persistent flippers at the bottom, at the price of f honest clients in a clean run;
* or (optional, ``max_response``) its mean response is at least ``max_response`` (0: a
  persistent ascender), after ``warmup`` scored rounds;
* or (optional, ``min_cosine``) its mean cosine is at most ``min_cosine``: FLTrust's rule
  (Cao et al., NDSS 2021, https://arxiv.org/abs/2012.13995) gives an update with a
  non-positive cosine zero trust. Off by default: over a long run an honest
  organisation's mean cosine to the others' median tends to 0 (late updates are mostly
  its own part), so ``min_cosine = 0`` excludes honest organisations by the half

(robust deviation = 1.4826 · MAD over the judged clients, floored at
:data:`COSINE_FLOOR` and :data:`LOG_NORM_FLOOR` so that a tight honest cluster does not
turn small differences into exclusions; the log-norm floor leaves room for honest
organisations whose updates are persistently twice the median, as a large one under label
skew sends). Exclusion is not permanent: a client whose means recover is admitted again.

This follows the history-based detectors — FLDetector (Zhang et al., KDD 2022,
https://arxiv.org/abs/2207.09209), which scores each client's consistency over a window
of rounds and removes the outliers, and FoolsGold (Fung et al., RAID 2020,
https://arxiv.org/abs/1808.04866), which keeps per-client history — with the simplest
consistency score: agreement with the robust per-round direction, averaged. Pure
functions on plain data plus :class:`Reputation`, the thin stateful holder a strategy
checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from umbra.federation.detection import flatten_updates, robust_z

__all__ = [
    "COSINE_FLOOR",
    "LOG_NORM_FLOOR",
    "ClientReputation",
    "Reputation",
    "RoundScore",
    "observe_round",
    "reputation_outliers",
    "round_responses",
    "round_scores",
]

#: minimum robust deviation of the clients' mean cosines (k = 3: 0.06 below the median)
COSINE_FLOOR = 0.02
#: minimum robust deviation of the mean log-norm ratios (k = 3: a factor e^1.05 ≈ 2.9)
LOG_NORM_FLOOR = 0.35
_PREFIX = "reputation/"


@dataclass(frozen=True)
class ClientReputation:
    """One client's history: rounds observed and the sums of its per-round scores."""

    rounds: int = 0
    cosine_sum: float = 0.0
    log_norm_sum: float = 0.0
    response_rounds: int = 0
    response_sum: float = 0.0

    @property
    def cosine(self) -> float:
        """Mean cosine to the round's median update (0 before any round)."""
        return self.cosine_sum / self.rounds if self.rounds else 0.0

    @property
    def log_norm(self) -> float:
        """Mean ``log(‖Δ‖ / round median ‖Δ‖)`` (0 before any round)."""
        return self.log_norm_sum / self.rounds if self.rounds else 0.0

    @property
    def response(self) -> float:
        """Mean cosine of the update's change to the server's step (0 before any)."""
        return self.response_sum / self.response_rounds if self.response_rounds else 0.0

    def row(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "rounds": self.rounds,
            "cosine": round(self.cosine, 6),
            "log_norm": round(self.log_norm, 6),
        }
        if self.response_rounds:
            out["response"] = round(self.response, 6)
        return out


@dataclass(frozen=True)
class RoundScore:
    """One client's update in one round: its L2 norm and its cosine to the coordinate-wise
    median of the other clients' updates."""

    partition: int
    norm: float
    cosine: float


def round_scores(
    partitions: Sequence[int], deltas: Sequence[Mapping[str, np.ndarray]]
) -> list[RoundScore]:
    """Each client's :class:`RoundScore` (deltas: name -> array, the same names for every
    client). One client alone has no reference: cosine 0."""
    flat = flatten_updates(partitions, deltas)  # (n, D)
    if len(flat) == 0:
        return []
    norms = np.linalg.norm(flat, axis=1)  # (n,)
    out = []
    for i, pid in enumerate(partitions):
        others = np.delete(flat, i, axis=0)  # (n - 1, D)
        cosine = 0.0
        if len(others):
            ref = np.median(others, axis=0)  # (D,)
            denom = float(norms[i]) * float(np.linalg.norm(ref))
            cosine = float(flat[i] @ ref / denom) if denom > 0 else 0.0
        out.append(RoundScore(int(pid), float(norms[i]), cosine))
    return out


def observe_round(
    history: Mapping[int, ClientReputation], scores: Sequence[RoundScore]
) -> dict[int, ClientReputation]:
    """``history`` with one round's scores added (a new dict; clients absent this round
    keep their entry). A zero norm counts as the round's median (log ratio 0)."""
    out = dict(history)
    if not scores:
        return out
    positive = [s.norm for s in scores if s.norm > 0]
    median = float(np.median(positive)) if positive else 0.0
    for s in scores:
        ratio = float(np.log(s.norm / median)) if s.norm > 0 and median > 0 else 0.0
        old = out.get(s.partition, ClientReputation())
        out[s.partition] = replace(
            old,
            rounds=old.rounds + 1,
            cosine_sum=old.cosine_sum + s.cosine,
            log_norm_sum=old.log_norm_sum + ratio,
        )
    return out


def round_responses(
    partitions: Sequence[int], flat: np.ndarray, last: Mapping[int, np.ndarray]
) -> dict[int, float]:
    """Each client's response: the cosine of its update's change since the previous
    round, ``flat[i] − last[p]``, to the mean of the *other* clients' previous updates
    (the server's step between the two rounds, less the client's own share: the step
    holds the client's previous update, whose noise its change holds negated, a negative
    bias for everyone). ``flat`` is (n, D) in the order of ``partitions``; a client
    without a previous update, with no other previous update, or with a zero change or
    step, gets none."""
    out: dict[int, float] = {}
    if not last:
        return out
    total = np.sum(np.stack(list(last.values())), axis=0)  # (D,)
    for i, p in enumerate(partitions):
        if p not in last or len(last) < 2:
            continue
        step = (total - last[p]) / (len(last) - 1)  # (D,)
        change = flat[i] - last[p]  # (D,)
        denom = float(np.linalg.norm(change)) * float(np.linalg.norm(step))
        if denom > 0:
            out[int(p)] = float(change @ step) / denom
    return out


def observe_responses(
    history: Mapping[int, ClientReputation], responses: Mapping[int, float]
) -> dict[int, ClientReputation]:
    """``history`` with one round's responses added (a new dict)."""
    out = dict(history)
    for p, r in responses.items():
        old = out.get(p, ClientReputation())
        out[p] = replace(
            old, response_rounds=old.response_rounds + 1, response_sum=old.response_sum + r
        )
    return out


def reputation_outliers(
    history: Mapping[int, ClientReputation],
    *,
    k: float,
    min_rounds: int,
    min_cosine: float | None = None,
    drop_lowest: int = 0,
    max_response: float | None = None,
    cosine_outliers: bool = True,
) -> tuple[int, ...]:
    """The clients (sorted partition ids) with at least ``min_rounds`` observations whose
    mean cosine is more than ``k`` robust deviations below the judged clients' median
    (unless ``cosine_outliers`` is off) (or
    at most ``min_cosine``, when given, or among the ``drop_lowest`` lowest), or whose
    mean log-norm is more than ``k`` above it, or (``max_response``) whose mean response
    over at least ``min_rounds`` scored rounds is at least ``max_response``. Fewer than
    three judged clients, or fewer
    than ``2 · drop_lowest + 1``: nobody (a median and a MAD of two say nothing, and the
    lowest f must stay a minority)."""
    if drop_lowest < 0:
        raise ValueError(f"drop_lowest must be >= 0, got {drop_lowest}")
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k}")
    if min_rounds < 1:
        raise ValueError(f"min_rounds must be >= 1, got {min_rounds}")
    judged = sorted(p for p, r in history.items() if r.rounds >= min_rounds)
    if len(judged) < max(3, 2 * drop_lowest + 1):
        return ()
    # the lowest mean cosines (ties: the lower partition id)
    lowest = set(sorted(judged, key=lambda p: (history[p].cosine, p))[:drop_lowest])
    z_cos = robust_z([history[p].cosine for p in judged], floor=COSINE_FLOOR)
    z_norm = robust_z([history[p].log_norm for p in judged], floor=LOG_NORM_FLOOR)
    return tuple(
        p
        for p, zc, zn in zip(judged, z_cos, z_norm, strict=True)
        if (cosine_outliers and zc < -k)
        or zn > k
        or p in lowest
        or (min_cosine is not None and history[p].cosine <= min_cosine)
        or (
            max_response is not None
            and history[p].response_rounds >= min_rounds
            and history[p].response >= max_response
        )
    )


class Reputation:
    """The server's per-client reputation across rounds (see the module docstring):
    :meth:`observe` a round's scores, get who is excluded; checkpointed as arrays."""

    def __init__(
        self,
        *,
        k: float = 3.0,
        warmup: int = 3,
        min_cosine: float | None = None,
        drop_lowest: int = 0,
        max_response: float | None = None,
        cosine_outliers: bool = True,
    ) -> None:
        if not k > 0:
            raise ValueError(f"reputation k must be > 0, got {k}")
        if warmup < 1:
            raise ValueError(f"reputation warmup must be >= 1, got {warmup}")
        if min_cosine is not None and not -1 <= min_cosine < 1:
            raise ValueError(f"reputation min_cosine must be in [-1, 1), got {min_cosine}")
        self.k = k
        self.warmup = warmup
        self.min_cosine = min_cosine
        if drop_lowest < 0:
            raise ValueError(f"reputation drop_lowest must be >= 0, got {drop_lowest}")
        self.drop_lowest = drop_lowest
        if max_response is not None and not -1 <= max_response <= 1:
            raise ValueError(f"reputation max_response must be in [-1, 1], got {max_response}")
        self.max_response = max_response
        self.cosine_outliers = cosine_outliers
        self.history: dict[int, ClientReputation] = {}
        #: each client's flattened update of the previous round (only those who sent one;
        #: float32, only while the response rule is on: n model-sized arrays in every
        #: round's checkpoint)
        self.last: dict[int, np.ndarray] = {}

    def observe(
        self, partitions: Sequence[int], deltas: Sequence[Mapping[str, np.ndarray]]
    ) -> tuple[int, ...]:
        """Add one round's updates (``deltas``: model − global per client) and, with the
        response rule on, the responses of the clients that also sent one the round
        before; return the partition ids excluded from this round."""
        self.history = observe_round(self.history, round_scores(partitions, deltas))
        if deltas and self.max_response is not None:
            flat = flatten_updates(partitions, deltas)  # (n, D)
            if all(v.shape == flat.shape[1:] for v in self.last.values()):
                last = {p: v.astype(np.float64) for p, v in self.last.items()}
                responses = round_responses(partitions, flat, last)
                self.history = observe_responses(self.history, responses)
            self.last = {int(p): flat[i].astype(np.float32) for i, p in enumerate(partitions)}
        return reputation_outliers(
            self.history,
            k=self.k,
            min_rounds=self.warmup,
            min_cosine=self.min_cosine,
            drop_lowest=self.drop_lowest,
            max_response=self.max_response,
            cosine_outliers=self.cosine_outliers,
        )

    def rows(self, partitions: Sequence[int]) -> dict[str, dict[str, float | int]]:
        """The reputations of ``partitions`` for a results row (partition id as text)."""
        return {str(p): self.history[p].row() for p in partitions if p in self.history}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The history as checkpointable arrays (empty before the first round)."""
        if not self.history:
            return {}
        pids = sorted(self.history)
        h = [self.history[p] for p in pids]
        out = {
            f"{_PREFIX}partitions": np.array(pids, dtype=np.int64),
            f"{_PREFIX}rounds": np.array([r.rounds for r in h], dtype=np.int64),
            f"{_PREFIX}cosine_sum": np.array([r.cosine_sum for r in h], dtype=np.float64),
            f"{_PREFIX}log_norm_sum": np.array([r.log_norm_sum for r in h], dtype=np.float64),
            f"{_PREFIX}response_rounds": np.array([r.response_rounds for r in h], np.int64),
            f"{_PREFIX}response_sum": np.array([r.response_sum for r in h], np.float64),
        }
        return out | {f"{_PREFIX}last/{p}": v for p, v in self.last.items()}

    def load_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` returned (other keys are ignored)."""
        if f"{_PREFIX}partitions" not in state:
            self.history, self.last = {}, {}
            return
        cols = [np.asarray(state[f"{_PREFIX}{c}"])
                for c in ("partitions", "rounds", "cosine_sum", "log_norm_sum")]  # fmt: skip
        zeros = np.zeros(len(cols[0]))
        rr = np.asarray(state.get(f"{_PREFIX}response_rounds", zeros))
        rs = np.asarray(state.get(f"{_PREFIX}response_sum", zeros))
        self.history = {
            int(p): ClientReputation(int(n), float(c), float(g), int(a), float(b))
            for p, n, c, g, a, b in zip(*cols, rr, rs, strict=True)
        }
        last = f"{_PREFIX}last/"
        self.last = {
            int(k[len(last) :]): np.asarray(v, np.float32)
            for k, v in state.items()
            if k.startswith(last)
        }
