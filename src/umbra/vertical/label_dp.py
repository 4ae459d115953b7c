"""Label differential privacy by randomised response (Ghazi et al., NeurIPS 2021,
"Deep Learning with Label Differential Privacy", https://arxiv.org/abs/2102.06062).

The label holder replaces each training label once, before training: it keeps the true
label with probability ``e^ε / (e^ε + K - 1)`` and otherwise reports one of the other
``K - 1`` classes uniformly. Everything later — the top model, every gradient sent to the
feature parties — is computed from the randomised labels only, so it is post-processing and
each entity's label is ε-label-DP (neighbouring data sets differ in one label; exact, no
δ) against the feature parties, however many epochs run. Randomness from the privacy stream
(:class:`~umbra.privacy.randomness.SecureRandom`), never the run seed.
"""

from __future__ import annotations

import math

import numpy as np

from umbra.privacy.randomness import SecureRandom

__all__ = ["keep_probability", "randomized_response", "rr_epsilon_pld"]


def keep_probability(epsilon: float, num_classes: int) -> float:
    """P[reported = true label] = e^ε / (e^ε + K - 1)."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)


def randomized_response(
    labels: np.ndarray, *, num_classes: int, epsilon: float, rng: SecureRandom | None = None
) -> np.ndarray:
    """Each label kept with :func:`keep_probability`, else uniform over the other classes."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    src = rng if rng is not None else SecureRandom()
    keep = src.uniform(y.shape) < keep_probability(epsilon, num_classes)
    shift = 1 + src.integers(num_classes - 1, y.shape)  # 1..K-1: another class, uniformly
    return np.where(keep, y, (y + shift) % num_classes)


def rr_epsilon_pld(epsilon: float, num_classes: int) -> float:
    """ε of the same randomised response recomputed by dp-accounting's PLD accountant
    (replace-one adjacency, δ = 0): an independent check of the closed form."""
    from dp_accounting import dp_event, pld
    from dp_accounting.privacy_accountant import NeighboringRelation

    # "with probability p report a uniform bucket" = keeping with e^ε / (e^ε + K - 1)
    p = num_classes / (math.exp(epsilon) + num_classes - 1)
    acc = pld.PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_event.RandomizedResponseDpEvent(noise_parameter=p, num_buckets=num_classes))
    return float(acc.get_epsilon(0.0))
