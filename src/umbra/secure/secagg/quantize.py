"""Encoding of float updates (and integer counts) into the ring Z_{2^32} and back.

Floats are clipped to ``[-clip, clip]``, shifted to ``[0, 2 clip]`` and scaled so that one
client's value lies in ``[0, L]`` with ``L = floor((2^32 - 1) / num_clients)``: the sum of
up to ``num_clients`` encodings never wraps modulo 2^32 (headroom). Rounding to integers
is stochastic (unbiased: E[q] = v), as in Bell et al. (CCS 2020, §5) and Kairouz et al.
(ICML 2021, "distributed discrete Gaussian"), with uniforms from the privacy stream
(:class:`~umbra.privacy.randomness.SecureRandom`) in production.
Integer vectors (e.g. per-modality example counts) travel unscaled and sum exactly.

A payload may use the 16-bit ring Z_{2^16} instead (``PayloadLayout.bits = 16``, half the
bytes): floats get ``floor((2^16 - 1) / num_clients)`` levels, and each integer travels as
base-``2^d`` digits, ``d`` the largest width whose ``num_clients``-fold sum cannot wrap
(13 bits for 8 clients; at least 8 for up to 257), recombined exactly after the sum.

DP segments (:class:`~umbra.privacy.ddg.IntegerNoise`, the distributed discrete Gaussian of
:mod:`umbra.privacy.ddg`): the values arrive clipped and scaled but noiseless; they are
never clipped here (a value beyond ``±clip`` refuses the round), rounded with randomised
rounding (conditional, with a norm bound, for client-level DP), given a discrete Gaussian
share ``N_Z(0, s²)`` per coordinate in integer units, and refused if any level would leave
``[0, L]`` (the ring sum would wrap). The decoder is the same: the noise is zero-mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from umbra.privacy.ddg import DDGError, IntegerNoise, conditional_round, randomized_round
from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.constants import RING_BITS
from umbra.secure.secagg.crypto import ring_dtype

#: Uniform source of the (non-DP) stochastic rounding: the privacy stream or, in tests, numpy.
Uniforms = np.random.Generator | SecureRandom

__all__ = [
    "IntegerNoise",
    "PayloadLayout",
    "QuantizationSpec",
    "Segment",
    "dequantize_sum",
    "quantize",
    "quantize_with_noise",
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


def _uniform(rng: Uniforms, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(shape) if isinstance(rng, SecureRandom) else rng.random(shape)


def quantize(x: np.ndarray, *, spec: QuantizationSpec, rng: Uniforms) -> np.ndarray:
    """Clip, shift and stochastically round ``x`` to uint32 levels in ``[0, spec.max_level]``.

    Raises ValueError for non-finite values (a diverged update): NaN survives clipping and
    would be cast to an arbitrary level, silently corrupting the sum.
    """
    v = np.array(x, dtype=np.float64)  # a private copy: every step below is in place
    if not np.all(np.isfinite(v)):
        raise ValueError("update holds non-finite values (training diverged): not quantised")
    np.clip(v, -spec.clip, spec.clip, out=v)
    v += spec.clip
    v *= spec.scale
    v += _uniform(rng, v.shape)
    np.floor(v, out=v)
    np.minimum(v, spec.max_level, out=v)
    return v.astype(np.uint32)


def quantize_with_noise(
    x: np.ndarray,
    *,
    spec: QuantizationSpec,
    share_sigma: float,
    rng: SecureRandom,
    norm_bound: float | None = None,
    what: str = "update",
) -> np.ndarray:
    """One client's DP encoding of ``x`` (float, noiseless): levels + a discrete Gaussian share.

    ``level = R((x + clip)·scale) + N_Z(0, share_sigma²)`` per coordinate, ``R`` unbiased
    randomised rounding from ``rng`` (conditional on ``‖R(v) - clip·scale‖₂ ≤ norm_bound``
    when given: Kairouz et al. 2021, §4).

    Raises:
        DDGError: a value of ``x`` lies beyond ``±clip`` (it would be clipped, biasing the
            analysed sum), or a noisy level leaves ``[0, max_level]`` (the ring sum could
            wrap). The round must not be released; nothing is clipped silently.
    """
    v = np.array(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise DDGError(f"DP {what} holds non-finite values")
    peak = float(np.abs(v).max()) if v.size else 0.0
    if peak > spec.clip:
        raise DDGError(
            f"DP {what} reaches {peak:.4g}, beyond the quantisation range ±{spec.clip:g}"
            " (secure.clip_range): refusing to clip it"
        )
    center = spec.clip * spec.scale
    v += spec.clip
    v *= spec.scale
    if norm_bound is None:
        levels = randomized_round(v, rng)
    else:
        levels = conditional_round(v, center=center, bound=norm_bound, rng=rng)
    levels += rng.discrete_gaussian(share_sigma, v.shape)
    low, high = (float(levels.min()), float(levels.max())) if levels.size else (0.0, 0.0)
    if low < 0 or high > spec.max_level:
        raise DDGError(
            f"DP {what} with its noise share leaves the ring's per-client range"
            f" [0, {spec.max_level}] (levels {low:.0f}..{high:.0f}): the secure sum would wrap"
        )
    return levels.astype(np.uint32)


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
    """Layout of several named arrays flattened into one ring vector (float and int parts).

    Build it with `from_arrays` on every client from the same shapes (the model's), encode
    each client's arrays with `encode`, and decode the unmasked ring sum with `decode_sum`.
    """

    segments: tuple[Segment, ...]
    num_clients: int
    bits: int = RING_BITS

    @classmethod
    def from_arrays(
        cls,
        floats: Mapping[str, np.ndarray],
        ints: Mapping[str, np.ndarray] | None = None,
        *,
        clip: float | Mapping[str, float],
        num_clients: int,
        bits: int = RING_BITS,
    ) -> PayloadLayout:
        """Layout for ``floats`` (clipped to ``±clip``, per name if a mapping) and ``ints``,
        in the ring Z_{2^bits} (``bits`` 32 or 16)."""
        ring_dtype(bits)  # validates the width
        ints = ints or {}
        overlap = set(floats) & set(ints)
        if overlap:
            raise ValueError(f"names used for both floats and ints: {sorted(overlap)}")
        segments = []
        for name, arr in floats.items():
            c = clip[name] if isinstance(clip, Mapping) else clip
            QuantizationSpec(clip=float(c), num_clients=num_clients, bits=bits)  # validates
            segments.append(Segment(name, tuple(np.shape(arr)), "float", float(c)))
        segments += [Segment(name, tuple(np.shape(a)), "int") for name, a in ints.items()]
        return cls(tuple(segments), num_clients, bits)

    def _spec(self, clip: float) -> QuantizationSpec:
        return QuantizationSpec(clip=clip, num_clients=self.num_clients, bits=self.bits)

    @property
    def digit_bits(self) -> int:
        """Width of one integer digit: the whole ring at 32 bits; in a narrower ring the
        widest ``d`` with ``num_clients * (2^d - 1) < 2^bits`` (no wrap in the sum)."""
        if self.bits == RING_BITS:
            return RING_BITS
        return math.floor(math.log2(((1 << self.bits) - 1) // self.num_clients + 1))

    @property
    def digits(self) -> int:
        """Ring elements per integer: 1 at 32 bits, else enough digits for ``_RING_MAX``."""
        return 1 if self.bits == RING_BITS else math.ceil(RING_BITS / self.digit_bits)

    def _width(self, seg: Segment) -> int:
        return seg.size * (self.digits if seg.kind == "int" else 1)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The ring's numpy dtype (uint32, or uint16 for the 16-bit ring)."""
        return ring_dtype(self.bits)

    @property
    def size(self) -> int:
        """Length of the encoded vector (ring elements)."""
        return sum(self._width(s) for s in self.segments)

    def encode(
        self,
        floats: Mapping[str, np.ndarray],
        ints: Mapping[str, np.ndarray] | None = None,
        *,
        rng: Uniforms,
        noise: IntegerNoise | None = None,
    ) -> np.ndarray:
        """Flatten and encode one client's arrays into a ring vector of length `size`
        (dtype `dtype`).

        With ``noise``, the float segments it names are encoded per group by
        :func:`quantize_with_noise` (``rng`` must then be a :class:`SecureRandom`).
        """
        ints = ints or {}
        parts: dict[str, np.ndarray] = {}
        for seg in self.segments:
            source = floats if seg.kind == "float" else ints
            if seg.name not in source:
                raise ValueError(f"missing {seg.kind} array {seg.name!r}")
            arr = np.asarray(source[seg.name])
            if arr.shape != seg.shape:
                raise ValueError(f"array {seg.name!r} has shape {arr.shape}, expected {seg.shape}")
            if seg.kind == "float":
                if noise is not None and seg.name in noise.groups:
                    continue  # below, one group at a time
                parts[seg.name] = quantize(arr.ravel(), spec=self._spec(seg.clip), rng=rng)
            else:
                limit = _RING_MAX // self.num_clients
                if arr.size and (
                    not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > limit
                ):
                    raise ValueError(f"int array {seg.name!r} must hold integers in [0, {limit}]")
                parts[seg.name] = self._int_digits(arr.ravel().astype(np.uint64))
        if noise is not None:
            parts.update(self._encode_noisy(floats, noise, rng))
        if not parts:
            return np.zeros(0, dtype=self.dtype)
        return np.concatenate([parts[seg.name] for seg in self.segments]).astype(self.dtype)

    def _int_digits(self, values: np.ndarray) -> np.ndarray:
        """``values`` as `digits` little-endian base-``2^digit_bits`` digits each (row-major)."""
        if self.digits == 1:
            return values.astype(np.uint32)
        d = self.digit_bits
        shifts = np.arange(self.digits, dtype=np.uint64) * np.uint64(d)
        digits = (values[:, None] >> shifts[None, :]) & np.uint64((1 << d) - 1)
        return digits.ravel().astype(np.uint32)

    def _encode_noisy(
        self, floats: Mapping[str, np.ndarray], noise: IntegerNoise, rng: Uniforms
    ) -> dict[str, np.ndarray]:
        if not isinstance(rng, SecureRandom):
            raise TypeError("DP noise and rounding must come from a SecureRandom stream")
        by_group: dict[str, list[Segment]] = {}
        for seg in self.segments:
            if seg.kind == "float" and seg.name in noise.groups:
                by_group.setdefault(noise.groups[seg.name], []).append(seg)
        unknown = sorted(set(noise.groups) - {s.name for s in self.segments if s.kind == "float"})
        if unknown:
            raise ValueError(f"noise names segments not in the layout: {unknown}")
        out: dict[str, np.ndarray] = {}
        for group, segs in by_group.items():
            clips = {s.clip for s in segs}
            if len(clips) != 1:
                raise ValueError(f"group {group!r} mixes quantisation ranges {sorted(clips)}")
            spec = self._spec(clips.pop())
            flat = np.concatenate(
                [np.asarray(floats[s.name], dtype=np.float64).ravel() for s in segs]
            )
            bound = None if noise.norm_bound is None else noise.norm_bound[group]
            levels = quantize_with_noise(flat, spec=spec, share_sigma=noise.share_sigma[group],
                                         rng=rng, norm_bound=bound, what=f"group {group!r}")  # fmt: skip
            offset = 0
            for s in segs:
                out[s.name] = levels[offset : offset + s.size]
                offset += s.size
        return out

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
            width = self._width(seg)
            chunk = total[offset : offset + width]
            offset += width
            if seg.kind == "float":
                spec = self._spec(seg.clip)
                floats[seg.name] = dequantize_sum(chunk, spec=spec, num_summed=num_summed).reshape(
                    seg.shape
                )
            else:
                digits = chunk.astype(np.int64).reshape(seg.size, self.digits)
                weights = np.int64(1) << (np.arange(self.digits, dtype=np.int64) * self.digit_bits)
                ints[seg.name] = (digits @ weights).reshape(seg.shape)
        return floats, ints
