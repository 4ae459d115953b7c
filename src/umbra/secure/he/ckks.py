"""Single-key CKKS aggregation with TenSEAL (Cheon-Kim-Kim-Song, ASIACRYPT 2017): the
**benchmark baseline** only, and the shared error types of the CKKS modules.

A run never uses this scheme: it uses threshold CKKS (`umbra.secure.he.threshold`,
`umbra.secure.he.holder`). Here one secret key is shared by every client and one client
returns the raw approximate decryption of the sum, from which whoever holds the ciphertext
recovers the secret key (Li & Micciancio, EUROCRYPT 2021; demonstrated in
tests/test_secure_ckks_threshold.py), and any client colluding with the server decrypts
every update. It stays for `bench/secure_aggregation.py` (what the threshold scheme costs
against it) and for the error types.

Clients encrypt their updates under one CKKS secret key that only clients hold; the
server adds ciphertexts with a context that has no secret key; a client decrypts the sum.

Key provisioning: one client calls `CkksKeyring.generate` (the secret key is created on
that client), sends `shared_bytes()` to the other clients over an authenticated encrypted
channel (e.g. the X25519 + ChaCha20-Poly1305 channel of `umbra.secure.secagg.crypto`),
and gives the server `server_context()` = ``context.serialize(save_secret_key=False)``
without public, relinearisation or Galois keys - the server only adds.

Parameters for aggregation only. No multiplications means no rescaling levels: ciphertexts
carry a single prime (TenSEAL requires a second, "special" prime for key switching, which
no ciphertext carries). Encryption is *symmetric and seeded* through `tenseal.sealapi`
(SEAL stores the PRNG seed instead of the uniformly random half ``c1``, halving the size),
serialized with SEAL's zstd compression; slots are complex (two reals per slot), and an
optional mode packs two quantized values per real (`packing.pack_digits`).

Security (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1, ternary
secret, classical 128-bit): log2 q <= 27 / 54 / 109 / 218 / 438 / 881 for N = 1024 ...
32768. The default N=4096 with primes (60, 49) has log2 q = 109: 128-bit secure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from umbra.errors import UmbraError
from umbra.secure.he.packing import (
    from_slot_chunks,
    pack_digits,
    to_slot_chunks,
    unpack_digits,
)
from umbra.secure.secagg.quantize import QuantizationSpec, dequantize_sum, quantize

__all__ = [
    "HE_STANDARD_MAX_LOG_Q",
    "PRESETS",
    "CiphertextError",
    "CkksAggregator",
    "CkksKeyring",
    "CkksParams",
    "HeAbort",
    "checked_update_blobs",
    "update_digest",
]

log = logging.getLogger(__name__)

#: Largest log2 q for 128-bit classical security, ternary secrets (HE standard, Table 1).
HE_STANDARD_MAX_LOG_Q: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}


class CiphertextError(UmbraError, ValueError):
    """A client's ciphertext is garbled, of the wrong length or of the wrong parameters."""


