"""Constants and checks both roles of the encrypted services share: request paths, header
fields, size limits, and how a ciphertext blob is loaded and checked.

Request layout (blobs of a `umbra.services.wire.Message`):

* ``/v1/infer``: the client's public context, then ``M x D`` ciphertexts of the
  per-modality embeddings, each weighted by the record's fusion weight ``mask / count``
  (modality-major; ciphertext ``(m, j)`` holds feature ``j`` of modality ``m`` of every
  record in the batch, one record per slot; zero where the record lacks the modality;
  ``count`` = the modalities the record holds, at least 1). Reply: ``C`` ciphertexts,
  logit ``c`` of every record.
* ``/v1/similarity``: the client's public context, then ``D`` ciphertexts, ciphertext
  ``j`` holding the query's feature ``j`` in every slot. Reply: the scored gallery ids in
  the header, and ``ceil(items / slots)`` ciphertexts of scores, item ``i`` in slot
  ``i mod slots`` of ciphertext ``i // slots``.

Every vector fills all slots (padding included), so ciphertexts never reveal how many
records a batch holds.
"""

from __future__ import annotations

from collections.abc import Callable

import tenseal as ts

from umbra.services.context import ServiceParams, load_public_context
from umbra.services.errors import ServiceError

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "INFER_PATH",
    "SIMILARITY_PATH",
    "Transport",
    "load_fresh",
    "load_request",
    "load_result",
]

#: ``transport(path, request_bytes) -> reply_bytes``: in-process or over HTTP
#: (`umbra.services.endpoint`).
Transport = Callable[[str, bytes], bytes]

INFER_PATH = "/v1/infer"
SIMILARITY_PATH = "/v1/similarity"
#: Largest request body a server accepts (96 inference ciphertexts of ~0.4 MB, a 2 MB
#: context and slack); larger bodies are refused without being stored.
DEFAULT_MAX_REQUEST_BYTES = 128 << 20


def _load(ctx: ts.Context, blob: bytes, what: str) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(ctx, blob)
    except Exception:  # SEAL/TenSEAL raise several C++ exception types
        raise ServiceError(
            f"{what} is malformed or made with other CKKS parameters than the context"
        ) from None


def load_fresh(ctx: ts.Context, blob: bytes, params: ServiceParams, what: str) -> ts.CKKSVector:
    """A client's freshly encrypted vector: all slots, full modulus chain, the service's
    scale. Raises ServiceError naming ``what`` otherwise."""
    vec = _load(ctx, blob, what)
    cts = vec.ciphertext()
    ok = (
        vec.size() == params.slots
        and len(cts) == 1
        and cts[0].size() == 2
        and cts[0].coeff_modulus_size() == len(params.coeff_mod_bit_sizes) - 1
        and cts[0].scale == 2.0**params.scale_bits
    )
    if not ok:
        raise ServiceError(
            f"{what} is not a fresh ciphertext of {params.slots} slots at scale "
            f"2^{params.scale_bits} (other parameters, or already computed on)"
        )
    return vec


def load_result(ctx: ts.Context, blob: bytes, params: ServiceParams, what: str) -> ts.CKKSVector:
    """A server's result vector, on the client: all slots, one ciphertext."""
    vec = _load(ctx, blob, what)
    if vec.size() != params.slots or len(vec.ciphertext()) != 1:
        raise ServiceError(f"{what} does not hold {params.slots} slots")
    return vec


def load_request(blobs: list[bytes], params: ServiceParams, what: str) -> list[ts.CKKSVector]:
    """A request's ciphertexts: the client's public context in ``blobs[0]``, then one
    fresh vector per further blob (`load_fresh`, named ``"<what> <k>"``)."""
    ctx = load_public_context(blobs[0], params)
    return [load_fresh(ctx, blob, params, f"{what} {k}") for k, blob in enumerate(blobs[1:])]
