"""Update compression codecs: what a client sends instead of its full float32 update.

Every codec compresses a client's *delta* ``Δ = y - x`` (``x`` the global model it
received) tensor by tensor into a few wire arrays, and decodes them back to a float
``Δ̂`` of the original shape; the server adds ``Δ̂`` to ``x`` before the strategy
aggregates, so every strategy works unchanged. Pure numpy: no Flower, no I/O.

Methods (``compression.method``):

- ``q8`` / ``q4``: unbiased stochastic quantisation (QSGD-style, Alistarh et al. 2017,
  https://arxiv.org/abs/1610.02132) to ``2^b`` levels spanning each tensor's
  ``[min, max]``: ``v`` between grid points ``lo <= v <= hi = lo + s`` rounds up with
  probability ``(v - lo) / s``, so ``E[v̂] = v`` and ``Var[v̂] = (v - lo)(hi - v)``. Wire:
  uint8 codes (two per byte for 4 bits) plus a float32 minimum and step per tensor.
- ``topk``: the ``fraction`` largest-magnitude coordinates of each tensor (Stich et al.
  2018, https://arxiv.org/abs/1809.07599), sent as int32 indices + float32 values; meant
  with error feedback (:func:`with_feedback`), which carries what was not sent into the
  next round.
- ``shared-k``: the same ``fraction`` of coordinates at every client of a round
  (:class:`umbra.secure.shared_coordinates.RoundCoordinates`): the round's block of a
  random permutation fixed by the run seed, or the last global update's largest
  coordinates plus a smaller such block; only the values travel: float32, or
  (``value_bits`` 16 / 8) the unbiased stochastic codes of the kept values over their
  own ``[min, max]``, as ``q8`` does for a whole tensor, so that a larger fraction fits
  the same bytes. Sums of such vectors are again such vectors, which is what secure
  aggregation needs (per-client top-k supports cannot be summed under masks; under SecAgg+
  the values travel in the protocol's ring instead, 16 bits wide for ``value_bits = 16``).

The quantiser's rounding draws are not privacy-relevant (no DP claim rests on them) and
come from a numpy generator seeded per (run, round, client); the shared-k coordinates are
public by design: from the run seed, the round and the previous released aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from umbra.secure.shared_coordinates import RoundCoordinates, kept_count

__all__ = [
    "COMPRESS_DENSE",
    "COMPRESS_FEEDBACK",
    "METHODS",
    "SEP",
    "VALUE_BITS",
    "Arrays",
    "Codec",
    "codec",
    "decode_arrays",
    "dequantise",
    "encode_arrays",
    "quantise",
    "top_indices",
    "with_feedback",
]

Arrays = dict[str, np.ndarray]
#: Train-message config keys the server announces and the client reads (both sides; the
#: method, fraction and seed keys are the secure transport's too: `shared_coordinates`).
COMPRESS_FEEDBACK = "compress-feedback"
#: the secure transport sparsifies: the client replies with dense arrays
COMPRESS_DENSE = "compress-dense"
#: Separator between a tensor's name and the part of its code (``enc.w|q``).
SEP = "|"


@dataclass(frozen=True)
class Codec:
    """How one method turns a tensor into wire arrays and back.

    ``encode(v, rng, indices)`` -> parts (name -> array); ``decode(parts, shape, indices)``
    -> float64 array of ``shape``. ``indices`` are the public shared coordinates of the
    tensor (``shared-k``), else None.
    """

    name: str
    encode: Callable[[np.ndarray, np.random.Generator, np.ndarray | None], Arrays]
    decode: Callable[[Mapping[str, np.ndarray], tuple[int, ...], np.ndarray | None], np.ndarray]
    #: codes that need each client's own support or grid: no sum under masks
    sparse_shared: bool = False


# --- stochastic quantisation ----------------------------------------------------------


def quantise(
    v: np.ndarray, bits: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.float32, np.float32]:
    """Unbiased stochastic rounding of ``v`` to ``2^bits`` levels over ``[min v, max v]``.

    Returns ``(codes, lo, step)``: codes in ``[0, 2^bits - 1]`` (uint8 up to 8 bits,
    uint16 up to 16) and the float32 grid origin and step, so that ``lo + codes * step``
    is ``v`` in expectation.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    dtype = np.uint8 if bits <= 8 else np.uint16
    flat = np.asarray(v, dtype=np.float64).ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=dtype), np.float32(0.0), np.float32(0.0)
    levels = (1 << bits) - 1
    # float32 grid that covers [min, max]: lo rounded down, the step up (else the ends
    # would be clipped, a bias)
    lo = np.float32(flat.min())
    if float(lo) > flat.min():
        lo = np.nextafter(lo, np.float32(-np.inf))
    step = np.float32((float(flat.max()) - float(lo)) / levels)
    while step > 0 and float(lo) + levels * float(step) < flat.max():
        step = np.nextafter(step, np.float32(np.inf))
    if not step > 0:  # a constant tensor (or one too narrow for float32): its minimum
        return np.zeros(flat.size, dtype=dtype), lo, np.float32(0.0)
    # grid position against the float32 lo/step the decoder will use: unbiased exactly
    t = np.clip((flat - float(lo)) / float(step), 0.0, float(levels))
    floor = np.minimum(np.floor(t), levels - 1)
    up = rng.random(flat.size) < (t - floor)
    return (floor + up).astype(dtype), lo, step


