"""The public coordinates of a ``shared-k`` round: which entries of each model array every
client keeps, the same at every client and at the server.

Both the update codec (`umbra.federation.compression`) and the secure transport's
contribution transform (`umbra.secure.contribution.shared_sparsify`) use them: per-client
top-k supports cannot be summed under SecAgg+ masks, a shared support can. Pure numpy.

Two supports (``compression.support``), both ``k = kept_count(size, fraction)``
coordinates per array, so the payload layout depends on the array's size only:

- ``cyclic``: the round's block of a random permutation of the array, fixed by the run
  seed (:func:`shared_indices`): every coordinate is sent once every ``size / k`` rounds.
- ``last-update``: time-correlated sparsification (Ozfatura, Ozfatura and Gündüz, ISIT
  2021, https://arxiv.org/abs/2101.08837): the largest-magnitude coordinates of the last
  *global* update ``x_t - x_{t-1}`` (the server's released aggregate, which every client
  receives with the model), plus a cyclic block of ``cyclic_share · k`` coordinates
  (:func:`mixed_indices`) so that every coordinate is still visited. TCS adds
  client-chosen coordinates to the global mask; those would differ between clients, so
  here the extra coordinates are the public cyclic block instead. The server announces
  the top part as a bit mask in the round's config (:func:`pack_mask`); the first round
  (no previous update) is all cyclic.

Why the coordinates reveal nothing: the cyclic block derives from the run seed and the
round; the top part is a function of the previous *released aggregate* only (the global
model every client receives), never of any single client's update. Under DP it is
post-processing of a released value. Whatever support the server announces, SecAgg+
hands it the sum of the clients' values on those coordinates only, which is less than
the full sum it would see without compression (an honest-but-curious server, as for the
rest of SecAgg+: one that sent different supports to different clients could mix
their coordinates, as it could send them different models).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COMPRESS_BITS",
    "COMPRESS_CYCLIC_SHARE",
    "COMPRESS_FRACTION",
    "COMPRESS_MASK_PREFIX",
    "COMPRESS_METHOD",
    "COMPRESS_SEED",
    "SHARED_METHOD",
    "SUPPORTS",
    "RoundCoordinates",
    "kept_count",
    "mixed_indices",
    "pack_mask",
    "round_coordinates",
    "round_value_bits",
    "shared_indices",
    "shared_seed",
    "top_mask",
    "unpack_mask",
]

#: ``compression.method`` of the shared-coordinate sparsifier
SHARED_METHOD = "shared-k"
#: ``compression.support`` values: a permutation's block per round, or the last global
#: update's largest coordinates plus a smaller block
SUPPORTS: tuple[str, ...] = ("cyclic", "last-update")
#: Train-message config keys: the round's method, its share of coordinates, its seed.
COMPRESS_METHOD = "compress-method"
COMPRESS_FRACTION = "compress-fraction"
COMPRESS_SEED = "compress-seed"
#: share of each array's k coordinates from the cyclic block (``last-update`` support)
COMPRESS_CYCLIC_SHARE = "compress-cyclic-share"
#: ``<prefix><array name>``: the packed bit mask of the array's top coordinates
COMPRESS_MASK_PREFIX = "compress-top/"
#: width of each kept value (``compression.value_bits``): 32 (float32, or SecAgg+'s 32-bit
#: ring), 16 (16-bit codes, or SecAgg+'s 16-bit ring) or 8 (8-bit codes, in the clear)
COMPRESS_BITS = "compress-bits"


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


def _permutation(seed: int, name: str, size: int) -> tuple[np.ndarray, int]:
    """The run's fixed permutation of array ``name`` and the round of ``seed``."""
    run_key, rnd = seed >> _ROUND_BITS, seed & ((1 << _ROUND_BITS) - 1)
    return np.random.default_rng([run_key, zlib.crc32(name.encode())]).permutation(size), rnd


def shared_indices(seed: int, name: str, size: int, fraction: float) -> np.ndarray:
    """Sorted flat indices ``shared-k`` keeps of tensor ``name`` in the round of ``seed``
    (:func:`shared_seed`): ``kept_count(size, fraction)`` coordinates, the round's block
    of a random permutation of the tensor that is fixed for the run. Cycling through
    the blocks sends every coordinate once every ``size / k`` rounds (uniform draws
    would leave some unsent for many rounds, their error-feedback residual growing stale).
    """
    k = kept_count(size, fraction)
    perm, rnd = _permutation(seed, name, size)
    start = (rnd * k) % size if size else 0
    return np.sort(perm[(start + np.arange(k)) % max(size, 1)]).astype(np.int32)


