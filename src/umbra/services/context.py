"""CKKS parameters and keys of the encrypted services (Cheon-Kim-Kim-Song, ASIACRYPT 2017,
through TenSEAL).

The *client* generates the context and keeps it: it alone holds the secret key. The
*server* receives `public_context` bytes: the parameters plus the relinearisation keys it
needs to multiply two ciphertexts; no secret key, no public key (the client encrypts with
its secret key, so none is made), no Galois keys (neither service rotates).

Parameters are chosen for the multiplicative depth each service uses, and checked against
the HomomorphicEncryption.org standard (Albrecht et al. 2018, Table 1, ternary secret,
classical 128-bit security: log2 q <= 109 / 218 for N = 4096 / 8192; the table lives in
`umbra.secure.he.ckks.HE_STANDARD_MAX_LOG_Q`):

* inference, depth 3 (the first linear layer, the square of the polynomial activation, the
  second linear layer; fusion is additions): N = 8192, primes 52 + 3 x 38 + 52 = 218
  bits, scale 2^38, logits up to 2^13 in magnitude. 4096 records per ciphertext. (Sending
  ``1 / count`` as its own ciphertext and multiplying it in would cost a fourth level, and
  at 218 bits a 2^31 scale: logit errors near 1e-3 instead of 1e-5.)
* similarity, depth 1 (one plaintext-times-ciphertext product): N = 4096, primes
  37 + 34 + 38 = 109 bits, scale 2^34 (cosine scores need 2 bits above it). 2048
  gallery items per ciphertext.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import tenseal as ts

from umbra.secure.he.ckks import HE_STANDARD_MAX_LOG_Q
from umbra.services.errors import ServiceError

__all__ = [
    "INFERENCE_PARAMS",
    "SIMILARITY_PARAMS",
    "ServiceParams",
    "client_context",
    "context_fingerprint",
    "load_public_context",
    "public_context",
]


@dataclass(frozen=True)
class ServiceParams:
    """CKKS ring and modulus of one service.

    Attributes:
        poly_modulus_degree: ring dimension N (slots = N / 2).
        coeff_mod_bit_sizes: bit sizes of the modulus primes; the last is the special
            (key-switching) prime, the middle ones are consumed one per rescale, so
            ``depth = len - 2``.
        scale_bits: log2 of the CKKS scale, equal to the middle primes so that rescaling
            keeps the scale.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_MAX_LOG_Q:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_LOG_Q)}")
        if len(self.coeff_mod_bit_sizes) < 3 or not all(
            20 <= b <= 60 for b in self.coeff_mod_bit_sizes
        ):
            raise ValueError("coeff_mod_bit_sizes needs >= 3 primes of 20..60 bits")
        if self.log_q > HE_STANDARD_MAX_LOG_Q[n]:
            raise ValueError(
                f"coeff_mod_bit_sizes sum to {self.log_q} bits > {HE_STANDARD_MAX_LOG_Q[n]}, "
                f"the 128-bit security bound for N={n}"
            )
        if not 20 <= self.scale_bits < self.coeff_mod_bit_sizes[0]:
            raise ValueError(f"scale_bits must be in [20, {self.coeff_mod_bit_sizes[0] - 1}]")

    @property
    def log_q(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def depth(self) -> int:
        """Rescales a fresh ciphertext can take."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def security_bits(self) -> int:
        """128: checked at construction against the HE standard table."""
        return 128

    def describe(self) -> str:
        """One line for logs and reports (no key material: parameters are public)."""
        return (
            f"CKKS N={self.poly_modulus_degree}, log2 q={self.log_q} "
            f"({'+'.join(map(str, self.coeff_mod_bit_sizes))}), scale 2^{self.scale_bits}, "
            f"depth {self.depth}, {self.security_bits}-bit (HE standard)"
        )


INFERENCE_PARAMS = ServiceParams(8192, (52, 38, 38, 38, 52), 38)
SIMILARITY_PARAMS = ServiceParams(4096, (37, 34, 38), 34)


def client_context(params: ServiceParams) -> ts.Context:
    """A fresh client context: a new secret key, symmetric (secret-key) encryption, and
    relinearisation keys for the server. Keep it on the client; send only `public_context`."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = 2.0**params.scale_bits
    if params.depth > 1:
        ctx.generate_relin_keys()
    return ctx


def public_context(ctx: ts.Context) -> bytes:
    """What the server gets: parameters and relinearisation keys, never the secret key."""
    return bytes(
        ctx.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=True,
        )
    )


def context_fingerprint(public: bytes) -> str:
    """SHA-256 of a public context: names a client key (for query budgets) without
    revealing anything about the secret key."""
    return hashlib.sha256(b"umbra/services/context/v1" + public).hexdigest()[:16]


def load_public_context(data: bytes, params: ServiceParams) -> ts.Context:
    """Load a client's public context on the server.

    Raises ServiceError if the bytes are no context, hold a secret key (the client must
    never send it), or were made with other parameters than ``params``.
    """
    try:
        ctx = ts.context_from(data)
    except Exception:  # TenSEAL/SEAL raise several C++ exception types
        raise ServiceError("the client context is malformed (not a TenSEAL context)") from None
    if ctx.has_secret_key() or ctx.is_private():
        raise ServiceError("the client context holds a secret key: refused (never send it)")
    if not ctx.is_public():
        raise ServiceError("the client context is not a public CKKS context")
    data_ = ctx.seal_context().data.key_context_data()
    parms = data_.parms()
    got_n = parms.poly_modulus_degree()
    got_bits = tuple(int(q.bit_count()) for q in parms.coeff_modulus())
    if got_n != params.poly_modulus_degree or got_bits != params.coeff_mod_bit_sizes:
        raise ServiceError(
            f"the client context has CKKS parameters N={got_n}, primes {list(got_bits)}; "
            f"this service uses N={params.poly_modulus_degree}, primes "
            f"{list(params.coeff_mod_bit_sizes)}"
        )
    if params.depth > 1 and not ctx.has_relin_keys():
        raise ServiceError("the client context lacks the relinearisation keys")
    ctx.global_scale = 2.0**params.scale_bits
    return ctx
