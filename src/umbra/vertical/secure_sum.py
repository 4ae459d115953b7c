"""The label holder learns only the sum of the parties' embeddings: pairwise additive masks.

Because fusion is a masked mean, the label holder needs per entity only ``Σ_p e_p`` and
the count. Each feature party ``i`` encodes its ``(B, D)`` batch (zeros where it lacks the
entity) in fixed point (:mod:`umbra.secure.secagg.quantize`: clip to ``[-clip, clip]``,
stochastic rounding with uniforms from the privacy stream, headroom for ``K`` terms in
Z_{2^32}) and adds ``Σ_{j>i} PRG(s_ij) - Σ_{j<i} PRG(s_ij)`` mod 2^32, where ``s_ij`` is
the X25519 agreement of parties ``i`` and ``j`` (keys from the OS CSPRNG, HKDF with this
protocol's label) expanded per step by :func:`umbra.secure.secagg.crypto.prg_uint32`. The
masks cancel in the sum, which decodes to the sum of the encodings; each single masked
vector is uniform in Z_{2^32}. This is the masking core of SecAgg (Bonomi et al. /
Bell et al., CCS 2017/2020) without its dropout recovery: a split-learning step needs every
party that holds an entity anyway, so a silent party stops the step.

What it does not hide: an entity held by the label holder and one other party only —
the label holder subtracts its own embedding and sees the other's (see docs/vertical.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from umbra.privacy.randomness import SecureRandom
from umbra.secure.secagg.crypto import KeyPair, agree, prg_uint32
from umbra.secure.secagg.quantize import QuantizationSpec, Uniforms, dequantize_sum, quantize

__all__ = [
    "MASK_INFO",
    "encode_rows",
    "mask_for",
    "masked_share",
    "pair_seeds",
    "unmask_sum",
]

#: HKDF label of the pairwise seeds (keeps them apart from SecAgg+'s own agreements).
MASK_INFO = b"umbra-vertical-embedding-mask-v1"
_PURPOSE = b"vertical-step"


def pair_seeds(
    own: int, keys: KeyPair, publics: Mapping[int, bytes], *, info: bytes = MASK_INFO
) -> dict[int, bytes]:
    """``j -> s_ij``: the seed party ``own`` shares with every other party ``j`` (HKDF label
    ``info``: each protocol its own)."""
    return {j: agree(keys.private, pub, info=info) for j, pub in publics.items() if j != own}


def mask_for(
    own: int,
    seeds: Mapping[int, bytes],
    *,
    step: int,
    length: int,
    purpose: bytes = _PURPOSE,
) -> np.ndarray:
    """``Σ_{j>own} PRG(s_j) - Σ_{j<own} PRG(s_j)`` mod 2^32, ``(length,)`` uint32; one
    ``(step, purpose)`` per masked vector (a stream is never reused)."""
    mask = np.zeros(length, dtype=np.uint32)
    for j, seed in seeds.items():
        stream = prg_uint32(seed, length=length, round_number=step, purpose=purpose)
        if j > own:
            mask += stream  # uint32 arithmetic wraps: mod 2^32
        else:
            mask -= stream
    return mask


def encode_rows(x: np.ndarray, spec: QuantizationSpec, rng: Uniforms) -> np.ndarray:
    """Fixed-point levels of ``x`` (flattened), uint32."""
    return quantize(np.asarray(x, dtype=np.float64).ravel(), spec=spec, rng=rng)


def masked_share(
    x: np.ndarray,
    *,
    own: int,
    seeds: Mapping[int, bytes],
    step: int,
    spec: QuantizationSpec,
    rng: Uniforms | None = None,
) -> np.ndarray:
    """What party ``own`` sends for a ``(B, D)`` batch: its encoding plus its mask."""
    levels = encode_rows(x, spec, rng if rng is not None else SecureRandom())
    return levels + mask_for(own, seeds, step=step, length=levels.size)


def unmask_sum(
    shares: list[np.ndarray], *, spec: QuantizationSpec, shape: tuple[int, ...]
) -> np.ndarray:
    """The label holder's side: add every party's share mod 2^32 and decode, float64."""
    if len(shares) != spec.num_clients:
        raise ValueError(f"need a share from each of the {spec.num_clients} parties, "
                         f"got {len(shares)}")  # fmt: skip
    total = np.zeros_like(shares[0], dtype=np.uint32)
    for s in shares:
        total += s
    return dequantize_sum(total, spec=spec, num_summed=len(shares)).reshape(shape)