class HeAbort(UmbraError):
    """Too few valid encrypted updates: the aggregation round is aborted."""


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters for aggregation.

    ``coeff_mod_bit_sizes``: primes of the modulus; fresh ciphertexts carry all but the
    last (special) prime. ``scale_bits``: log2 of the CKKS scale. ``symmetric``: seeded
    secret-key encryption (half-size ciphertexts) instead of public-key encryption.
    ``complex_slots``: two reals per slot. ``digits_per_real > 1``: that many quantized
    values, ``digit_bits`` wide each, per real (needs ``clip`` at encryption).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 49)
    scale_bits: int = 40
    symmetric: bool = True
    complex_slots: bool = True
    digits_per_real: int = 1
    digit_bits: int = 22

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_MAX_LOG_Q:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_LOG_Q)}")
        if len(self.coeff_mod_bit_sizes) < 2 or not all(
            20 <= b <= 60 for b in self.coeff_mod_bit_sizes
        ):
            raise ValueError("coeff_mod_bit_sizes needs >= 2 primes of 20..60 bits")
        if self.log_q > HE_STANDARD_MAX_LOG_Q[n]:
            raise ValueError(
                f"coeff_mod_bit_sizes sum to {self.log_q} bits > {HE_STANDARD_MAX_LOG_Q[n]}, "
                f"the 128-bit security bound for N={n}"
            )
        if not 1 <= self.digits_per_real <= 4:
            raise ValueError(f"digits_per_real must be in [1, 4], got {self.digits_per_real}")
        payload_bits = self.digit_bits * self.digits_per_real if self.digits_per_real > 1 else 0
        if payload_bits > 48:
            raise ValueError("digit_bits * digits_per_real must be <= 48")
        if not 8 <= self.scale_bits <= self.coeff_mod_bit_sizes[0] - 2 - payload_bits:
            raise ValueError(
                f"scale_bits must be in [8, {self.coeff_mod_bit_sizes[0] - 2 - payload_bits}]"
            )

    @property
    def log_q(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def security_bits(self) -> int:
        """128 (checked at construction against the HE standard table)."""
        return 128

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        return self.slots * (2 if self.complex_slots else 1) * self.digits_per_real


PRESETS: dict[str, CkksParams] = {
    # TenSEAL's tutorial parameters, public-key encryption, real slots: the baseline.
    "tenseal-default": CkksParams(
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(60, 40, 40, 60),
        symmetric=False,
        complex_slots=False,
    ),
    # Umbra: N=4096, one 60-bit ciphertext prime, seeded symmetric, complex slots.
    "umbra": CkksParams(),
    # Umbra + two 22-bit quantized values per real (about 4 values per slot).
    "umbra-digits": CkksParams(scale_bits=14, digits_per_real=2, digit_bits=22),
}


def update_digest(ciphertexts: Sequence[bytes], *, client_id: int, round_number: int) -> bytes:
    """SHA-256 over (round, client, length-prefixed ciphertexts): detects ciphertexts garbled
    in transit (SEAL cannot notice every flipped byte) and replays across rounds/clients."""
    h = hashlib.sha256(b"umbra/ckks/v1/update" + struct.pack("<QQ", round_number, client_id))
    for blob in ciphertexts:
        h.update(struct.pack("<Q", len(blob)))
        h.update(blob)
    return h.digest()


def checked_update_blobs(
    message: Any,
    *,
    client_id: int,
    round_number: int,
    num_ciphertexts: int,
    seen_digests: set[bytes],
) -> list[bytes]:
    """The ciphertext blobs of one client's update message, after the checks every CKKS
    aggregator makes: a message for this round and client, ``num_ciphertexts`` byte strings,
    a matching digest (`update_digest`), not seen before.

    Raises CiphertextError naming the client otherwise.
    """
    if not isinstance(message, Mapping):
        raise CiphertextError(f"client {client_id}: update is not a message")
    if message.get("round") != round_number or message.get("client_id") != client_id:
        raise CiphertextError(
            f"client {client_id}: update for round {message.get('round')!r} / client "
            f"{message.get('client_id')!r} (stale or replayed)"
        )
    blobs = message.get("ciphertexts")
    if not isinstance(blobs, Sequence) or len(blobs) != num_ciphertexts:
        got = len(blobs) if isinstance(blobs, Sequence) else type(blobs).__name__
        raise CiphertextError(
            f"client {client_id}: expected {num_ciphertexts} ciphertexts, got {got}"
        )
    if not all(isinstance(b, bytes | bytearray) for b in blobs):
        raise CiphertextError(f"client {client_id}: ciphertexts must be bytes")
    data = [bytes(b) for b in blobs]
    digest = update_digest(data, client_id=client_id, round_number=round_number)
    if message.get("digest") != digest:
        raise CiphertextError(f"client {client_id}: update garbled in transit (digest mismatch)")
    if digest in seen_digests:
        raise CiphertextError(f"client {client_id}: update replayed")
    return data


def _scratch_path() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="umbra-ckks-", dir=base)
    os.close(fd)
    return path


def _save(obj: Any, path: str) -> bytes:
    """SEAL objects serialize to files only in TenSEAL's sealapi: go through a scratch file."""
    obj.save(path)
    with open(path, "rb") as fh:
        return fh.read()


def _context(params: CkksParams) -> ts.Context:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


