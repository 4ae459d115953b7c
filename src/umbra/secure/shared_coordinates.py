"""The public coordinates of a ``shared-k`` round: which entries of each model array every
client keeps, the same at every client and at the server.

Both the update codec (`umbra.federation.compression`) and the secure transport's
contribution transform (`umbra.secure.contribution.shared_sparsify`) use them: per-client
top-k supports cannot be summed under SecAgg+ masks, a shared support can. The seed
derives from the run seed and the round, never from private randomness: the coordinates
reveal nothing about any update. Pure numpy.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "COMPRESS_FRACTION",
    "COMPRESS_METHOD",
    "COMPRESS_SEED",
    "SHARED_METHOD",
    "kept_count",
    "round_coordinates",
    "shared_indices",
    "shared_seed",
]

#: ``compression.method`` of the shared-coordinate sparsifier
SHARED_METHOD = "shared-k"
#: Train-message config keys: the round's method, its share of coordinates, its seed.
COMPRESS_METHOD = "compress-method"
COMPRESS_FRACTION = "compress-fraction"
COMPRESS_SEED = "compress-seed"


def kept_count(size: int, fraction: float) -> int:
    """Coordinates a sparsifier keeps of a tensor of ``size``: ``ceil(fraction * size)``,
    at least 1 (0 for an empty tensor)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(size, max(1, math.ceil(fraction * size))) if size else 0


#: low bits of a round's coordinate key that hold the round (the rest: the run's key)
_ROUND_BITS = 24


def shared_seed(run_seed: int, server_round: int) -> int:
    """The public key of a round's ``shared-k`` coordinates, the same at every client and
    at the server: the run's permutation key (from ``run_seed``) in the high bits, the
    round in the low 24 (the coordinates reveal nothing about any update)."""
    run_key = zlib.crc32(f"shared-k/{run_seed}".encode()) & 0x7FFFFFFF
    return (run_key << _ROUND_BITS) | (server_round % (1 << _ROUND_BITS))


def shared_indices(seed: int, name: str, size: int, fraction: float) -> np.ndarray:
    """Sorted flat indices ``shared-k`` keeps of tensor ``name`` in the round of ``seed``
    (:func:`shared_seed`): ``kept_count(size, fraction)`` coordinates, the round's block
    of a random permutation of the tensor that is fixed for the run. Cycling through
    the blocks sends every coordinate once every ``size / k`` rounds (uniform draws
    would leave some unsent for many rounds, their error-feedback residual growing stale).
    """
    k = kept_count(size, fraction)
    run_key, rnd = seed >> _ROUND_BITS, seed & ((1 << _ROUND_BITS) - 1)
    perm = np.random.default_rng([run_key, zlib.crc32(name.encode())]).permutation(size)
    start = (rnd * k) % size if size else 0
    return np.sort(perm[(start + np.arange(k)) % max(size, 1)]).astype(np.int32)


def round_coordinates(config: Mapping[str, Any]) -> tuple[int, float] | None:
    """``(seed, fraction)`` of a round whose config announces ``shared-k``, else None."""
    if str(config.get(COMPRESS_METHOD, "none")) != SHARED_METHOD:
        return None
    return int(config[COMPRESS_SEED]), float(config[COMPRESS_FRACTION])
