"""Packing of float vectors into CKKS slots (pure numpy, no encryption here).

Two layouts, both for aggregation only (additions, no multiplications or rotations):

* **complex slots** - a CKKS plaintext holds ``N/2`` complex slots; putting one value in
  the real part and another in the imaginary part doubles the values per ciphertext
  (``values_per_ciphertext = N``), halving the ciphertext expansion of TenSEAL's real-only
  `CKKSVector`.
* **digits** - ``per_real`` quantized values (each ``bits`` wide, with headroom for the
  sum of ``n`` clients, see `umbra.secure.secagg.quantize.QuantizationSpec`) are packed as
  base-``2^bits`` digits of one integer in a slot. Digit sums never carry because each
  client's digit is at most ``floor((2^bits - 1) / n)``; the packed integer must stay below
  2^53 (exact in float64) and the CKKS error below 0.5 so that rounding recovers it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "ArraySpec",
    "flatten_arrays",
    "from_slot_chunks",
    "pack_digits",
    "to_slot_chunks",
    "unflatten_arrays",
    "unpack_digits",
]

ArraySpec = tuple[tuple[str, tuple[int, ...]], ...]


def flatten_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ArraySpec]:
    """Concatenate named arrays into one float64 vector; the spec restores them."""
    spec = tuple((name, tuple(np.shape(a))) for name, a in arrays.items())
    if not spec:
        return np.zeros(0), spec
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()]), spec


def unflatten_arrays(vector: np.ndarray, spec: ArraySpec) -> dict[str, np.ndarray]:
    """Inverse of `flatten_arrays`."""
    total = sum(math.prod(shape) for _, shape in spec)
    if vector.shape != (total,):
        raise ValueError(f"vector must have shape ({total},), got {vector.shape}")
    out, offset = {}, 0
    for name, shape in spec:
        size = math.prod(shape)
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out


def to_slot_chunks(values: np.ndarray, *, slots: int, complex_slots: bool) -> np.ndarray:
    """Split a real vector into rows of ``slots`` CKKS slot values (zero-padded).

    Returns (C, slots) complex128 when ``complex_slots`` (first half of each block of
    ``2 slots`` values in the real parts, second half in the imaginary parts), else float64.
    """
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    per = slots * (2 if complex_slots else 1)
    x = np.asarray(values, dtype=np.float64).ravel()
    rows = max(1, -(-x.size // per))
    padded = np.zeros(rows * per)
    padded[: x.size] = x
    blocks = padded.reshape(rows, per)  # (C, per)
    if complex_slots:
        return blocks[:, :slots] + 1j * blocks[:, slots:]
    return blocks


def from_slot_chunks(chunks: np.ndarray, *, length: int, complex_slots: bool) -> np.ndarray:
    """Inverse of `to_slot_chunks`: (C, slots) slot values -> the first ``length`` reals."""
    c = np.asarray(chunks)
    blocks = np.concatenate([c.real, c.imag], axis=1) if complex_slots else c.real
    return np.ascontiguousarray(blocks).ravel()[:length].astype(np.float64)


def pack_digits(levels: np.ndarray, *, bits: int, per_real: int) -> np.ndarray:
    """Pack non-negative integer ``levels`` (< 2^bits) ``per_real`` at a time into float64.

    Element ``k`` of the output is ``sum_d levels[k*per_real + d] * 2^(bits*d)``.
    """
    if per_real < 1 or bits < 1 or bits * per_real > 48:
        raise ValueError(
            f"need per_real >= 1, bits >= 1 and bits*per_real <= 48, got {bits}x{per_real}"
        )
    lv = np.asarray(levels, dtype=np.uint64).ravel()
    if lv.size and int(lv.max()) >> bits:
        raise ValueError(f"levels must be < 2^{bits}")
    rows = -(-lv.size // per_real)
    padded = np.zeros(rows * per_real, dtype=np.uint64)
    padded[: lv.size] = lv
    weights = np.array([1 << (bits * d) for d in range(per_real)], dtype=np.uint64)
    return (padded.reshape(rows, per_real) * weights).sum(axis=1).astype(np.float64)


def unpack_digits(values: np.ndarray, *, bits: int, per_real: int, length: int) -> np.ndarray:
    """Inverse of `pack_digits` after rounding (``values`` may carry CKKS noise < 0.5)."""
    if per_real < 1 or bits < 1 or bits * per_real > 48:
        raise ValueError(
            f"need per_real >= 1, bits >= 1 and bits*per_real <= 48, got {bits}x{per_real}"
        )
    ints = np.rint(np.asarray(values, dtype=np.float64)).clip(0, None).astype(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    digits = np.stack([(ints >> np.uint64(bits * d)) & mask for d in range(per_real)], axis=1)
    return digits.ravel()[:length]
