"""Privacy randomness: a ChaCha20 keystream seeded from the OS, and the samplers DP needs.

Every random choice a DP or cryptographic argument rests on (the Poisson sample of DP-SGD,
the client sample of client-level DP, Gaussian and discrete Gaussian noise, the randomised
rounding before secure aggregation) is drawn here, never from ``run.seed``, ``random``,
numpy or a seeded ``torch.Generator``: amplification by subsampling needs a sample the
adversary cannot predict, and noise whose generator state is known can be subtracted. This
is the counterpart of Opacus' ``secure_mode=True`` (a cryptographically secure generator
for noise and sampling).

The stream is ChaCha20 (``cryptography``'s, RFC 8439) under a fresh 256-bit key from
``os.urandom``; there is deliberately no way to seed it from configuration. Tests may fix
the key through :meth:`SecureRandom.for_testing` to check statistics reproducibly.

Samplers (all vectorised, float64):

* :meth:`SecureRandom.uniform`: 53-bit uniform floats in [0, 1) (top 53 bits of a 64-bit
  word, as ``numpy.random`` does);
* :meth:`SecureRandom.normal`: Box–Muller, both outputs used;
* :meth:`SecureRandom.bernoulli`: ``u < p`` (Poisson sampling masks);
* :meth:`SecureRandom.discrete_gaussian`: N_Z(0, σ²) by rejection from a discrete Laplace
  (Canonne, Kamath & Steinke, NeurIPS 2020, "The Discrete Gaussian for Differential
  Privacy", https://arxiv.org/abs/2004.00010, Algorithm 3), vectorised like TensorFlow
  Federated's ``discrete_gaussian_utils`` (oversample, keep the accepted draws, repeat).
  Float64 arithmetic: exact up to floating-point rounding of the acceptance probabilities;
* :meth:`SecureRandom.torch_normal`: the Gaussian as a torch tensor (DP-SGD noise).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["SecureRandom", "discrete_gaussian_pmf"]

_KEY_BYTES = 32
_NONCE_BYTES = 16  # cryptography's ChaCha20 nonce: 4-byte block counter + 12-byte nonce
_TWO_PI = 2.0 * math.pi
_INV_2_53 = 1.0 / float(1 << 53)


class SecureRandom:
    """A ChaCha20 keystream (key from ``os.urandom``) turned into random numbers.

    One instance per party and use; never pickled, logged or sent (it holds its key).

    Args:
        _key: test-only: a 32-byte key that makes the stream reproducible. Production code
            calls ``SecureRandom()``; use :meth:`for_testing` in tests.
    """

    __slots__ = ("_enc",)

    def __init__(self, *, _key: bytes | None = None) -> None:
        key = os.urandom(_KEY_BYTES) if _key is None else bytes(_key)
        if len(key) != _KEY_BYTES:
            raise ValueError(f"key must be {_KEY_BYTES} bytes, got {len(key)}")
        cipher = Cipher(algorithms.ChaCha20(key, b"\0" * _NONCE_BYTES), mode=None)
        self._enc = cipher.encryptor()

    @classmethod
    def for_testing(cls, seed: int) -> SecureRandom:
        """A reproducible stream for statistical tests only (the key is ``seed``'s 32
        little-endian bytes); never use it where privacy is claimed."""
        return cls(_key=int(seed).to_bytes(_KEY_BYTES, "little", signed=False))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SecureRandom holds a secret key and cannot be pickled")

    def __repr__(self) -> str:
        return "SecureRandom(<ChaCha20, key hidden>)"

    # ------------------------------------------------------------------ raw stream
    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` keystream bytes."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self._enc.update(bytes(n))

    def _words(self, n: int) -> np.ndarray:
        return np.frombuffer(self.random_bytes(8 * n), dtype="<u8")

    # ------------------------------------------------------------------ samplers
    def uniform(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform float64 in [0, 1) with 53 random bits each."""
        shape_t = _shape(shape)
        n = math.prod(shape_t)
        return ((self._words(n) >> np.uint64(11)).astype(np.float64) * _INV_2_53).reshape(shape_t)

    def _normal_t(self, n: int) -> torch.Tensor:
        # Box–Muller in float64 with torch's vectorised transcendental functions (several
        # times faster than numpy's on CPU); both outputs of each pair are used.
        half = (n + 1) // 2
        u = torch.from_numpy(self.uniform(2 * half))
        r = torch.sqrt(-2.0 * torch.log1p(-u[:half]))  # 1 - u in (0, 1]: log finite
        theta = _TWO_PI * u[half:]
        return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n]

    def normal(self, shape: int | tuple[int, ...], *, std: float = 1.0) -> np.ndarray:
        """i.i.d. N(0, std²) float64 (Box–Muller on 53-bit uniforms)."""
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"std must be a finite number >= 0, got {std}")
        shape_t = _shape(shape)
        z = self._normal_t(math.prod(shape_t))
        if std != 1.0:
            z *= std
        return z.numpy().reshape(shape_t)

    def bernoulli(self, p: float | np.ndarray, shape: int | tuple[int, ...]) -> np.ndarray:
        """Boolean mask, each entry True independently with probability ``p`` (broadcast)."""
        return self.uniform(shape) < p

    def integers(self, high: int, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform integers in [0, high) (bias ≤ high / 2⁵³, irrelevant for high ≪ 2⁵³)."""
        if not 1 <= high <= 1 << 32:
            raise ValueError(f"high must be in [1, 2^32], got {high}")
        return np.floor(self.uniform(shape) * high).astype(np.int64)

    def geometric(self, p: float, size: int) -> np.ndarray:
        """Failures before the first success, success probability ``p`` in (0, 1], int64."""
        return self._geometric_t(p, size).numpy()

    def _geometric_t(self, p: float, size: int) -> torch.Tensor:
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1], got {p}")
        if p == 1:
            return torch.zeros(size, dtype=torch.int64)
        u = torch.from_numpy(self.uniform(size))
        return torch.floor(torch.log1p(-u) / math.log1p(-p)).to(torch.int64)

    def discrete_laplace(self, t: float, size: int) -> np.ndarray:
        """Discrete Laplace with P[x] ∝ exp(-|x| / t): difference of two geometrics."""
        return self._discrete_laplace_t(t, size).numpy()

    def _discrete_laplace_t(self, t: float, size: int) -> torch.Tensor:
        if not t > 0:
            raise ValueError(f"t must be > 0, got {t}")
        p = -math.expm1(-1.0 / t)
        return self._geometric_t(p, size) - self._geometric_t(p, size)

    def discrete_gaussian(self, sigma: float, shape: int | tuple[int, ...]) -> np.ndarray:
        """i.i.d. N_Z(0, σ²) int64: P[x] ∝ exp(-x² / 2σ²) on the integers.

        Rejection sampling from the discrete Laplace with ``t = floor(σ) + 1``, accepting
        ``Y`` with probability ``exp(-(|Y| - σ²/t)² / 2σ²)`` (Canonne et al. 2020,
        Algorithm 3; acceptance ≥ ~0.6 for every σ), vectorised as TFF does.
        """
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        shape_t = _shape(shape)
        n = math.prod(shape_t)
        if sigma == 0 or n == 0:
            return np.zeros(shape_t, dtype=np.int64)
        t = math.floor(sigma) + 1
        shift = sigma * sigma / t
        two_var = 2.0 * sigma * sigma
        parts: list[torch.Tensor] = []
        filled = 0
        while filled < n:
            draw = max(1000, int(1.5 * (n - filled)))
            y = self._discrete_laplace_t(t, draw)
            u = torch.from_numpy(self.uniform(draw))
            accept = u < torch.exp(-torch.square(y.abs().to(torch.float64) - shift) / two_var)
            kept = y[accept][: n - filled]
            parts.append(kept)
            filled += int(kept.numel())
        return torch.cat(parts).numpy().reshape(shape_t)

    def torch_normal(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        std: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """:meth:`normal` as a torch tensor (drawn in float64, then cast)."""
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"std must be a finite number >= 0, got {std}")
        shape_t = _shape(tuple(shape))
        z = self._normal_t(math.prod(shape_t)).reshape(shape_t)
        if std != 1.0:
            z *= std
        return z.to(dtype=dtype, device=device)


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """Exact N_Z(0, σ²) probabilities of the integers in ``support`` (normaliser summed over
    ±(σ·40 + 10), beyond which the mass is below float64 resolution)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    half = math.ceil(40 * sigma) + 10
    k = np.arange(-half, half + 1, dtype=np.float64)
    norm = float(np.exp(-np.square(k) / (2 * sigma * sigma)).sum())
    s = np.asarray(support, dtype=np.float64)
    return np.exp(-np.square(s) / (2 * sigma * sigma)) / norm


def _shape(shape: int | tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    out = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
    if any(s < 0 for s in out):
        raise ValueError(f"shape must be non-negative, got {out}")
    return out
