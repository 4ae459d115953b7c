"""One client's contribution as one real vector for CKKS, and its sum back (pure numpy).

Float parts are clipped to ``±clip`` and concatenated in the order of
`umbra.secure.contribution.payload_template`. Integer parts (counts) must sum exactly,
but CKKS (and its digit packing) only sums approximately, so each integer is written as
`LIMBS` base-16 digits, each scaled to ``digit * clip / 15`` (within the float range):
the sum of a digit over ``n`` clients is an integer in ``[0, 15 n]`` recovered by
rounding, as long as the CKKS/quantization error stays below ``clip / 30`` (it is
~1e-9 for the default parameters, ~n * 2 clip / 2^22 in digit mode).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from umbra.secure.contribution import Contribution, int_template, payload_template

__all__ = ["LIMBS", "LIMB_BASE", "flatten_contribution", "payload_length", "split_sum"]

LIMB_BASE = 16
LIMBS = 6  # integers < 16^6 = 2^24
_MAX_INT = LIMB_BASE**LIMBS - 1


def payload_length(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Length of the flattened vector for model arrays of ``shapes``."""
    floats = sum(a.size for a in payload_template(shapes).values())
    ints = sum(a.size for a in int_template().values())
    return floats + ints * LIMBS


def flatten_contribution(contribution: Contribution, *, clip: float) -> np.ndarray:
    """float64 vector: clipped floats (template order), then the scaled base-16 limbs."""
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite float > 0, got {clip}")
    floats = [
        np.clip(np.asarray(contribution.floats[k], dtype=np.float64).ravel(), -clip, clip)
        for k in sorted(contribution.floats)
    ]
    ints = np.concatenate(
        [np.asarray(contribution.ints[k], dtype=np.int64).ravel() for k in int_template()]
    )
    if ints.size and (ints.min() < 0 or ints.max() > _MAX_INT):
        raise ValueError(f"integer parts must lie in [0, {_MAX_INT}]")
    limbs = (ints[:, None] // LIMB_BASE ** np.arange(LIMBS)) % LIMB_BASE
    return np.concatenate([*floats, limbs.ravel() * (clip / (LIMB_BASE - 1))])


def split_sum(
    total: np.ndarray, shapes: Mapping[str, tuple[int, ...]], *, clip: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of `flatten_contribution` for a sum: (float64 sums, exact int64 sums)."""
    template = payload_template(shapes)
    ints_t = int_template()
    total = np.asarray(total, dtype=np.float64)
    if total.shape != (payload_length(shapes),):
        raise ValueError(f"total must have shape ({payload_length(shapes)},), got {total.shape}")
    floats: dict[str, np.ndarray] = {}
    offset = 0
    for key in sorted(template):
        size = template[key].size
        floats[key] = total[offset : offset + size].reshape(template[key].shape)
        offset += size
    digits = np.rint(total[offset:] * ((LIMB_BASE - 1) / clip)).astype(np.int64)
    values = (digits.reshape(-1, LIMBS) * LIMB_BASE ** np.arange(LIMBS)).sum(axis=1)
    ints: dict[str, np.ndarray] = {}
    pos = 0
    for key, arr in ints_t.items():
        ints[key] = values[pos : pos + arr.size].reshape(arr.shape)
        pos += arr.size
    return floats, ints
