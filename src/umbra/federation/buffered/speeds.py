"""Simulated client speeds of the virtual clock (pure numpy).

A client's compute time for one local training is ``cost x speed factor``. The factors are
log-normal, ``exp(σ z)`` with ``z ~ N(0, 1)``, and a fraction of the clients (the
stragglers) is slowed down ``slowdown`` times more, as in FedBuff's own simulation of
heterogeneous devices (Nguyen et al., AISTATS 2022, Sec. 6). They describe hardware, not
data: they are drawn from the run seed (reproducible, not privacy randomness) and are the
same for the synchronous baseline, so both are timed on one clock.
"""

from __future__ import annotations

import numpy as np

__all__ = ["speed_factors", "stragglers", "sync_round_time"]


def stragglers(num_clients: int, fraction: float, *, seed: int) -> list[int]:
    """The partition ids of the ``round(fraction * num_clients)`` stragglers (seeded)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"straggler fraction must be in [0, 1], got {fraction}")
    count = round(fraction * num_clients)
    order = np.random.default_rng([seed, 1]).permutation(num_clients)
    return sorted(int(p) for p in order[:count])


def speed_factors(
    num_clients: int, *, sigma: float, straggler_fraction: float, slowdown: float, seed: int
) -> np.ndarray:
    """Compute-time factor of each partition id, shape ``(num_clients,)``, all > 0.

    ``sigma = 0`` and no stragglers give every client the factor 1 (equal speeds).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if sigma < 0 or slowdown < 1:
        raise ValueError(f"need sigma >= 0 and slowdown >= 1, got {sigma} and {slowdown}")
    z = np.random.default_rng([seed, 0]).standard_normal(num_clients)
    factors = np.exp(sigma * z)
    factors[stragglers(num_clients, straggler_fraction, seed=seed)] *= slowdown
    return factors


def sync_round_time(durations: dict[int, float], sampled: list[int]) -> float:
    """A synchronous round's virtual duration: its slowest sampled client's compute time."""
    if not sampled:
        raise ValueError("a round samples at least one client")
    return max(durations[p] for p in sampled)
