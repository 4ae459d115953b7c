"""Encrypted inference, the client's side: encrypt a batch's embeddings under the
client's own key, decrypt the logits the server returns.

The client runs the federation's encoders and projections on its own records
(`umbra.services.embed.embed_records`), so the server sees neither the features nor the
embeddings; it sends each modality's embedding weighted by ``mask / count`` (the client
knows its own mask; absent modalities are encrypted zeros, indistinguishable from any
other ciphertext) and gets ``C`` ciphertexts of logits back. Only this object can decrypt them.
The decrypted values must stay here: see `umbra.services.inference` on key recovery from
approximate decryptions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts

from umbra.services.context import (
    INFERENCE_PARAMS,
    ServiceParams,
    client_context,
    public_context,
)
from umbra.services.errors import ServiceError
from umbra.services.protocol import INFER_PATH, Transport, load_result
from umbra.services.wire import Message, decode, encode

__all__ = ["LOGIT_BOUND", "InferenceClient"]

#: Largest |logit| a genuine reply decodes to. A reply computed on ciphertexts of another
#: key (or garbled) decrypts to values spread over +-q0 / (2 scale) = +-2^13: refused.
LOGIT_BOUND = 1e3


class InferenceClient:
    """Holds the client's CKKS secret key; turns embeddings into a request and a reply into
    logits. Not picklable; ``repr`` shows the parameters only."""

    def __init__(self, params: ServiceParams = INFERENCE_PARAMS) -> None:
        self.params = params
        self._ctx = client_context(params)
        self._public = public_context(self._ctx)

    def __repr__(self) -> str:
        return f"InferenceClient({self.params.describe()})"

    def __reduce__(self) -> Any:
        raise TypeError("InferenceClient holds a secret key and cannot be pickled")

    @property
    def public_context(self) -> bytes:
        return self._public

    def request(self, embeddings: np.ndarray, mask: np.ndarray) -> bytes:
        """Encrypt one batch.

        Args:
            embeddings: ``(B, M, D)`` per-modality embeddings in the shared space; rows of
                absent modalities are ignored (encrypted as zeros).
            mask: ``(B, M)`` bool, True where the record holds the modality.
        """
        emb = np.asarray(embeddings, dtype=np.float64)
        mask = np.asarray(mask)
        if emb.ndim != 3 or mask.shape != emb.shape[:2] or mask.dtype != np.bool_:
            raise ServiceError(
                f"need embeddings (B, M, D) and a bool mask (B, M); got {emb.shape} and "
                f"{mask.dtype} {mask.shape}"
            )
        b, m, d = emb.shape
        slots = self.params.slots
        if not 1 <= b <= slots:
            raise ServiceError(f"a request holds 1..{slots} records, got {b}")
        if not np.isfinite(emb[mask]).all():
            raise ServiceError("embeddings of present modalities must be finite")
        weight = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)  # (B, M): masked mean
        padded = np.zeros((slots, m, d))
        padded[:b] = np.where(mask[:, :, None], emb * weight[:, :, None], 0.0)  # (S, M, D)
        blobs = [self._public]
        for j_m in range(m):
            for j in range(d):
                blobs.append(ts.ckks_vector(self._ctx, padded[:, j_m, j].tolist()).serialize())
        return encode(Message({"service": "infer", "modalities": m, "dim": d}, blobs))

    def logits(self, reply: bytes, records: int) -> np.ndarray:
        """Decrypt a reply: ``(records, C)`` logits of the batch's first ``records`` slots."""
        msg = decode(reply, max_blobs=1 << 12)
        classes = msg.header.get("classes")
        if not isinstance(classes, int) or classes < 1 or len(msg.blobs) != classes:
            raise ServiceError("the reply does not hold one ciphertext per class")
        out = np.stack(
            [
                np.asarray(load_result(self._ctx, blob, self.params, f"logit {c}").decrypt())
                for c, blob in enumerate(msg.blobs)
            ],
            axis=1,
        )  # (S, C)
        if not np.isfinite(out).all() or np.abs(out).max() > LOGIT_BOUND:
            raise ServiceError(
                "the reply does not decrypt under this key to plausible logits (computed on "
                "ciphertexts of another key or parameters, or garbled)"
            )
        return out[:records]

    def predict(self, transport: Transport, embeddings: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits ``(B, C)`` of any number of records, one request per ``slots`` records."""
        emb = np.asarray(embeddings)
        if emb.ndim != 3 or len(emb) < 1:
            raise ServiceError(f"need embeddings (B >= 1, M, D), got shape {emb.shape}")
        out = []
        for start in range(0, len(emb), self.params.slots):
            part = slice(start, start + self.params.slots)
            reply = transport(INFER_PATH, self.request(emb[part], np.asarray(mask)[part]))
            out.append(self.logits(reply, len(emb[part])))
        return np.concatenate(out)