def dequantise(codes: np.ndarray, lo: float, step: float) -> np.ndarray:
    """``lo + codes * step`` in float64 (the inverse of :func:`quantise` in expectation)."""
    return float(lo) + codes.astype(np.float64) * float(step)


def _pack4(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte (the first in the low nibble)."""
    padded = np.concatenate([codes, np.zeros(codes.size % 2, dtype=np.uint8)])
    return (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)


def _unpack4(packed: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:n]


def _quant_codec(bits: int) -> Codec:
    def encode(v: np.ndarray, rng: np.random.Generator, _: np.ndarray | None) -> Arrays:
        codes, lo, step = quantise(v, bits, rng)
        wire = _pack4(codes) if bits == 4 else codes
        return {"q": wire, "lo": np.array([lo, step], dtype=np.float32)}

    def decode(
        parts: Mapping[str, np.ndarray], shape: tuple[int, ...], _: np.ndarray | None
    ) -> np.ndarray:
        n = math.prod(shape)
        codes = _unpack4(parts["q"], n) if bits == 4 else parts["q"]
        lo, step = (float(x) for x in parts["lo"])
        return dequantise(codes, lo, step).reshape(shape)

    return Codec(name=f"q{bits}", encode=encode, decode=decode)


# --- sparsification -------------------------------------------------------------------


def top_indices(v: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the ``k`` largest ``|v|`` (ties: numpy's partition order)."""
    flat = np.abs(np.asarray(v).ravel())
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int32)
    return np.sort(np.argpartition(flat, flat.size - k)[flat.size - k :]).astype(np.int32)


def _topk_codec(fraction: float) -> Codec:
    def encode(v: np.ndarray, _: np.random.Generator, __: np.ndarray | None) -> Arrays:
        idx = top_indices(v, kept_count(v.size, fraction))
        return {"idx": idx, "val": np.asarray(v).ravel()[idx].astype(np.float32)}

    def decode(
        parts: Mapping[str, np.ndarray], shape: tuple[int, ...], _: np.ndarray | None
    ) -> np.ndarray:
        out = np.zeros(math.prod(shape), dtype=np.float64)
        out[parts["idx"].astype(np.int64)] = parts["val"]
        return out.reshape(shape)

    return Codec(name="topk", encode=encode, decode=decode)


def _shared_codec(bits: int = 32) -> Codec:
    """``shared-k``: the kept values as float32 (``bits`` 32) or as ``bits``-bit
    stochastic codes of their own range (16 or 8)."""

    def encode(v: np.ndarray, rng: np.random.Generator, idx: np.ndarray | None) -> Arrays:
        assert idx is not None  # encode_arrays always passes the shared coordinates
        kept = np.asarray(v).ravel()[idx]
        if bits == 32:
            return {"val": kept.astype(np.float32)}
        codes, lo, step = quantise(kept, bits, rng)
        return {"q": codes, "lo": np.array([lo, step], dtype=np.float32)}

    def decode(
        parts: Mapping[str, np.ndarray], shape: tuple[int, ...], idx: np.ndarray | None
    ) -> np.ndarray:
        assert idx is not None
        out = np.zeros(math.prod(shape), dtype=np.float64)
        if bits == 32:
            out[idx] = parts["val"]
        else:
            lo, step = (float(x) for x in parts["lo"])
            codes = parts["q"]
            if codes.shape != idx.shape:
                raise ValueError(f"{codes.size} codes for {idx.size} shared coordinates")
            out[idx] = dequantise(codes, lo, step)
        return out.reshape(shape)

    return Codec(name="shared-k", encode=encode, decode=decode, sparse_shared=True)