def _split(k: int, cyclic_share: float) -> tuple[int, int]:
    """``(top, cyclic)`` counts of ``k`` coordinates: at least one cyclic."""
    cyclic = min(k, max(1, math.ceil(cyclic_share * k))) if k else 0
    return k - cyclic, cyclic


def top_mask(update: np.ndarray, k: int, cyclic_share: float) -> np.ndarray:
    """Boolean mask (flat) of the ``top`` largest ``|update|`` of ``k`` kept coordinates
    (:func:`_split`): the part of the next round's support the last global update picks."""
    flat = np.abs(np.asarray(update, dtype=np.float64).ravel())
    top, _ = _split(k, cyclic_share)
    mask = np.zeros(flat.size, dtype=bool)
    if top:
        mask[np.argpartition(flat, flat.size - top)[flat.size - top :]] = True
    return mask


def pack_mask(mask: np.ndarray) -> bytes:
    """A boolean mask as bits (``size / 8`` bytes on the wire)."""
    return np.packbits(np.asarray(mask, dtype=bool)).tobytes()


def unpack_mask(packed: bytes, size: int) -> np.ndarray:
    """Inverse of :func:`pack_mask` for a mask of ``size`` entries."""
    if len(packed) != (size + 7) // 8:
        raise ValueError(f"a support mask of {len(packed)} bytes for an array of {size}")
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=size).astype(bool)


def mixed_indices(
    seed: int, name: str, mask: np.ndarray, fraction: float, cyclic_share: float
) -> np.ndarray:
    """Sorted flat indices of the ``last-update`` support: the ``top`` coordinates of
    ``mask`` (:func:`top_mask`) plus the first ``cyclic`` coordinates of the round's
    stretch of the run's permutation that are not among them, ``k`` in all."""
    size = mask.size
    k = kept_count(size, fraction)
    top, cyclic = _split(k, cyclic_share)
    if not size:
        return np.zeros(0, dtype=np.int32)
    chosen = np.flatnonzero(mask)
    if chosen.size != top:
        raise ValueError(f"a support mask of {chosen.size} coordinates for {top} of {name!r}")
    perm, rnd = _permutation(seed, name, size)
    # the round's stretch: cyclic blocks of the permutation; ``top`` spares cover skips
    stretch = perm[((rnd * cyclic) % size + np.arange(min(size, k))) % size]
    extra = stretch[~mask[stretch]][:cyclic]
    return np.sort(np.concatenate([chosen, extra])).astype(np.int32)


@dataclass(frozen=True)
class RoundCoordinates:
    """One round's shared coordinates: the cyclic block of ``seed``, or (with ``masks``)
    the announced top coordinates of each array plus a smaller cyclic block."""

    seed: int
    fraction: float
    cyclic_share: float = 1.0
    #: array name -> its packed top mask (:func:`pack_mask`; ``last-update`` support;
    #: an array without one: all cyclic)
    masks: Mapping[str, bytes] = field(default_factory=dict)

    def count(self, size: int) -> int:
        """Coordinates kept of an array of ``size`` (the payload's length for it)."""
        return kept_count(size, self.fraction)

    def indices(self, name: str, size: int) -> np.ndarray:
        """Sorted flat indices kept of array ``name`` of ``size`` coordinates."""
        packed = self.masks.get(name)
        if packed is None:
            return shared_indices(self.seed, name, size, self.fraction)
        mask = unpack_mask(packed, size)
        return mixed_indices(self.seed, name, mask, self.fraction, self.cyclic_share)


def round_coordinates(config: Mapping[str, Any]) -> RoundCoordinates | None:
    """The coordinates a round's config announces for ``shared-k``, else None (masks
    are unpacked where an array's size is known: :meth:`RoundCoordinates.indices`)."""
    if str(config.get(COMPRESS_METHOD, "none")) != SHARED_METHOD:
        return None
    masks = {
        key[len(COMPRESS_MASK_PREFIX) :]: bytes(value)
        for key, value in config.items()
        if key.startswith(COMPRESS_MASK_PREFIX) and isinstance(value, bytes)
    }
    return RoundCoordinates(
        seed=int(config[COMPRESS_SEED]),
        fraction=float(config[COMPRESS_FRACTION]),
        cyclic_share=float(config.get(COMPRESS_CYCLIC_SHARE, 1.0)),
        masks=masks,
    )


def round_value_bits(config: Mapping[str, Any]) -> int:
    """Width of each kept value the round's config announces for ``shared-k`` (32 when
    it names none, or another method)."""
    if str(config.get(COMPRESS_METHOD, "none")) != SHARED_METHOD:
        return 32
    return int(config.get(COMPRESS_BITS, 32))
