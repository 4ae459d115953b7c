"""Encrypted cross-modal similarity search, the server's side: inner products of an
encrypted query with a plaintext gallery, many gallery items per ciphertext.

The gallery holds one modality's embeddings in the shared space (e.g. images, projected
by the federation's image encoder), L2-normalised, so a score is a cosine similarity. The
client (`umbra.services.similarity_client`) sends ``D`` ciphertexts, ciphertext ``j``
holding its query's feature ``j`` in every slot. For each chunk of ``slots`` items the
server computes::

    score_chunk = sum_j Enc(q_j) * Pt(G[chunk, j])      # one plaintext product: depth 1

so item ``i`` of the chunk lands in slot ``i`` (2048 items per ciphertext at N = 4096),
with no rotations and so no Galois keys.

What each side learns: the server, nothing about the query or the scores (it returns
ciphertexts; it sees the query's dimension and how often a key queries). The client, the
scores of every item it is sent and the ids of those items. Scores are linear in the
gallery embeddings: ``D`` well-chosen queries on the same items recover them exactly. Two
server-side limits bound this: ``candidates`` (each query scores only that many items, a
fresh uniform sample drawn with `umbra.privacy.randomness.SecureRandom`, so one key sees
scores of few items per query) and ``max_queries`` (queries per client key, counted by the
fingerprint of its public context, and per network address when the endpoint knows it: a
client can make new keys; in a deployment tie the budget to the authenticated
organisation).
"""

from __future__ import annotations

import threading

import numpy as np
import tenseal as ts

from umbra.privacy.randomness import SecureRandom
from umbra.services.context import (
    SIMILARITY_PARAMS,
    ServiceParams,
    context_fingerprint,
)
from umbra.services.errors import ServiceError
from umbra.services.protocol import load_request
from umbra.services.query_budget import QueryBudget
from umbra.services.wire import Message, decode, encode

__all__ = ["DEFAULT_MAX_GALLERY", "SimilarityServer", "encrypted_scores", "normalise"]

#: Largest gallery a server accepts unless configured otherwise.
DEFAULT_MAX_GALLERY = 100_000


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): scores become cosines."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)


def encrypted_scores(
    query: list[ts.CKKSVector], gallery: np.ndarray, *, slots: int, scale_bits: int
) -> list[ts.CKKSVector]:
    """``Enc(q) . g_i`` for every row of ``gallery`` ``(G, D)``, ``slots`` items per
    ciphertext (the last chunk zero-padded). A feature column below 2^-scale_bits
    everywhere in a chunk encodes to the zero plaintext (a product SEAL refuses) and is
    skipped: it contributes less than one unit of the scale."""
    g, d = gallery.shape
    if len(query) != d:
        raise ServiceError(f"query has dimension {len(query)}; the gallery's is {d}")
    out = []
    for start in range(0, g, slots):
        chunk = np.zeros((slots, d))
        part = gallery[start : start + slots]
        chunk[: len(part)] = part
        acc: ts.CKKSVector | None = None
        for j in range(d):
            column = chunk[:, j]
            if np.abs(column).max() < 2.0**-scale_bits:
                continue
            term = query[j] * column.tolist()
            acc = term if acc is None else acc + term
        if acc is None:
            raise ServiceError(f"gallery items {start}.. are all zero vectors")
        out.append(acc)
    return out


class SimilarityServer:
    """The gallery owner's encrypted-search endpoint logic (transport-free).

    Args:
        gallery: ``(G, D)`` embeddings of one modality in the shared space (normalised here).
        ids: one id per gallery item (returned with the scores; default 0..G-1).
        max_gallery: refuse a larger gallery (memory and per-query cost grow with it).
        candidates: score only this many items per query, a fresh uniform sample each time
            (None: all).
        max_queries: queries allowed per client key (None: unbounded).
    """

    def __init__(
        self,
        gallery: np.ndarray,
        *,
        ids: list[str] | None = None,
        max_gallery: int = DEFAULT_MAX_GALLERY,
        candidates: int | None = None,
        max_queries: int | None = None,
        params: ServiceParams = SIMILARITY_PARAMS,
        rng: SecureRandom | None = None,
    ) -> None:
        gallery = np.asarray(gallery, dtype=np.float64)
        if gallery.ndim != 2 or len(gallery) < 1 or gallery.shape[1] < 1:
            raise ValueError(f"gallery must be a non-empty (G, D) array, got {gallery.shape}")
        if max_gallery < 1:
            raise ValueError(f"max_gallery must be >= 1, got {max_gallery}")
        if len(gallery) > max_gallery:
            raise ServiceError(
                f"gallery of {len(gallery)} items exceeds the configured maximum of {max_gallery}"
            )
        if not np.isfinite(gallery).all():
            raise ValueError("gallery embeddings must be finite")
        zero = np.flatnonzero(~gallery.any(axis=1))
        if len(zero):
            raise ValueError(
                f"gallery item {int(zero[0])} has a zero embedding (no such modality?)"
            )
        if candidates is not None and candidates < 1:
            raise ValueError(f"candidates must be >= 1 or None, got {candidates}")
        if ids is not None and len(ids) != len(gallery):
            raise ValueError(f"{len(ids)} ids for {len(gallery)} gallery items")
        self.gallery = normalise(gallery)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(gallery))]
        self.candidates = candidates
        self.budget = QueryBudget(max_queries)
        self.params = params
        self._rng = rng or SecureRandom()
        self._rng_lock = threading.Lock()  # the endpoint serves queries on several threads

    @property
    def dim(self) -> int:
        return int(self.gallery.shape[1])

    def describe(self) -> dict[str, object]:
        return {
            "service": "similarity",
            "dim": self.dim,
            "items": len(self.gallery),
            "candidates": self.candidates,
            "max_queries": self.budget.limit,
            "params": self.params.describe(),
        }

    def _chosen(self) -> np.ndarray:
        n = len(self.gallery)
        if self.candidates is None or self.candidates >= n:
            return np.arange(n)
        # a uniform subset: the order of n secure uniforms (no numpy or seeded randomness)
        with self._rng_lock:
            draws = self._rng.uniform(n)
        return np.sort(np.argsort(draws)[: self.candidates])

    def handle(self, body: bytes, *, peer: str | None = None) -> bytes:
        """One query's bytes -> the reply's bytes; ServiceError for any bad input.

        ``peer``: the client's network address, when known: the query budget counts it as
        well as the client's key (a new key per query does not reset an address's count).
        """
        msg = decode(body, max_blobs=self.dim + 1)
        got = msg.header.get("dim")
        if got != self.dim or len(msg.blobs) != self.dim + 1:
            raise ServiceError(
                f"query has dimension {got} ({len(msg.blobs) - 1} ciphertexts); the "
                f"gallery's embeddings have dimension {self.dim}"
            )
        query = load_request(msg.blobs, self.params, "query ciphertext")
        self.budget.charge(f"key {context_fingerprint(msg.blobs[0])}")
        if peer is not None:
            self.budget.charge(f"address {peer}")
        chosen = self._chosen()
        scores = encrypted_scores(
            query, self.gallery[chosen], slots=self.params.slots, scale_bits=self.params.scale_bits
        )
        header = {"service": "similarity", "ids": [self.ids[i] for i in chosen]}
        return encode(Message(header, [s.serialize() for s in scores]))
