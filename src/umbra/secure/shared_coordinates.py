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


def shared_seed(run_seed: int, server_round: int) -> int:
    """The public seed of a round's ``shared-k`` coordinates: the same at every client and
    at the server (the coordinates reveal nothing about any update)."""
    return zlib.crc32(f"shared-k/{run_seed}/{server_round}".encode()) & 0x7FFFFFFF


def shared_indices(seed: int, name: str, size: int, fraction: float) -> np.ndarray:
    """Sorted flat indices ``shared-k`` keeps of tensor ``name`` in the round of ``seed``:
    ``kept_count(size, fraction)`` coordinates drawn uniformly without replacement."""
    k = kept_count(size, fraction)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(size, size=k, replace=False)).astype(np.int32)


def round_coordinates(config: Mapping[str, Any]) -> tuple[int, float] | None:
    """``(seed, fraction)`` of a round whose config announces ``shared-k``, else None."""
    if str(config.get(COMPRESS_METHOD, "none")) != SHARED_METHOD:
        return None
    return int(config[COMPRESS_SEED]), float(config[COMPRESS_FRACTION])
