"""Services on a trained federation's model and records.

Encrypted services (docs/encrypted-services.md). Client side (holds the CKKS secret key):
`inference_client` (encrypt embeddings, decrypt logits), `similarity_client` (encrypt a
query, decrypt scores, rank), `embed` (the federation's encoders and projections on the
client's own records). Server side (holds a public context only): `inference`
(masked-mean fusion and the head on ciphertexts), `similarity` (scores against a
plaintext gallery), `query_budget`, `served_model` (the head made CKKS-ready, the
gallery's embeddings). Both: `context` (parameters, keys, security level), `protocol` and
`wire` (message layout and bytes), `poly_head` (the quadratic-activation head: pure),
`endpoint` (the HTTP transport), `errors`; `commands` holds ``umbra infer``.

Private set intersection (docs/psi.md), which parties run, each on its own ids:
`psi_ids` (ids as compared: UTF-8, NFC, trimmed, case policy, duplicates refused, and
their SHA-256 digests), `psi_messages` (openmined-psi's messages parsed and range-checked
before the native library sees them), `psi` (the server and client roles over bytes, and
both in one process: ``intersect_pair``), `psi_chain` (k parties as a chain of two-party
sessions passing the running intersection on: ``intersect_chain``), `psi_wire` and
`psi_network` (the framed TCP protocol of ``umbra psi serve`` / ``join``),
`psi_chain_network` (one chain party as its own process), `psi_cli` (``umbra psi``).

Names are imported on first use (PEP 562), so ``umbra --help`` loads neither TenSEAL nor
openmined-psi.
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
    "DataStructure": "psi",
    "PairResult": "psi",
    "PsiClient": "psi",
    "PsiConfig": "psi",
    "PsiServer": "psi",
    "intersect_pair": "psi",
    "ChainResult": "psi_chain",
    "PartyView": "psi_chain",
    "intersect_chain": "psi_chain",
    "ChainPartyResult": "psi_chain_network",
    "chain_party": "psi_chain_network",
    "PsiError": "psi_errors",
    "PsiInputError": "psi_errors",
    "PsiProtocolError": "psi_errors",
    "IdSet": "psi_ids",
    "JoinResult": "psi_network",
    "ServeResult": "psi_network",
    "join": "psi_network",
    "serve": "psi_network",
}

__all__ = [
    "INFERENCE_PARAMS",
    "SIMILARITY_PARAMS",
    "ChainPartyResult",
    "ChainResult",
    "DataStructure",
    "FoldedHead",
    "IdSet",
    "InferenceClient",
    "InferenceServer",
    "JoinResult",
    "PairResult",
    "PartyView",
    "PolyHead",
    "PsiClient",
    "PsiConfig",
    "PsiError",
    "PsiInputError",
    "PsiProtocolError",
    "PsiServer",
    "SearchResult",
    "ServeResult",
    "ServiceEndpoint",
    "ServiceError",
    "ServiceParams",
    "SimilarityClient",
    "SimilarityServer",
    "chain_party",
    "client_context",
    "fit_poly_head",
    "http_transport",
    "intersect_chain",
    "intersect_pair",
    "join",
    "local_transport",
    "public_context",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