#: widths ``compression.value_bits`` accepts for ``shared-k``'s kept values
VALUE_BITS: tuple[int, ...] = (32, 16, 8)


#: compression.method -> its codec for a given fraction and value width (``none`` has none)
_CODECS: dict[str, Callable[[float, int], Codec]] = {
    "q8": lambda _, __: _quant_codec(8),
    "q4": lambda _, __: _quant_codec(4),
    "topk": lambda fraction, _: _topk_codec(fraction),
    "shared-k": lambda _, bits: _shared_codec(bits),
}
#: every accepted ``compression.method``
METHODS: tuple[str, ...] = ("none", *_CODECS)


def codec(method: str, fraction: float = 1.0, value_bits: int = 32) -> Codec:
    """The codec of ``method`` (not ``none``); ``fraction`` is the sparsifiers' share,
    ``value_bits`` the width of ``shared-k``'s kept values (`VALUE_BITS`)."""
    if method not in _CODECS:
        raise ValueError(f"compression.method must be one of {', '.join(_CODECS)}, got {method!r}")
    if value_bits not in VALUE_BITS:
        raise ValueError(f"compression.value_bits must be one of {VALUE_BITS}, got {value_bits}")
    return _CODECS[method](fraction, value_bits)


# --- whole updates --------------------------------------------------------------------


def _shared(
    coordinates: RoundCoordinates | None, c: Codec, name: str, size: int
) -> np.ndarray | None:
    """The shared coordinates of array ``name`` for a ``shared-k`` codec, else None."""
    if not c.sparse_shared:
        return None
    if coordinates is None:
        raise ValueError(f"{c.name} needs the round's shared coordinates")
    return coordinates.indices(name, size)


def encode_arrays(
    delta: Mapping[str, np.ndarray],
    c: Codec,
    *,
    rng: np.random.Generator,
    coordinates: RoundCoordinates | None = None,
) -> Arrays:
    """Wire arrays of ``delta`` (name -> tensor): ``<name>|<part>`` per code part.

    ``coordinates``: the round's shared coordinates (needed by a ``shared-k`` codec)."""
    out: Arrays = {}
    for name, v in delta.items():
        idx = _shared(coordinates, c, name, v.size)
        for part, arr in c.encode(np.asarray(v), rng, idx).items():
            out[f"{name}{SEP}{part}"] = arr
    return out


def decode_arrays(
    wire: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    c: Codec,
    *,
    coordinates: RoundCoordinates | None = None,
) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays` for the tensors of ``shapes`` (float64, in
    ``shapes``' order). Raises ValueError when a tensor's code is missing."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in wire.items():
        name, _, part = key.rpartition(SEP)
        parts.setdefault(name, {})[part] = arr
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name not in parts:
            raise ValueError(f"the compressed update has no code for {name!r}")
        idx = _shared(coordinates, c, name, math.prod(shape))
        out[name] = c.decode(parts[name], tuple(shape), idx)
    return out


def with_feedback(
    delta: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray] | None,
    send: Callable[[dict[str, np.ndarray]], tuple[Arrays, dict[str, np.ndarray]]],
) -> tuple[Arrays, dict[str, np.ndarray]]:
    """Error feedback (Seide et al. 2014; Stich et al. 2018): compress ``v = Δ + e`` and
    keep what was not sent, ``e' = v - sent``.

    ``send(v)`` returns ``(wire arrays, sent)``, ``sent`` the decoded float64 values the
    server will see. Returns ``(wire, e')``; ``e' = e + Δ - sent`` exactly (float64).
    """
    v = {
        k: np.asarray(d, dtype=np.float64)
        + (np.asarray(residual[k], dtype=np.float64) if residual and k in residual else 0.0)
        for k, d in delta.items()
    }
    wire, sent = send(v)
    return wire, {k: v[k] - sent[k] for k in v}
