"""Encrypted cross-modal similarity search, the client's side: encrypt a query embedding
under the client's own key, decrypt the gallery's scores, rank the top k.

The query (e.g. a text record embedded by the federation's text encoder and projection)
is L2-normalised and sent as ``D`` ciphertexts, feature ``j`` in every slot
(`umbra.services.protocol`). The ranking happens here, on decrypted scores that never
leave the client (`umbra.services.inference` on why decrypted values must not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from umbra.services.context import (
    SIMILARITY_PARAMS,
    ServiceParams,
    client_context,
    public_context,
)
from umbra.services.errors import ServiceError
from umbra.services.protocol import SIMILARITY_PATH, Transport, load_result
from umbra.services.similarity import normalise
from umbra.services.wire import Message, decode, encode

__all__ = ["SCORE_BOUND", "SearchResult", "SimilarityClient", "top_k"]

#: Largest |score| a genuine reply decodes to (cosines lie in [-1, 1]); a reply of another
#: key decrypts to values spread over q0 / scale = +-2^3.
SCORE_BOUND = 2.0


@dataclass(frozen=True)
class SearchResult:
    """All decrypted scores of one query, with the gallery ids they belong to."""

    ids: list[str]
    scores: np.ndarray  # (items,)

    def top(self, k: int) -> list[tuple[str, float]]:
        return [(self.ids[i], float(self.scores[i])) for i in top_k(self.scores, k)]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties: lower index first)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(scores))
    order = np.argsort(-scores, kind="stable")
    return order[:k]


class SimilarityClient:
    """Holds the client's CKKS secret key for similarity queries. Not picklable."""

    def __init__(self, params: ServiceParams = SIMILARITY_PARAMS) -> None:
        self.params = params
        self._ctx = client_context(params)
        self._public = public_context(self._ctx)

    def __repr__(self) -> str:
        return f"SimilarityClient({self.params.describe()})"

    def __reduce__(self) -> Any:
        raise TypeError("SimilarityClient holds a secret key and cannot be pickled")

    def request(self, query: np.ndarray) -> bytes:
        """Encrypt one ``(D,)`` query embedding (normalised here)."""
        q = np.asarray(query, dtype=np.float64)
        if q.ndim != 1 or len(q) < 1:
            raise ServiceError(f"a query is one (D,) embedding, got shape {q.shape}")
        if not np.isfinite(q).all() or not q.any():
            raise ServiceError("a query embedding must be finite and non-zero")
        q = normalise(q)
        slots = self.params.slots
        blobs = [self._public]
        blobs += [ts.ckks_vector(self._ctx, [float(v)] * slots).serialize() for v in q]
        return encode(Message({"service": "similarity", "dim": len(q)}, blobs))

    def scores(self, reply: bytes) -> SearchResult:
        """Decrypt a reply into the scores of the items it names."""
        msg = decode(reply, max_blobs=1 << 16)
        ids = msg.header.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ServiceError("the reply names no item ids")
        slots = self.params.slots
        if len(msg.blobs) != -(-len(ids) // slots):
            raise ServiceError(f"the reply holds {len(msg.blobs)} ciphertexts for {len(ids)} items")
        flat = np.concatenate(
            [
                np.asarray(load_result(self._ctx, b, self.params, f"scores {k}").decrypt())
                for k, b in enumerate(msg.blobs)
            ]
        ) if msg.blobs else np.zeros(0)  # fmt: skip
        if not np.isfinite(flat).all() or (len(flat) and np.abs(flat).max() > SCORE_BOUND):
            raise ServiceError(
                "the reply does not decrypt under this key to plausible scores (computed on "
                "ciphertexts of another key or parameters, or garbled)"
            )
        return SearchResult(ids, flat[: len(ids)])

    def search(self, transport: Transport, query: np.ndarray) -> SearchResult:
        """Send one query, return its decrypted scores."""
        return self.scores(transport(SIMILARITY_PATH, self.request(query)))
