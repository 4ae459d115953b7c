"""Encrypted services on a trained model (docs/encrypted-services.md).

Client side (holds the CKKS secret key): `inference_client` (encrypt embeddings, decrypt
logits), `similarity_client` (encrypt a query, decrypt scores, rank), `embed` (the
federation's encoders and projections on the client's own records). Server side (holds a
public context only): `inference` (masked-mean fusion and the head on ciphertexts),
`similarity` (scores against a plaintext gallery), `query_budget`, `served_model` (the
head made CKKS-ready, the gallery's embeddings). Both: `context` (parameters, keys,
security level), `protocol` and `wire` (message layout and bytes), `poly_head` (the
quadratic-activation head: pure), `endpoint` (the HTTP transport), `errors`; `commands`
holds ``umbra infer``.

Names are imported on first use (PEP 562), so ``umbra --help`` does not load TenSEAL.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_WHERE = {
    "INFERENCE_PARAMS": "context",
    "SIMILARITY_PARAMS": "context",
    "ServiceParams": "context",
    "client_context": "context",
    "public_context": "context",
    "ServiceEndpoint": "endpoint",
    "http_transport": "endpoint",
    "local_transport": "endpoint",
    "ServiceError": "errors",
    "InferenceServer": "inference",
    "InferenceClient": "inference_client",
    "FoldedHead": "poly_head",
    "PolyHead": "poly_head",
    "fit_poly_head": "poly_head",
    "SimilarityServer": "similarity",
    "SearchResult": "similarity_client",
    "SimilarityClient": "similarity_client",
}

__all__ = [
    "INFERENCE_PARAMS",
    "SIMILARITY_PARAMS",
    "FoldedHead",
    "InferenceClient",
    "InferenceServer",
    "PolyHead",
    "SearchResult",
    "ServiceEndpoint",
    "ServiceError",
    "ServiceParams",
    "SimilarityClient",
    "SimilarityServer",
    "client_context",
    "fit_poly_head",
    "http_transport",
    "local_transport",
    "public_context",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
