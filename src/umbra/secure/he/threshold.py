"""Threshold multiparty CKKS on SEAL (TenSEAL's ``sealapi``): pure crypto, no Flower here.

Mouchet, Troncoso-Pastoriza, Bossuat, Hubaux, "Multiparty homomorphic encryption from
ring-learning-with-errors", PoPETs 2021 (MHE; the t-out-of-N variant shares each secret key
with Shamir), as in Lattigo's ``drlwe``/``dckks`` and OpenFHE's threshold CKKS:

* **CKG.** Every holder ``i`` draws a ternary ``s_i`` with SEAL's `KeyGenerator` and
  publishes ``b_i = -a s_i + e_i`` for a common uniform ``a``; the collective public key is
  ``(b, a) = (sum_i b_i, a)``, whose secret ``s = sum_i s_i`` nobody holds.
  SEAL's own public key ``pk_i = (-a_i s_i + e_i, a_i)`` gives
  ``b_i = pk_i[0] + (a_i - a) s_i`` pointwise in the NTT domain (`keygen_share`).
* **Threshold.** Each ``s_i`` is Shamir-shared coefficient-wise modulo each data prime
  (`shamir_shares`); holder ``j`` keeps ``sigma_j = sum_i f_i(x_j)``; for any set ``T`` of
  ``t`` holders ``sum_{j in T} lambda_j^T sigma_j = s`` (Lagrange at 0).
* **Encryption** under the collective key with SEAL's public-key `Encryptor`.
* **Decryption** (`partial_decrypt`, `combine`): each ``j in T`` returns
  ``h_j = c1 lambda_j^T sigma_j + e_j`` with flooding noise ``e_j`` drawn in the
  coefficient domain from the OS-seeded ChaCha20 keystream (`flood_noise`); anyone adds
  ``c0 + sum h_j`` and decodes. No party ever releases an unflooded approximate decryption:
  the raw decryption of CKKS reveals the secret key to whoever holds the ciphertext (Li &
  Micciancio, "On the security of homomorphic encryption on approximate numbers",
  EUROCRYPT 2021).

Noise bound and flooding (`ThresholdPlan`): see `fresh_noise_bound` and `flood_sigma`
(Li, Micciancio, Schorr, Shiu, "Securing approximate homomorphic encryption using
differential privacy", CRYPTO 2022; OpenFHE ``NOISE_FLOODING``).

Wire format: polynomials are sent bit-packed; ``c0`` of a fresh ciphertext is rounded to a
multiple of ``2^c0_drop_bits`` in the *coefficient* domain (SEAL's inverse NTT first) and
each decryption share to ``2^share_drop_bits``, both far below the flooding noise.

Security (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1, ternary
secret, classical 128-bit: log2 q <= 218 for N = 8192). N = 8192; ciphertexts carry two
data primes whose size `ThresholdPlan.fit` chooses per run (the smallest modulus that
decodes the sum of the run's value range at ``precision``, 60..96 bits); keys add one
60-bit special prime (at most 156 bits). SEAL's public-key encryption runs at the key level
and divides by the special prime, so a fresh ciphertext's noise is only the rounding term
(`fresh_noise_bound`).

Precision: every decrypted sum value is within ``precision`` (default 1e-8) of the exact
sum with ``precision_sigmas`` (6.5) standard deviations of margin; the scale is the power of
two that achieves it given the flooding noise (`ThresholdPlan.scale_bits`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from umbra.secure.he.ckks import HE_STANDARD_MAX_LOG_Q, CiphertextError

__all__ = [
    "Ring",
    "ThresholdParams",
    "ThresholdPlan",
    "add_polys",
    "ciphertext_bytes",
    "combine",
    "combine_many",
    "common_poly",
    "encrypt",
    "flood_noise",
    "flood_sigma",
    "fresh_noise_bound",
    "keygen_share",
    "lagrange_at_zero",
    "mulmod_u64",
    "pack_bits",
    "pack_ciphertext",
    "pack_residues",
    "pack_share",
    "pack_shares",
    "partial_decrypt",
    "partial_decrypt_many",
    "rounded_to_residues",
    "shamir_shares",
    "share_bytes",
    "sum_residues",
    "unpack_bits",
    "unpack_ciphertext",
    "unpack_ciphertexts",
    "unpack_ciphertexts_rounded",
    "unpack_residue_blobs",
    "unpack_residues",
    "unpack_share",
    "unpack_shares",
    "unpack_shares_rounded",
]

_HEADER = b"\x5e\xa1\x10\x04\x03"  # SEAL magic, header size 16, version 4.3
_BATCH = 15  # polynomials per SEAL transform (a ciphertext holds at most 16, one filler)


@dataclass(frozen=True)
class ThresholdParams:
    """Ring and security parameters of threshold CKKS.

    ``data_bits``: primes a ciphertext carries; ``special_bits``: the extra key-level prime
    (never in a ciphertext). ``statistical_bits``: ``s`` of the flooding bound.
    ``precision``: absolute error allowed on each decrypted sum value, met with
    ``precision_sigmas`` standard deviations of margin. ``tail_sigmas``: the multiple of
    the fresh-noise standard deviation taken as its bound ``B``.
    """

    poly_modulus_degree: int = 8192
    data_bits: tuple[int, ...] = (45, 45)
    special_bits: int = 60
    statistical_bits: int = 30
    precision: float = 1e-8
    precision_sigmas: float = 6.5
    tail_sigmas: float = 8.0

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_MAX_LOG_Q:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_LOG_Q)}")
        bits = (*self.data_bits, self.special_bits)
        if not self.data_bits or not all(30 <= b <= 60 for b in bits):
            raise ValueError("data_bits and special_bits must be primes of 30..60 bits")
        if max(self.data_bits) > 48:
            raise ValueError("data primes must be <= 48 bits (Shamir runs in uint64)")
        if sum(bits) > HE_STANDARD_MAX_LOG_Q[n]:
            raise ValueError(
                f"primes sum to {sum(bits)} bits > {HE_STANDARD_MAX_LOG_Q[n]}, the 128-bit "
                f"security bound for N={n}"
            )
        if self.statistical_bits < 30:
            raise ValueError("statistical_bits must be >= 30")
        if not 0 < self.precision < 1:
            raise ValueError("precision must be in (0, 1)")

    @property
    def values_per_ciphertext(self) -> int:
        """Reals per ciphertext: ``N/2`` complex slots, two reals each."""
        return self.poly_modulus_degree


def fresh_noise_bound(*, poly_modulus_degree: int, holders: int, summed: int, tail: float) -> float:
    """High-probability bound ``B`` on each coefficient of the noise of a sum of ``summed``
    fresh public-key encryptions under a collective key of ``holders`` ternary secrets.

    Derivation. SEAL encrypts at the key level, ``c = u (b, a) + (e0, e1)`` modulo ``Q P``,
    then divides by the special prime ``P`` with rounding; ``c0 + c1 s`` then carries
    ``(u e + e0 + e1 s) / P - (r0 + r1 s)`` with ``|r_k| <= 1/2``. The first term is
    below ``2^-20`` for the parameters here (``|u e|, |e1 s| < 2^30 << P = 2^60``): count
    it as 1. ``r1 s`` sums ``N`` products of a rounding error (variance 1/12) and a
    coefficient of ``s`` (a sum of ``holders`` ternary values, variance ``2 holders/3``):
    variance ``N holders / 18``; ``r0`` adds 1/12. Over ``summed`` independent ciphertexts
    the variance adds up; by the central limit theorem the coefficient exceeds ``tail``
    standard deviations with probability ``~2 exp(-tail^2/2)`` (``2^-45`` at ``tail=8``).
    Checked empirically in the tests (measured ``<= B``).
    """
    var = summed * (poly_modulus_degree * holders / 18.0 + 1.0 / 12.0)
    return tail * math.sqrt(var) + summed


def flood_sigma(*, bound: float, max_decryptions: int, statistical_bits: int) -> float:
    """Standard deviation of the flooding noise each decryption share adds:
    ``sigma = sqrt(12 tau) 2^(s/2) B`` (Li, Micciancio, Schorr & Shiu, CRYPTO 2022;
    OpenFHE's ``NOISE_FLOODING``) for ``tau`` released decryptions, ``s`` bits of
    statistical security and noise bound ``B``."""
    if max_decryptions < 1:
        raise ValueError(f"max_decryptions must be >= 1, got {max_decryptions}")
    return math.sqrt(12.0 * max_decryptions) * 2.0 ** (statistical_bits / 2) * bound


@dataclass(frozen=True)
class ThresholdPlan:
    """Public numbers of one run, derived identically by every party.

    ``holders``: key holders (N in t-out-of-N); ``threshold``: t; ``max_decryptions``: tau,
    the ciphertexts the key may ever decrypt (rounds x ciphertexts per round; holders
    refuse beyond it; the flooding covers `released_bound`); ``clip``: each client's values
    lie in ``[-clip, clip]``.
    """

    params: ThresholdParams
    holders: int
    threshold: int
    max_decryptions: int
    clip: float

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.holders:
            raise ValueError(
                f"threshold must be in [1, {self.holders}] holders, got {self.threshold}"
            )
        if self.holders >= 1 << 16:
            raise ValueError("at most 65535 key holders")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite float > 0, got {self.clip}")
        if self.value_bound < self.holders * self.clip:
            raise ValueError(
                f"threshold CKKS: a sum of {self.holders} values in ±{self.clip:g} exceeds "
                f"the decodable range ±{self.value_bound:.3g} for {self.max_decryptions} "
                "decryptions; lower secure.clip_range or the rounds"
            )

    @classmethod
    def fit(
        cls,
        params: ThresholdParams,
        *,
        holders: int,
        threshold: int,
        max_decryptions: int,
        clip: float,
    ) -> ThresholdPlan:
        """The plan with the smallest data modulus (two primes) that decodes a sum of
        ``holders`` values in ``[-clip, clip]`` at ``params.precision``: ciphertexts, and
        so the bytes sent, are as small as the precision and the value range allow."""
        widest = replace(params, data_bits=(48, 48))
        trial = cls(
            widest, holders, threshold, max_decryptions, clip
        )  # raises if even 96 bits fail
        need = 2 * (2 * math.sqrt(2) * trial.scale * holders * clip + 16 * trial.noise_std)
        bits = max(60, math.ceil(math.log2(need)) + 1)
        for total in range(bits, 97):
            candidate = replace(params, data_bits=((total + 1) // 2, total // 2))
            try:
                return cls(candidate, holders, threshold, max_decryptions, clip)
            except ValueError:
                continue
        return trial

    @property
    def noise_bound(self) -> float:
        """``B`` for the sum of all holders' fresh ciphertexts (`fresh_noise_bound`)."""
        p = self.params
        return fresh_noise_bound(
            poly_modulus_degree=p.poly_modulus_degree,
            holders=self.holders,
            summed=self.holders,
            tail=p.tail_sigmas,
        )

    @property
    def released_bound(self) -> int:
        """Decryptions the server can ever obtain: each needs t shares and each holder
        gives at most ``max_decryptions``, so at most ``floor(holders tau / t)`` (below
        ``2 tau`` as t > holders/2). The flooding is sized for this count."""
        return max(1, self.holders * self.max_decryptions // self.threshold)

    @property
    def flood_sigma(self) -> float:
        return flood_sigma(
            bound=self.noise_bound,
            max_decryptions=self.released_bound,
            statistical_bits=self.params.statistical_bits,
        )

    @property
    def c0_drop_bits(self) -> int:
        """Low bits of ``c0`` not sent: the rounding error is uniform with std at most
        ``sigma_flood / sqrt(12)`` (counted in `noise_std`, hence in the scale)."""
        return max(1, math.floor(math.log2(self.flood_sigma)))

    @property
    def share_drop_bits(self) -> int:
        """Low bits of a decryption share not sent (rounding of an already flooded value;
        uniform error with std at most ``sigma_flood / sqrt(12)``, counted in `noise_std`)."""
        return max(1, math.floor(math.log2(self.flood_sigma)))

    @property
    def noise_std(self) -> float:
        """Std of each coefficient of the decrypted noise: t flooding shares plus the
        uniform roundings of ``c0`` (``holders`` of them) and of the ``t`` shares."""
        r0 = 4.0**self.c0_drop_bits / 12.0
        rs = 4.0**self.share_drop_bits / 12.0
        return (
            math.sqrt(self.threshold * (self.flood_sigma**2 + rs) + self.holders * r0)
            + self.noise_bound / self.params.tail_sigmas
        )

    @property
    def value_std(self) -> float:
        """Std of the error of each decoded real: ``noise_std sqrt(N/2) / scale`` (a slot
        sums ``N`` noise coefficients times unit roots; real and imaginary parts each get
        half the variance)."""
        return self.noise_std * math.sqrt(self.params.poly_modulus_degree / 2) / self.scale

    @property
    def scale_bits(self) -> int:
        """log2 of the CKKS scale: the smallest power of two meeting ``precision``."""
        p = self.params
        need = (
            p.precision_sigmas * self.noise_std * math.sqrt(p.poly_modulus_degree / 2) / p.precision
        )
        return math.ceil(math.log2(need))

    @property
    def scale(self) -> float:
        return 2.0**self.scale_bits

    @property
    def value_bound(self) -> float:
        """Largest |sum value| that decodes: the message polynomial's coefficients are at
        most ``2 sqrt(2) scale`` times the largest slot part, plus the noise's tail, and
        must stay below ``Q/2``."""
        q = math.prod(_primes(self.params)[0])
        room = q / 2 - 16 * self.noise_std
        return room / (2 * math.sqrt(2) * self.scale)


@functools.cache
def _primes(params: ThresholdParams) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ring = Ring.of(params)
    return ring.data_primes, ring.key_primes


def _scratch() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="umbra-tckks-", dir=base)
    os.close(fd)
    return path


def _seal_blob(body: bytes, compr: int = 0) -> bytes:
    return _HEADER + bytes([compr]) + b"\x00\x00" + struct.pack("<Q", 16 + len(body)) + body


def _dyn_array(values: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    return _seal_blob(struct.pack("<Q", flat.size) + flat.tobytes())


@functools.cache
def _zstd() -> Any:
    """The system's libzstd through ctypes, or None."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                    ctypes.c_size_t]  # fmt: skip
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    return lib


def _read_serialized(obj: Any, count: int) -> np.ndarray | None:
    """The last ``count`` uint64 of ``obj``'s SEAL serialization (its data array), or None
    when the format is not the expected one (then the caller reads element-wise)."""
    path = _scratch()
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            blob = fh.read()
    finally:
        os.remove(path)
    if len(blob) < 16 or blob[:5] != _HEADER:
        return None
    body = blob[16:]
    if blob[5] == 2:
        lib = _zstd()
        if lib is None:
            return None
        cap = 1024 + 8 * count
        dst = ctypes.create_string_buffer(cap)
        n = lib.ZSTD_decompress(dst, cap, body, len(body))
        if lib.ZSTD_isError(n):
            return None
        body = dst.raw[:n]
    elif blob[5] != 0:
        return None
    tail = 8 * count
    if len(body) < tail + 8 or struct.unpack("<Q", body[-tail - 8 : -tail])[0] != count:
        return None
    return np.frombuffer(body[-tail:], dtype="<u8").astype(np.uint64)


# Layout of the objects read in place (`_read_direct`): pybind11 keeps a simple instance's
# C++ pointer right after the PyObject header; SEAL 4.x ``Ciphertext`` holds parms_id (4 x
# u64), is_ntt_form, size, poly_modulus_degree, coeff_modulus_size, scale,
# correction_factor, then its DynArray (pool handle, capacity, size, data pointer).
_PY_HEAD = 16
_CT_FIELDS = struct.Struct("<4Q?7xQQQdQ16xQQQ")


def _read_direct(obj: Any, count: int) -> np.ndarray | None:
    """A copy of a SEAL ``Ciphertext``'s ``count`` uint64 read in place, or None.

    SEAL's serialization always compresses (zstd, ~0.5 ms per 64 KiB polynomial), so a
    ciphertext is read from its own buffer instead, but only after every header field at
    the expected offsets matches what SEAL's accessors report (parms_id, NTT flag, size,
    degree, modulus count, scale, array size) and the first and last values match
    ``dyn_array()``; any mismatch returns None and the caller uses the serialization."""
    if not isinstance(obj, sealapi.Ciphertext) or count < 1:
        return None
    try:
        addr = ctypes.c_uint64.from_address(id(obj) + _PY_HEAD).value
        if not addr:
            return None
        fields = _CT_FIELDS.unpack(ctypes.string_at(addr, _CT_FIELDS.size))
        *pid, ntt, size, degree, moduli, scale, _, capacity, length, data = fields
        expected = (
            list(pid) == list(obj.parms_id())
            and ntt == bool(obj.is_ntt_form())
            and size == obj.size()
            and degree == obj.poly_modulus_degree()
            and moduli == obj.coeff_modulus_size()
            and scale == obj.scale
            and length == count == size * degree * moduli
            and capacity >= length
            and data != 0
        )
        if not expected:
            return None
        out = np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(data)).copy()
        da = obj.dyn_array()
        if int(out[0]) != da.at(0) or int(out[-1]) != da.at(count - 1):
            return None
        return out
    except (OSError, ValueError, TypeError, struct.error):
        return None


class Ring:
    """A SEAL context for `ThresholdParams` plus raw access to its polynomials.

    SEAL objects are built from numpy by writing SEAL's own serialization (no compression)
    and loading it with ``.load(context, path)``, which validates metadata and residues;
    they are read back by `Ring.read` (in place for ciphertexts, `_read_direct`). Polynomials
    are ``uint64`` arrays of shape ``(primes, N)`` (RNS residues, prime-major as in SEAL).
    """

    def __init__(self, params: ThresholdParams) -> None:
        self.params = params
        n = params.poly_modulus_degree
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(n, [*params.data_bits, params.special_bits])
        )
        self.context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ValueError(
                f"SEAL rejects the parameters: {self.context.parameters_error_message()}"
            )
        self.n = n
        self.data_id = list(self.context.first_parms_id())
        self.key_id = list(self.context.key_parms_id())
        self.data_primes = tuple(
            int(m.value()) for m in self.context.first_context_data().parms().coeff_modulus()
        )
        self.key_primes = tuple(
            int(m.value()) for m in self.context.key_context_data().parms().coeff_modulus()
        )
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def of(params: ThresholdParams) -> Ring:
        """One cached Ring per parameter set and process."""
        return Ring(params)

    def _load(self, obj: Any, blob: bytes) -> Any:
        path = _scratch()
        try:
            with open(path, "wb") as fh:
                fh.write(blob)
            obj.load(self.context, path)
        finally:
            os.remove(path)
        return obj

    def ciphertext(
        self, polys: np.ndarray, *, ntt: bool, scale: float, key_level: bool = False
    ) -> Any:
        """A SEAL Ciphertext of ``polys`` (size, primes, N); RuntimeError if invalid."""
        polys = np.asarray(polys, dtype=np.uint64)
        size, primes, n = polys.shape
        pid = self.key_id if key_level else self.data_id
        body = (
            struct.pack("<4Q", *pid)
            + bytes([1 if ntt else 0])
            + struct.pack("<QQQdQ", size, n, primes, scale, 1)
            + _dyn_array(polys)
        )
        return self._load(sealapi.Ciphertext(), _seal_blob(body))

    def public_key(self, b: np.ndarray, a: np.ndarray) -> Any:
        """SEAL PublicKey ``(b, a)`` at the key level (NTT form)."""
        body = (
            struct.pack("<4Q", *self.key_id)
            + b"\x01"
            + struct.pack("<QQQdQ", 2, self.n, len(self.key_primes), 1.0, 1)
            + _dyn_array(np.stack([b, a]))
        )
        return self._load(sealapi.PublicKey(), _seal_blob(body))

    def plaintext(self, poly: np.ndarray, *, scale: float) -> Any:
        """A SEAL Plaintext (NTT form, data level) of ``poly`` (primes, N)."""
        poly = np.asarray(poly, dtype=np.uint64)
        body = struct.pack("<4Q", *self.data_id) + struct.pack("<Qd", poly.size, scale)
        return self._load(sealapi.Plaintext(), _seal_blob(body + _dyn_array(poly)))

    @staticmethod
    def read(obj: Any, shape: tuple[int, ...]) -> np.ndarray:
        """The uint64 data of a SEAL Ciphertext/Plaintext as an array of ``shape``.

        Fast paths: a ciphertext's buffer read in place (`_read_direct`), SEAL's own
        serialization (zstd, decompressed with the system's libzstd); else element by
        element through ``dyn_array()``."""
        count = math.prod(shape)
        fast = _read_direct(obj, count)
        if fast is None:
            fast = _read_serialized(obj, count)
        if fast is not None:
            return fast.reshape(shape)
        da = obj.dyn_array()
        if int(da.size()) != count:
            raise ValueError(f"SEAL object holds {int(da.size())} values, expected {count}")
        out = np.fromiter((da[i] for i in range(count)), dtype=np.uint64, count=count)
        return out.reshape(shape)

    def to_coeff(self, poly: np.ndarray) -> np.ndarray:
        """NTT -> coefficient domain of a data-level poly (SEAL's inverse NTT)."""
        return self.to_coeff_many(poly[None])[0]

    def to_ntt(self, poly: np.ndarray) -> np.ndarray:
        """Coefficient -> NTT domain of a data-level poly (SEAL's NTT)."""
        return self.to_ntt_many(poly[None])[0]

    def to_coeff_many(self, polys: np.ndarray) -> np.ndarray:
        """`to_coeff` of a stack of data-level polys (m, primes, N), transformed
        `_BATCH` at a time as one SEAL ciphertext of that many polynomials."""
        return self._transform(polys, ntt=True)

    def to_ntt_many(self, polys: np.ndarray) -> np.ndarray:
        """`to_ntt` of a stack of data-level polys (m, primes, N)."""
        return self._transform(polys, ntt=False)

    def _transform(self, polys: np.ndarray, *, ntt: bool) -> np.ndarray:
        polys = np.asarray(polys, dtype=np.uint64)
        m, k, n = polys.shape
        out = np.empty_like(polys)
        for start in range(0, m, _BATCH):
            chunk = polys[start : start + _BATCH]
            # a filler keeps the ciphertext non-transparent (SEAL refuses transparent ones)
            # and of size >= 2; see `_one`
            block = np.concatenate([chunk, self._one(ntt=ntt)[None]])
            ct = self.ciphertext(block, ntt=ntt, scale=1.0)
            if ntt:
                self.evaluator.transform_from_ntt_inplace(ct)
            else:
                self.evaluator.transform_to_ntt_inplace(ct)
            out[start : start + len(chunk)] = self.read(ct, (len(block), k, n))[: len(chunk)]
        return out

    def _one(self, *, ntt: bool) -> np.ndarray:
        """The constant polynomial 1 (all ones in the NTT domain, ``[1, 0, ...]`` in the
        coefficient domain): a filler second polynomial for SEAL's ciphertext-only
        transforms (a zero one makes the ciphertext "transparent") that transforms into
        the other, equally compressible, form."""
        k = len(self.data_primes)
        if ntt:
            return np.ones((k, self.n), dtype=np.uint64)
        one = np.zeros((k, self.n), dtype=np.uint64)
        one[:, 0] = 1
        return one


# ---------------------------------------------------------------- modular helpers


def _mulmod(a: np.ndarray, b: np.ndarray | int, primes: Sequence[int]) -> np.ndarray:
    """Exact ``a * b mod q`` per prime row (Python-int arithmetic, no uint64 overflow)."""
    out = np.empty_like(np.asarray(a, dtype=np.uint64))
    for j, q in enumerate(primes):
        bj = b[j].astype(object) if isinstance(b, np.ndarray) else b
        out[j] = ((a[j].astype(object) * bj) % q).astype(np.uint64)
    return out


def add_polys(polys: Iterable[np.ndarray], primes: Sequence[int]) -> np.ndarray:
    """Sum of polynomials modulo each prime (uint64, primes < 2^62)."""
    qs = np.asarray(primes, dtype=np.uint64)[:, None]
    acc: np.ndarray | None = None
    for p in polys:
        acc = p.astype(np.uint64) if acc is None else (acc + p) % qs
    if acc is None:
        raise ValueError("nothing to add")
    return acc


def _sub(a: np.ndarray, b: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    qs = np.asarray(primes, dtype=np.uint64)[:, None]
    return (a + (qs - b)) % qs


def _uniform_mod(stream: bytes | None, primes: Sequence[int], n: int) -> np.ndarray:
    """Uniform residues (primes, n) by rejection sampling of 64-bit words, from the
    ChaCha20 keystream keyed by ``stream`` (a 32-byte seed) or from os.urandom if None."""
    out = np.empty((len(primes), n), dtype=np.uint64)
    counter = 0
    for j, q in enumerate(primes):
        mask = np.uint64((1 << q.bit_length()) - 1)
        got = np.empty(0, dtype=np.uint64)
        while got.size < n:
            if stream is None:
                raw = os.urandom(16 * n)
            else:
                nonce = struct.pack("<QQ", counter, j)
                counter += 1
                enc = Cipher(algorithms.ChaCha20(stream, nonce), mode=None).encryptor()
                raw = enc.update(bytes(16 * n))
            words = np.frombuffer(raw, dtype="<u8") & mask
            got = np.concatenate([got, words[words < np.uint64(q)]])
        out[j] = got[:n]
    return out


def common_poly(ring: Ring, seed: bytes) -> np.ndarray:
    """The common reference polynomial ``a`` (key level, NTT form) expanded from ``seed``
    with ChaCha20; uniform modulo each prime, hence modulo ``QP``."""
    if len(seed) != 32:
        raise ValueError("seed must be 32 bytes")
    return _uniform_mod(seed, ring.key_primes, ring.n)


def keygen_share(ring: Ring, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``s_i``, ``b_i = -a s_i + e_i``) at the key level, NTT form, for one holder.

    ``s_i`` (ternary) and ``e_i`` come from SEAL's KeyGenerator (its PRNG is seeded from
    the OS); ``b_i = pk_i[0] + (a_i - a) s_i`` with SEAL's ``pk_i = (-a_i s_i + e_i, a_i)``.
    The returned ``s_i`` is secret: keep it on the holder.
    """
    kg = sealapi.KeyGenerator(ring.context)
    k = len(ring.key_primes)
    sk = kg.secret_key()  # keep the owners alive while reading their data
    sk_data = sk.data()
    secret = Ring.read(sk_data, (k, ring.n))
    pk = sealapi.PublicKey()
    kg.create_public_key(pk)
    pk_data = pk.data()
    pk0, a_i = Ring.read(pk_data, (2, k, ring.n))
    b = add_polys([pk0, _mulmod(_sub(a_i, a, ring.key_primes), secret, ring.key_primes)],
                  ring.key_primes)  # fmt: skip
    return secret, b


# ---------------------------------------------------------------- Shamir over R_q


def shamir_shares(
    secret: np.ndarray, *, threshold: int, xs: Sequence[int], primes: Sequence[int]
) -> dict[int, np.ndarray]:
    """Shamir shares ``f(x)`` of ``secret`` (primes, N) for each ``x`` in ``xs``, with a
    random polynomial of degree ``threshold - 1`` per coefficient and prime (CSPRNG)."""
    if threshold < 1 or len(set(xs)) != len(xs) or any(not 0 < x < 1 << 16 for x in xs):
        raise ValueError("threshold >= 1 and distinct xs in [1, 65535] are required")
    if max(primes) >= 1 << 48:
        raise ValueError("Shamir in uint64 needs primes < 2^48")
    qs = np.asarray(primes, dtype=np.uint64)[:, None]
    coeffs = [_uniform_mod(None, primes, secret.shape[1]) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        acc = np.zeros_like(secret, dtype=np.uint64)
        for c in reversed(coeffs):  # Horner: values < 2^48 * 2^16
            acc = (acc * np.uint64(x) + c) % qs
        out[x] = (acc * np.uint64(x) + secret) % qs
    return out


def lagrange_at_zero(xs: Sequence[int], x: int, q: int) -> int:
    """``lambda_x^T = prod_{k in T, k != x} x_k / (x_k - x) mod q``."""
    if x not in xs or len(set(xs)) != len(xs):
        raise ValueError("x must be one of distinct xs")
    num, den = 1, 1
    for k in xs:
        if k != x:
            num = num * k % q
            den = den * (k - x) % q
    return num * pow(den, -1, q) % q


# ---------------------------------------------------------------- bit packing


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Little-endian bit packing of uint64 ``values`` (each < 2^width)."""
    v = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    if not 1 <= width <= 64:
        raise ValueError("width must be in [1, 64]")
    if width == 64:
        return v.tobytes()
    if 8 <= width <= 56 and v.size % 8 == 0:
        if v.size and int(v.max()) >> width:
            raise ValueError(f"values exceed {width} bits")
        # 8 values fill ``width`` bytes: value j of group g starts at bit j * width of
        # the group, within the 8 bytes from byte g * width + (j * width) // 8 on; for a
        # fixed j these windows are ``width`` bytes apart and do not overlap
        groups = v.size // 8
        buf = np.zeros((groups + 1) * width + 8, dtype=np.uint8)  # numpy checks a full stride
        cols = v.reshape(-1, 8)
        for j in range(8):
            start, shift = (j * width) >> 3, np.uint64((j * width) & 7)
            window = np.ndarray((groups,), dtype="<u8", buffer=buf, offset=start, strides=(width,))
            window |= cols[:, j] << shift
        return buf[: groups * width].tobytes()
    bits = np.unpackbits(v.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return np.packbits(bits[:, :width].reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`; ValueError if ``data`` has the wrong length."""
    if len(data) != -(-width * count // 8):
        raise ValueError(f"expected {-(-width * count // 8)} bytes, got {len(data)}")
    if width == 64:
        return np.frombuffer(data, dtype="<u8").astype(np.uint64)
    if 8 <= width <= 56 and count % 8 == 0:
        # the windows of `pack_bits`, read back (each value within its 8 bytes)
        groups = count // 8
        buf = np.frombuffer(bytes(data) + bytes(width + 8), dtype=np.uint8)
        out = np.empty((groups, 8), dtype=np.uint64)
        mask = np.uint64((1 << width) - 1)
        for j in range(8):
            start, shift = (j * width) >> 3, np.uint64((j * width) & 7)
            window = np.ndarray((groups,), dtype="<u8", buffer=buf, offset=start, strides=(width,))
            out[:, j] = (window >> shift) & mask
        return out.reshape(count)
    return _unpack_bits_reference(data, width, count)


def _unpack_bits_reference(data: bytes, width: int, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: width * count]
    full = np.zeros((count, 64), dtype=np.uint8)
    full[:, :width] = bits.reshape(count, width)
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view("<u8").astype(np.uint64)


def _compose(poly: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """CRT: residues (primes, N) -> Python ints in [0, Q) (object array; reference path)."""
    q = math.prod(primes)
    acc = np.zeros(poly.shape[1], dtype=object)
    for j, p in enumerate(primes):
        hat = q // p
        acc = acc + poly[j].astype(object) * (hat * pow(hat, -1, p) % q)
    return acc % q


_LIMB = 15
_MASK64 = np.uint64((1 << 64) - 1)


def mulmod_u64(a: np.ndarray, b: np.ndarray | int, q: int) -> np.ndarray:
    """``a * b mod q`` for uint64 arrays below ``q < 2^48`` without overflow: Horner over
    15-bit limbs of ``b`` (every intermediate stays below 2^64)."""
    if q >= 1 << 48:
        raise ValueError("mulmod_u64 needs q < 2^48")
    qq = np.uint64(q)
    bb = np.asarray(b, dtype=np.uint64)
    r = np.zeros(np.broadcast(np.asarray(a), bb).shape, dtype=np.uint64)
    top = int(bb.max()).bit_length() if bb.size else 0  # skip all-zero leading limbs
    for shift in range(_LIMB * ((max(top, 1) - 1) // _LIMB), -1, -_LIMB):
        limb = (bb >> np.uint64(shift)) & np.uint64((1 << _LIMB) - 1)
        r = ((r << np.uint64(_LIMB)) + np.asarray(a, dtype=np.uint64) * limb) % qq
    return r


def _compose2(poly: np.ndarray, primes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """CRT (Garner) of two residues below 2^48 into 128-bit values (lo, hi) in [0, Q)."""
    q0, q1 = primes
    r0, r1 = poly[0].astype(np.uint64), poly[1].astype(np.uint64)
    d = (r1 + np.uint64(q1) - r0 % np.uint64(q1)) % np.uint64(q1)
    t = mulmod_u64(d, pow(q0, -1, q1), q1)  # v = r0 + q0 t, t < q1
    lo, hi = r0.copy(), np.zeros_like(r0)
    for shift in range(0, 48, _LIMB):
        x = ((t >> np.uint64(shift)) & np.uint64((1 << _LIMB) - 1)) * np.uint64(q0)  # < 2^63
        add_lo = x << np.uint64(shift)
        add_hi = x >> np.uint64(64 - shift) if shift else np.zeros_like(x)
        new_lo = lo + add_lo
        hi = hi + add_hi + (new_lo < lo).astype(np.uint64)
        lo = new_lo
    return lo, hi


def _round_shift(lo: np.ndarray, hi: np.ndarray, drop: int) -> tuple[np.ndarray, np.ndarray]:
    """``(v + 2^(drop-1)) >> drop`` on 128-bit (lo, hi), 0 < drop < 64."""
    half = np.uint64(1 << (drop - 1))
    new_lo = lo + half
    hi = hi + (new_lo < lo).astype(np.uint64)
    d = np.uint64(drop)
    return (new_lo >> d) | (hi << np.uint64(64 - drop)), hi >> d


def _round_width(primes: Sequence[int], drop: int) -> int:
    q = math.prod(primes)
    return max(1, ((q + (1 << drop >> 1)) >> drop).bit_length())


def _pack_wide(w: np.ndarray, width: int) -> bytes:
    """Bit-pack non-negative Python ints (object array) below 2^width, width <= 128."""
    if width <= 64:
        return pack_bits(w.astype(np.uint64), width)
    lo = (w & ((1 << 64) - 1)).astype(np.uint64)
    return pack_bits(lo, 64) + pack_bits((w >> 64).astype(np.uint64), width - 64)


def _unpack_wide(data: bytes, width: int, n: int) -> np.ndarray:
    if width <= 64:
        return unpack_bits(data, width, n).astype(object)
    head = 8 * n
    if len(data) < head:
        raise ValueError(f"expected more than {head} bytes, got {len(data)}")
    lo = unpack_bits(data[:head], 64, n).astype(object)
    hi = unpack_bits(data[head:], width - 64, n).astype(object)
    return lo + (hi << 64)


def _wide_bytes(width: int, n: int) -> int:
    return -(-width * n // 8) if width <= 64 else 8 * n + -(-(width - 64) * n // 8)


def _pack_rounded(poly: np.ndarray, primes: Sequence[int], drop: int) -> bytes:
    """Coefficient-domain poly -> round(v / 2^drop) bit-packed (v in [0, Q))."""
    width = _round_width(primes, drop)
    if width > 128:
        raise ValueError("rounded values exceed 128 bits")
    if len(primes) == 2 and max(primes) < 1 << 48 and 0 < drop < 64:
        lo, hi = _round_shift(*_compose2(poly, primes), drop)
        if width <= 64:
            return pack_bits(lo, width)
        return pack_bits(lo, 64) + pack_bits(hi, width - 64)
    v = _compose(poly, primes)
    return _pack_wide((v + ((1 << drop) >> 1)) >> drop, width)


def _mul_pow2(w: np.ndarray, e: int, p: int) -> np.ndarray:
    """``w * 2^e mod p`` for residues ``w < p < 2^48``, by shifts that stay below 2^64."""
    step = 64 - p.bit_length()
    pp = np.uint64(p)
    while e > 0:
        k = min(step, e)
        w = (w << np.uint64(k)) % pp
        e -= k
    return w


def _unpack_rounded(data: bytes, primes: Sequence[int], drop: int, n: int) -> np.ndarray:
    width = _round_width(primes, drop)
    if max(primes) < 1 << 48 and drop < 64:
        if width <= 64:
            lo, hi = unpack_bits(data, width, n), np.zeros(n, dtype=np.uint64)
        else:
            head = 8 * n
            if len(data) < head:
                raise ValueError(f"expected more than {head} bytes, got {len(data)}")
            lo, hi = unpack_bits(data[:head], 64, n), unpack_bits(data[head:], width - 64, n)
        rows = []
        for p in primes:
            pp = np.uint64(p)
            w = lo % pp
            if width > 64:
                w = (mulmod_u64(hi % pp, pow(2, 64, p), p) + w) % pp
            rows.append(_mul_pow2(w, drop, p))
        return np.stack(rows)
    w = _unpack_wide(data, width, n)
    return np.stack([((w % p) * pow(2, drop, p) % p).astype(np.uint64) for p in primes])


def pack_residues(poly: np.ndarray, primes: Sequence[int]) -> bytes:
    return b"".join(pack_bits(poly[j], p.bit_length()) for j, p in enumerate(primes))


def unpack_residues(data: bytes, primes: Sequence[int], n: int) -> np.ndarray:
    out, pos = [], 0
    for p in primes:
        size = -(-p.bit_length() * n // 8)
        row = unpack_bits(data[pos : pos + size], p.bit_length(), n)
        if np.any(row >= np.uint64(p)):
            raise ValueError("residue out of range")
        out.append(row)
        pos += size
    if pos != len(data):
        raise ValueError(f"expected {pos} bytes, got {len(data)}")
    return np.stack(out)


# ---------------------------------------------------------------- encrypt / decrypt


def pack_ciphertext(ring: Ring, ct: Any, *, c0_drop_bits: int) -> bytes:
    """Wire form of a fresh data-level ciphertext: ``c0`` rounded to ``2^c0_drop_bits``
    in the coefficient domain, then ``c1``'s NTT residues, both bit-packed. ``ct`` is
    consumed: it is left in the coefficient domain."""
    k = len(ring.data_primes)
    c1 = Ring.read(ct, (2, k, ring.n))[1]
    ring.evaluator.transform_from_ntt_inplace(ct)
    c0 = Ring.read(ct, (2, k, ring.n))[0]
    return _pack_rounded(c0, ring.data_primes, c0_drop_bits) + pack_residues(c1, ring.data_primes)


def ciphertext_bytes(ring: Ring, *, c0_drop_bits: int) -> int:
    """Length of a `pack_ciphertext` blob."""
    head = _wide_bytes(_round_width(ring.data_primes, c0_drop_bits), ring.n)
    return head + sum(-(-p.bit_length() * ring.n // 8) for p in ring.data_primes)


def unpack_ciphertext(
    ring: Ring, data: bytes, *, c0_drop_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """(``c0`` coefficient domain, ``c1`` NTT domain), residues (primes, N).

    Raises CiphertextError for a blob of the wrong length or residues out of range."""
    if not isinstance(data, bytes | bytearray):
        raise CiphertextError("ciphertext is not bytes")
    head = _wide_bytes(_round_width(ring.data_primes, c0_drop_bits), ring.n)
    if len(data) != ciphertext_bytes(ring, c0_drop_bits=c0_drop_bits):
        raise CiphertextError(
            f"ciphertext has {len(data)} bytes, expected "
            f"{ciphertext_bytes(ring, c0_drop_bits=c0_drop_bits)}"
        )
    try:
        c0 = _unpack_rounded(bytes(data[:head]), ring.data_primes, c0_drop_bits, ring.n)
        c1 = unpack_residues(bytes(data[head:]), ring.data_primes, ring.n)
    except ValueError as err:
        raise CiphertextError(f"ciphertext is garbled ({err})") from err
    return c0, c1


def _columns(blobs: Sequence[bytes], length: int, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of every blob (each ``length`` long), concatenated."""
    rows = np.frombuffer(b"".join(bytes(b) for b in blobs), dtype=np.uint8).reshape(-1, length)
    return np.ascontiguousarray(rows[:, start:stop]).tobytes()


def _by_ciphertext(rows: np.ndarray, m: int, n: int) -> np.ndarray:
    """(primes, m * N) -> (m, primes, N)."""
    return np.ascontiguousarray(rows.reshape(rows.shape[0], m, n).transpose(1, 0, 2))


def unpack_ciphertexts(
    ring: Ring, blobs: Sequence[bytes], *, c0_drop_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """`unpack_ciphertext` of many blobs at once: (c0, c1), each (m, primes, N).

    Raises CiphertextError naming the index of the first bad blob."""
    raw = unpack_ciphertexts_rounded(ring, blobs, c0_drop_bits=c0_drop_bits)
    if raw is None:
        return _unpack_each(ring, blobs, c0_drop_bits=c0_drop_bits)
    c0, c1 = raw
    return rounded_to_residues(c0, ring.data_primes, c0_drop_bits), c1


def unpack_ciphertexts_rounded(
    ring: Ring, blobs: Sequence[bytes], *, c0_drop_bits: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(``c0`` as sent: the rounded integers ``round(c0 / 2^drop)`` (m, N), below
    ``2^48``; ``c1`` residues (m, primes, N)) of many blobs, or None where that form does
    not apply (wider ``c0``) or a blob is malformed (`unpack_ciphertexts` names it).

    Sums of fewer than 2^16 such ``c0`` stay below 2^64, so a server adds them as plain
    integers and maps only the sum to residues (`rounded_to_residues`)."""
    m, n, primes = len(blobs), ring.n, ring.data_primes
    size = ciphertext_bytes(ring, c0_drop_bits=c0_drop_bits)
    width = _round_width(primes, c0_drop_bits)
    head = _wide_bytes(width, n)
    if m == 0 or width > 48 or max(primes) >= 1 << 48:
        return None
    if not all(isinstance(b, bytes | bytearray) and len(b) == size for b in blobs):
        return None
    try:
        c0 = unpack_bits(_columns(blobs, size, 0, head), width, m * n).reshape(m, n)
        rows, pos = [], head
        for p in primes:
            end = pos + -(-p.bit_length() * n // 8)
            row = unpack_bits(_columns(blobs, size, pos, end), p.bit_length(), m * n)
            if np.any(row >= np.uint64(p)):
                return None
            rows.append(row)
            pos = end
    except ValueError:
        return None
    return c0, _by_ciphertext(np.stack(rows), m, n)


def rounded_to_residues(c0: np.ndarray, primes: Sequence[int], drop: int) -> np.ndarray:
    """Integers ``v`` (m, N) (a rounded ``c0`` or a sum of them, below 2^64) to the
    residues of ``v 2^drop`` (m, primes, N)."""
    v = np.asarray(c0, dtype=np.uint64)
    return np.stack([_mul_pow2(v % np.uint64(p), drop, p) for p in primes], axis=1)


def unpack_residue_blobs(blobs: Sequence[bytes], primes: Sequence[int], n: int) -> np.ndarray:
    """`unpack_residues` of many blobs at once: (m, primes, N); ValueError naming the
    index of the first blob of the wrong length or with a residue out of range."""
    size = sum(-(-p.bit_length() * n // 8) for p in primes)
    for k, blob in enumerate(blobs):
        if not isinstance(blob, bytes | bytearray) or len(blob) != size:
            raise ValueError(f"blob {k}: expected {size} bytes")
    if not blobs or n % 8:
        return np.stack([unpack_residues(bytes(b), primes, n) for b in blobs]) if blobs else (
            np.zeros((0, len(primes), n), dtype=np.uint64))  # fmt: skip
    rows, pos = [], 0
    for p in primes:
        end = pos + -(-p.bit_length() * n // 8)
        row = unpack_bits(_columns(blobs, size, pos, end), p.bit_length(), len(blobs) * n)
        bad = np.flatnonzero(row >= np.uint64(p))
        if bad.size:
            raise ValueError(f"blob {int(bad[0]) // n}: residue out of range")
        rows.append(row)
        pos = end
    return _by_ciphertext(np.stack(rows), len(blobs), n)


def _unpack_each(
    ring: Ring, blobs: Sequence[bytes], *, c0_drop_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    shape = (len(blobs), len(ring.data_primes), ring.n)
    c0, c1 = np.empty(shape, dtype=np.uint64), np.empty(shape, dtype=np.uint64)
    for k, blob in enumerate(blobs):
        try:
            c0[k], c1[k] = unpack_ciphertext(ring, blob, c0_drop_bits=c0_drop_bits)
        except CiphertextError as err:
            raise CiphertextError(f"ciphertext {k}: {err}") from err
    return c0, c1


def encrypt(ring: Ring, public_key: Any, slots: np.ndarray, *, scale: float) -> Any:
    """SEAL public-key encryption of ``N/2`` complex slot values at the data level."""
    pt = sealapi.Plaintext()
    ring.encoder.encode(np.asarray(slots, dtype=np.complex128).tolist(), scale, pt)
    ct = sealapi.Ciphertext()
    sealapi.Encryptor(ring.context, public_key).encrypt(pt, ct)
    return ct


def flood_noise(n: int, sigma: float) -> np.ndarray:
    """``n`` rounded Gaussian integers of std ``sigma`` (int64), Box-Muller over the
    ChaCha20 keystream of a fresh ``os.urandom`` key: never numpy's generator."""
    if not (math.isfinite(sigma) and 0 < sigma < 2.0**56):
        raise ValueError(f"sigma must be in (0, 2^56), got {sigma}")
    key, nonce = os.urandom(32), os.urandom(16)
    raw = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(bytes(16 * n))
    words = np.frombuffer(raw, dtype="<u8").reshape(2, n)
    u1 = ((words[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (words[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return np.rint(sigma * z).astype(np.int64)


def _signed_to_residues(values: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    return np.stack([np.mod(values, np.int64(p)).astype(np.uint64) for p in primes])


def partial_decrypt(
    ring: Ring,
    c1: np.ndarray,
    share: np.ndarray,
    *,
    lagrange: Sequence[int],
    noise: np.ndarray,
) -> np.ndarray:
    """``h = c1 lambda sigma + e`` in the coefficient domain, residues (primes, N).

    ``c1`` (NTT), ``share`` = ``sigma_j`` (NTT), ``lagrange`` = ``lambda_j^T`` per prime,
    ``noise`` = ``e_j`` (int64, coefficient domain). Callers outside tests pass
    `flood_noise` output: an unflooded share leaks the secret key (Li & Micciancio 2021).
    """
    return partial_decrypt_many(ring, c1[None], share, lagrange=lagrange, noise=noise[None])[0]


def partial_decrypt_many(
    ring: Ring,
    c1: np.ndarray,
    share: np.ndarray,
    *,
    lagrange: Sequence[int],
    noise: np.ndarray,
) -> np.ndarray:
    """`partial_decrypt` of a round's ciphertexts at once: ``c1`` (m, primes, N) NTT,
    ``noise`` (m, N) int64, one flooding polynomial per ciphertext; ``lambda sigma`` is
    computed once and the products go through SEAL's inverse NTT in batches."""
    primes = ring.data_primes
    c1 = np.asarray(c1, dtype=np.uint64)
    if c1.ndim != 3 or c1.shape[1:] != (len(primes), ring.n) or noise.shape != (len(c1), ring.n):
        raise ValueError("c1 must be (m, primes, N) and noise (m, N)")
    key = [mulmod_u64(share[j], lam % q, q) for j, (q, lam) in enumerate(zip(primes, lagrange,
                                                                            strict=True))]  # fmt: skip
    product = np.empty_like(c1)
    for j, q in enumerate(primes):
        product[:, j] = mulmod_u64(c1[:, j], key[j][None, :], q)
    coeff = ring.to_coeff_many(product)
    qs = np.asarray(primes, dtype=np.uint64)[None, :, None]
    e = np.stack([np.mod(noise, np.int64(q)).astype(np.uint64) for q in primes], axis=1)
    return (coeff + e) % qs


def share_bytes(ring: Ring, *, drop_bits: int) -> int:
    return _wide_bytes(_round_width(ring.data_primes, drop_bits), ring.n)


def pack_share(ring: Ring, h: np.ndarray, *, drop_bits: int) -> bytes:
    """Wire form of a (flooded) decryption share: rounded to ``2^drop_bits``."""
    return _pack_rounded(h, ring.data_primes, drop_bits)


def pack_shares(ring: Ring, h: np.ndarray, *, drop_bits: int) -> list[bytes]:
    """`pack_share` of each of m shares (m, primes, N), rounded and bit-packed at once."""
    m, n = len(h), ring.n
    width = _round_width(ring.data_primes, drop_bits)
    if m == 0 or width > 64 or n % 8:
        return [pack_share(ring, row, drop_bits=drop_bits) for row in h]
    flat = np.ascontiguousarray(np.asarray(h, dtype=np.uint64).transpose(1, 0, 2)).reshape(
        len(ring.data_primes), m * n
    )
    blob = _pack_rounded(flat, ring.data_primes, drop_bits)
    size = len(blob) // m
    return [blob[i * size : (i + 1) * size] for i in range(m)]


def unpack_share(ring: Ring, data: bytes, *, drop_bits: int) -> np.ndarray:
    """Inverse of `pack_share`; ValueError for a blob of the wrong length."""
    return _unpack_rounded(bytes(data), ring.data_primes, drop_bits, ring.n)


def unpack_shares_rounded(
    ring: Ring, blobs: Sequence[bytes], *, drop_bits: int
) -> np.ndarray | None:
    """The rounded integers (m, N) of many decryption shares as sent (below 2^48, so a
    sum of fewer than 2^16 of them is exact in uint64), or None where that form does not
    apply (wider shares); ValueError for a blob of the wrong length."""
    m, n = len(blobs), ring.n
    width = _round_width(ring.data_primes, drop_bits)
    size = share_bytes(ring, drop_bits=drop_bits)
    for k, blob in enumerate(blobs):
        if not isinstance(blob, bytes | bytearray) or len(blob) != size:
            raise ValueError(f"share {k}: expected {size} bytes")
    if m == 0 or width > 48:
        return None
    return unpack_bits(_columns(blobs, size, 0, size), width, m * n).reshape(m, n)


def unpack_shares(ring: Ring, blobs: Sequence[bytes], *, drop_bits: int) -> np.ndarray:
    """`unpack_share` of many blobs at once: (m, primes, N); ValueError for a blob of
    the wrong length."""
    m, n = len(blobs), ring.n
    width = _round_width(ring.data_primes, drop_bits)
    size = share_bytes(ring, drop_bits=drop_bits)
    for k, blob in enumerate(blobs):
        if not isinstance(blob, bytes | bytearray) or len(blob) != size:
            raise ValueError(f"share {k}: expected {size} bytes")
    if m == 0 or width > 64:
        return np.stack([unpack_share(ring, b, drop_bits=drop_bits) for b in blobs]) if m else (
            np.zeros((0, len(ring.data_primes), n), dtype=np.uint64))  # fmt: skip
    rows = _unpack_rounded(_columns(blobs, size, 0, size), ring.data_primes, drop_bits, m * n)
    return _by_ciphertext(rows, m, n)


def combine(
    ring: Ring, c0: np.ndarray, shares: Sequence[np.ndarray], *, scale: float
) -> np.ndarray:
    """Decode ``c0 + sum_j h_j`` (all coefficient domain): complex slot values (N/2,).
    Needs no key; with fewer than ``t`` shares the result is unrelated to the message."""
    stacked = [np.asarray(h)[None] for h in shares]
    return combine_many(ring, np.asarray(c0)[None], stacked, scale=scale)[0]


def combine_many(
    ring: Ring, c0: np.ndarray, shares: Sequence[np.ndarray], *, scale: float
) -> np.ndarray:
    """`combine` of m ciphertexts at once: ``c0`` (m, primes, N), each share (m, primes,
    N); complex slot values (m, N/2)."""
    if len(shares) >= 1 << 16 or max(ring.data_primes) >= 1 << 48:
        raise ValueError("combine needs fewer than 2^16 shares and primes < 2^48")
    total = np.array(c0, dtype=np.uint64)
    for h in shares:  # each term below its prime < 2^48: no uint64 overflow, reduce once
        total += h
    total %= np.asarray(ring.data_primes, dtype=np.uint64)[:, None]
    ntt = ring.to_ntt_many(total)
    rows = []
    for poly in ntt:
        pt = ring.plaintext(poly, scale=scale)
        rows.append(np.asarray(ring.encoder.decode_complex(pt)))
    return np.stack(rows) if rows else np.zeros((0, ring.n // 2), dtype=np.complex128)


def sum_residues(polys: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """Sum over the first axis of residue arrays (count, ..., primes, N) modulo each prime:
    one uint64 addition per term and a single reduction (exact for primes < 2^48 and
    fewer than 2^16 terms, each below its prime); the same as SEAL's ``add_many``."""
    polys = np.asarray(polys, dtype=np.uint64)
    if max(primes) >= 1 << 48 or len(polys) >= 1 << 16:
        raise ValueError("sum_residues needs primes < 2^48 and fewer than 2^16 terms")
    qs = np.asarray(primes, dtype=np.uint64)[:, None]
    return np.sum(polys, axis=0, dtype=np.uint64) % qs