class CkksKeyring:
    """Client-side CKKS keys (secret key included): encrypt updates, decrypt the sum.

    Never give this object, or `shared_bytes`, to the server. Not picklable; ``repr``
    shows the parameters only.
    """

    def __init__(self, context: ts.Context, params: CkksParams) -> None:
        if not context.has_secret_key():
            raise ValueError("context must hold the secret key (client side only)")
        self._ctx = context
        self.params = params
        self._seal = context.seal_context().data
        self._sk = context.secret_key().data
        self._encoder = sealapi.CKKSEncoder(self._seal)
        if params.symmetric:
            self._encryptor = sealapi.Encryptor(self._seal, self._sk)
        else:
            self._encryptor = sealapi.Encryptor(self._seal, context.public_key().data)
        self._decryptor = sealapi.Decryptor(self._seal, self._sk)

    @classmethod
    def generate(cls, params: CkksParams | None = None) -> CkksKeyring:
        """Create fresh keys on this client."""
        params = params or CkksParams()
        return cls(_context(params), params)

    @classmethod
    def from_shared(cls, data: bytes, params: CkksParams) -> CkksKeyring:
        """Load the keys another client sent (`shared_bytes`)."""
        return cls(ts.context_from(data), params)

    def shared_bytes(self) -> bytes:
        """Secret context for the other clients only (send it encrypted and authenticated)."""
        return bytes(
            self._ctx.serialize(
                save_public_key=not self.params.symmetric,
                save_secret_key=True,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def server_context(self) -> bytes:
        """The context the server gets: no secret key (and no public/relin/Galois keys)."""
        return bytes(
            self._ctx.serialize(
                save_public_key=False,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def __repr__(self) -> str:
        return f"CkksKeyring(params={self.params!r})"

    def __reduce__(self) -> Any:
        raise TypeError("CkksKeyring holds a secret key and cannot be pickled")

    def _slot_values(
        self,
        values: np.ndarray,
        *,
        num_clients: int,
        clip: float | None,
        rng: np.random.Generator | None,
    ) -> np.ndarray:
        p = self.params
        x = np.asarray(values, dtype=np.float64).ravel()
        if p.digits_per_real == 1:
            bound = 2.0 ** (p.coeff_mod_bit_sizes[0] - 2 - p.scale_bits) / num_clients
            if x.size and float(np.max(np.abs(x))) >= bound:
                raise ValueError(
                    f"values must lie in (-{bound:g}, {bound:g}) for {num_clients} clients"
                )
            return to_slot_chunks(x, slots=p.slots, complex_slots=p.complex_slots)
        if clip is None:
            raise ValueError("clip is required when digits_per_real > 1")
        spec = QuantizationSpec(clip=clip, num_clients=num_clients, bits=p.digit_bits)
        rng = (
            rng
            if rng is not None
            else np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        )
        levels = quantize(x, spec=spec, rng=rng)
        packed = pack_digits(levels, bits=p.digit_bits, per_real=p.digits_per_real)
        return to_slot_chunks(packed, slots=p.slots, complex_slots=p.complex_slots)

    def encrypt(
        self,
        values: np.ndarray,
        *,
        num_clients: int,
        clip: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[bytes]:
        """Encrypt a float vector as serialized ciphertexts (`params.values_per_ciphertext`
        values each). ``num_clients`` sizes the headroom of the sum; ``clip`` bounds the
        values in digit mode (quantization noise from ``rng``, not secret)."""
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        chunks = self._slot_values(values, num_clients=num_clients, clip=clip, rng=rng)
        scale = 2.0**self.params.scale_bits
        path = _scratch_path()
        out = []
        try:
            for row in chunks:
                pt = sealapi.Plaintext()
                self._encoder.encode(row.tolist(), scale, pt)
                if self.params.symmetric:
                    out.append(_save(self._encryptor.encrypt_symmetric(pt), path))
                else:
                    ct = sealapi.Ciphertext()
                    self._encryptor.encrypt(pt, ct)
                    out.append(_save(ct, path))
        finally:
            os.remove(path)
        return out

    def encrypt_update(
        self,
        values: np.ndarray,
        *,
        client_id: int,
        round_number: int,
        num_clients: int,
        clip: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> dict[str, Any]:
        """`encrypt` wrapped in the message the server expects (round, id, digest)."""
        cts = self.encrypt(values, num_clients=num_clients, clip=clip, rng=rng)
        return {
            "round": round_number,
            "client_id": client_id,
            "ciphertexts": cts,
            "digest": update_digest(cts, client_id=client_id, round_number=round_number),
        }

    def decrypt_sum(
        self,
        ciphertexts: Sequence[bytes],
        *,
        length: int,
        num_summed: int,
        clip: float | None = None,
        num_clients: int | None = None,
    ) -> np.ndarray:
        """Decrypt the aggregate of ``num_summed`` clients' encryptions (float64, ``length``).

        Digit mode needs the ``clip`` and ``num_clients`` used at encryption.
        """
        p = self.params
        path = _scratch_path()
        rows = []
        try:
            for blob in ciphertexts:
                ct = _load_ciphertext(self._seal, blob, path)
                pt = sealapi.Plaintext()
                self._decryptor.decrypt(ct, pt)
                decoded = np.asarray(self._encoder.decode_complex(pt))
                rows.append(decoded if p.complex_slots else decoded.real)
        finally:
            os.remove(path)
        flat_len = length if p.digits_per_real == 1 else -(-length // p.digits_per_real)
        values = from_slot_chunks(np.stack(rows), length=flat_len, complex_slots=p.complex_slots)
        if p.digits_per_real == 1:
            return values
        if clip is None or num_clients is None:
            raise ValueError("clip and num_clients are required when digits_per_real > 1")
        spec = QuantizationSpec(clip=clip, num_clients=num_clients, bits=p.digit_bits)
        levels = unpack_digits(values, bits=p.digit_bits, per_real=p.digits_per_real, length=length)
        return dequantize_sum(levels, spec=spec, num_summed=num_summed)


def _load_ciphertext(seal_ctx: Any, blob: bytes, path: str) -> Any:
    with open(path, "wb") as fh:
        fh.write(blob)
    ct = sealapi.Ciphertext()
    ct.load(seal_ctx, path)
    return ct


class CkksAggregator:
    """Server-side: validates and adds encrypted updates under a secret-key-free context."""

    def __init__(
        self,
        server_context: bytes,
        params: CkksParams,
        *,
        length: int,
        round_number: int = 0,
        seen_digests: set[bytes] | None = None,
    ) -> None:
        ctx = ts.context_from(server_context)
        if ctx.has_secret_key():
            raise ValueError("the server context must not hold the secret key")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.params = params
        self.length = length
        self._seal = ctx.seal_context().data
        self._evaluator = sealapi.Evaluator(self._seal)
        flat = length if params.digits_per_real == 1 else -(-length // params.digits_per_real)
        per = params.slots * (2 if params.complex_slots else 1)
        self.num_ciphertexts = max(1, -(-flat // per))
        self.round_number = round_number
        self.excluded: dict[int, str] = {}
        self.seen_digests: set[bytes] = seen_digests if seen_digests is not None else set()

    def load(self, client_id: int, message: Mapping[str, Any]) -> list[Any]:
        """Parse one client's update message (`CkksKeyring.encrypt_update`).

        Raises CiphertextError naming the client for a wrong round, a replayed, garbled or
        wrong-length update, or ciphertexts of the wrong parameters.
        """
        blobs = checked_update_blobs(
            message,
            client_id=client_id,
            round_number=self.round_number,
            num_ciphertexts=self.num_ciphertexts,
            seen_digests=self.seen_digests,
        )
        p = self.params
        scale = 2.0**p.scale_bits
        path = _scratch_path()
        cts = []
        try:
            for k, blob in enumerate(blobs):
                if not isinstance(blob, bytes | bytearray):
                    raise CiphertextError(f"client {client_id}: ciphertext {k} is not bytes")
                try:
                    ct = _load_ciphertext(self._seal, bytes(blob), path)
                except Exception as err:  # SEAL raises several C++ exception types
                    raise CiphertextError(
                        f"client {client_id}: ciphertext {k} is garbled ({err})"
                    ) from err
                if (
                    ct.size() != 2
                    or ct.poly_modulus_degree() != p.poly_modulus_degree
                    or ct.coeff_modulus_size() != len(p.coeff_mod_bit_sizes) - 1
                    or ct.scale != scale
                ):
                    raise CiphertextError(
                        f"client {client_id}: ciphertext {k} has the wrong parameters"
                    )
                cts.append(ct)
        finally:
            os.remove(path)
        return cts

    def aggregate(
        self, updates: Mapping[int, Mapping[str, Any]], *, min_clients: int = 1
    ) -> tuple[list[bytes], tuple[int, ...]]:
        """Sum the valid updates; invalid clients are excluded with a logged reason.

        Returns (serialized sum ciphertexts, ids of the summed clients). Raises HeAbort if
        fewer than ``min_clients`` valid updates remain.
        """
        acc: list[Any] | None = None
        included = []
        for cid in sorted(updates):
            try:
                cts = self.load(cid, updates[cid])
            except CiphertextError as err:
                self.excluded[cid] = str(err)
                log.warning("ckks aggregation: client %d excluded: %s", cid, err)
                continue
            self.seen_digests.add(updates[cid]["digest"])
            if acc is None:
                acc = cts
            else:
                for a, c in zip(acc, cts, strict=True):
                    self._evaluator.add_inplace(a, c)
            included.append(cid)
        if len(included) < min_clients or acc is None:
            log.error("ckks aggregation aborted: %d valid updates < %d", len(included), min_clients)
            raise HeAbort(
                f"ckks aggregation aborted: {len(included)} valid updates < {min_clients}"
            )
        path = _scratch_path()
        try:
            return [_save(ct, path) for ct in acc], tuple(included)
        finally:
            os.remove(path)
