"""Encoding of float updates (and integer counts) into the ring Z_{2^32} and back.

Floats are clipped to ``[-clip, clip]``, shifted to ``[0, 2 clip]`` and scaled so that one
client's value lies in ``[0, L]`` with ``L = floor((2^32 - 1) / num_clients)``: the sum of
up to ``num_clients`` encodings never wraps modulo 2^32 (headroom). Rounding to integers
is stochastic (unbiased: E[q] = v), as in Bell et al. (CCS 2020, §5) and Kairouz et al.
(ICML 2021, "distributed discrete Gaussian"). The rounding noise comes from a seeded numpy
Generator: it is not secret (masks, never made here, come from `crypto.prg_uint32`).
Integer vectors (e.g. per-modality example counts) travel unscaled and sum exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from umbra.secure.secagg.constants import RING_BITS

__all__ = [
    "PayloadLayout",
    "QuantizationSpec",
    "Segment",
    "dequantize_sum",
    "quantize",
]

_RING_MAX = (1 << RING_BITS) - 1


@dataclass(frozen=True)
class QuantizationSpec:
    """Fixed-point encoding of values in ``[-clip, clip]`` for sums of ``num_clients`` terms
    in Z_{2^bits} (``bits=32``: the SecAgg+ ring; smaller for digits packed into CKKS slots)."""

    clip: float
    num_clients: int
    bits: int = RING_BITS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite float > 0, got {self.clip}")
        if not 1 <= self.num_clients <= 1 << 16:
            raise ValueError(f"num_clients must be in [1, 65536], got {self.num_clients}")
        if not 1 <= self.bits <= RING_BITS:
            raise ValueError(f"bits must be in [1, {RING_BITS}], got {self.bits}")
        if self.max_level < 1:
            raise ValueError(f"bits={self.bits} leaves no headroom for {self.num_clients} clients")

    @property
    def max_level(self) -> int:
        """Largest integer one client may contribute (``floor((2^bits-1)/num_clients)``)."""
        return ((1 << self.bits) - 1) // self.num_clients

    @property
    def scale(self) -> float:
        """Integer levels per unit of the input (step = 1 / scale)."""
        return self.max_level / (2.0 * self.clip)


def quantize(x: np.ndarray, *, spec: QuantizationSpec, rng: np.random.Generator) -> np.ndarray:
    """Clip, shift and stochastically round ``x`` to uint32 levels in ``[0, spec.max_level]``."""
    v = np.array(x, dtype=np.float64)  # a private copy: every step below is in place
    np.clip(v, -spec.clip, spec.clip, out=v)
    v += spec.clip
    v *= spec.scale
    v += rng.random(v.shape)
    np.floor(v, out=v)
    np.minimum(v, spec.max_level, out=v)
    return v.astype(np.uint32)


def dequantize_sum(total: np.ndarray, *, spec: QuantizationSpec, num_summed: int) -> np.ndarray:
    """Decode the ring sum of ``num_summed`` quantized vectors to float64 (the sum of the inputs)."""
    if not 0 <= num_summed <= spec.num_clients:
        raise ValueError(f"num_summed must be in [0, {spec.num_clients}], got {num_summed}")
    return np.asarray(total, dtype=np.float64) / spec.scale - num_summed * spec.clip


@dataclass(frozen=True)
class Segment:
    """One named array inside a payload: ``kind='float'`` is quantized, ``'int'`` is exact."""

    name: str
    shape: tuple[int, ...]
    kind: Literal["float", "int"]
    clip: float = 0.0

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PayloadLayout:
    """Layout of several named arrays flattened into one uint32 vector (float and int parts).

    Build it with `from_arrays` on every client from the same shapes (the model's), encode
    each client's arrays with `encode`, and decode the unmasked ring sum with `decode_sum`.
    """

    segments: tuple[Segment, ...]
    num_clients: int

    @classmethod
    def from_arrays(
        cls,
        floats: Mapping[str, np.ndarray],
        ints: Mapping[str, np.ndarray] | None = None,
        *,
        clip: float | Mapping[str, float],
        num_clients: int,
    ) -> PayloadLayout:
        """Layout for ``floats`` (clipped to ``±clip``, per name if a mapping) and ``ints``."""
        ints = ints or {}
        overlap = set(floats) & set(ints)
        if overlap:
            raise ValueError(f"names used for both floats and ints: {sorted(overlap)}")
        segments = []
        for name, arr in floats.items():
            c = clip[name] if isinstance(clip, Mapping) else clip
            QuantizationSpec(clip=float(c), num_clients=num_clients)  # validates
            segments.append(Segment(name, tuple(np.shape(arr)), "float", float(c)))
        segments += [Segment(name, tuple(np.shape(a)), "int") for name, a in ints.items()]
        return cls(tuple(segments), num_clients)

    @property
    def size(self) -> int:
        """Length of the encoded uint32 vector."""
        return sum(s.size for s in self.segments)

    def encode(
        self,
        floats: Mapping[str, np.ndarray],
        ints: Mapping[str, np.ndarray] | None = None,
        *,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Flatten and encode one client's arrays into a uint32 vector of length `size`."""
        ints = ints or {}
        parts = []
        for seg in self.segments:
            source = floats if seg.kind == "float" else ints
            if seg.name not in source:
                raise ValueError(f"missing {seg.kind} array {seg.name!r}")
            arr = np.asarray(source[seg.name])
            if arr.shape != seg.shape:
                raise ValueError(f"array {seg.name!r} has shape {arr.shape}, expected {seg.shape}")
            if seg.kind == "float":
                spec = QuantizationSpec(clip=seg.clip, num_clients=self.num_clients)
                parts.append(quantize(arr.ravel(), spec=spec, rng=rng))
            else:
                limit = _RING_MAX // self.num_clients
                if arr.size and (
                    not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > limit
                ):
                    raise ValueError(f"int array {seg.name!r} must hold integers in [0, {limit}]")
                parts.append(arr.ravel().astype(np.uint32))
        if not parts:
            return np.zeros(0, dtype=np.uint32)
        return np.concatenate(parts)

    def decode_sum(
        self, total: np.ndarray, *, num_summed: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Decode a ring sum of ``num_summed`` encodings: (float64 sums, int64 sums)."""
        total = np.asarray(total)
        if total.shape != (self.size,):
            raise ValueError(f"total must have shape ({self.size},), got {total.shape}")
        floats: dict[str, np.ndarray] = {}
        ints: dict[str, np.ndarray] = {}
        offset = 0
        for seg in self.segments:
            chunk = total[offset : offset + seg.size]
            offset += seg.size
            if seg.kind == "float":
                spec = QuantizationSpec(clip=seg.clip, num_clients=self.num_clients)
                floats[seg.name] = dequantize_sum(chunk, spec=spec, num_summed=num_summed).reshape(
                    seg.shape
                )
            else:
                ints[seg.name] = chunk.astype(np.int64).reshape(seg.shape)
        return floats, ints
