"""Encrypted inference, the server's side: masked-mean fusion and the classifier head
evaluated on CKKS ciphertexts it cannot decrypt.

The client (`umbra.services.inference_client`) runs the encoders and projections itself
and sends, under its own key, every modality's embedding weighted by its fusion weight
``mask / count`` (it knows its own mask; feature-major packing: one ciphertext per feature,
one record per slot, 4096 records per request). The server holds the head
(`umbra.services.poly_head.FoldedHead`) in plaintext and the client's public context (no
secret key), and computes, per request::

    f_j   = sum_m Enc(w_m e_mj)              # masked-mean fusion: (M-1) x D additions
    h_k   = sum_j W1[k, j] f_j + b1[k]       # first layer, plaintext scalars      level 1
    q_k   = h_k^2                            # the quadratic activation's square   level 2
    out_c = sum_k A[c, k] q_k + B[c, k] h_k + c[c]   # folded second layer         level 3

The weights travel inside the ciphertexts rather than as a separate ``Enc(1 / count)``
multiplied in by the server: that product would cost a fourth level and, within the
218-bit modulus of N = 8192 at 128-bit security, a 2^31 instead of a 2^38 scale (logit
errors near 1e-3 instead of 1e-5; `umbra.services.context`). The server learns no more
either way: a weighted embedding is as hidden as the weight.

Plaintext-scalar products need no rotations, so the client sends no Galois keys. The
server learns nothing about the records (IND-CPA of CKKS under the RLWE assumption) beyond
the request's size and timing, and returns ciphertexts only: the decrypted logits stay with
the client. It must never be sent decrypted values: CKKS decryption is approximate, and a
party holding a ciphertext and its approximate decryption can solve for the secret key
(Li & Micciancio, EUROCRYPT 2021, https://eprint.iacr.org/2020/1533).
"""

from __future__ import annotations

import tenseal as ts

from umbra.services.context import INFERENCE_PARAMS, ServiceParams
from umbra.services.errors import ServiceError
from umbra.services.poly_head import FoldedHead
from umbra.services.protocol import load_request
from umbra.services.wire import Message, decode, encode

__all__ = ["InferenceServer", "evaluate_head"]


def _linear(
    xs: list[ts.CKKSVector], weights: list[float], bias: float | None = None, *, tiny: float
) -> ts.CKKSVector | None:
    """``sum_j weights[j] * xs[j] (+ bias)``. Weights below ``tiny`` in magnitude encode
    to the zero plaintext at the CKKS scale (a product SEAL refuses) and are skipped: they
    contribute less than one unit of the scale. None when every weight is skipped."""
    acc: ts.CKKSVector | None = None
    for x, w in zip(xs, weights, strict=True):
        if abs(w) < tiny:
            continue
        term = x * float(w)
        acc = term if acc is None else acc + term
    if acc is not None and bias is not None and abs(bias) >= tiny:
        acc = acc + float(bias)
    return acc


def evaluate_head(
    embeddings: list[list[ts.CKKSVector]],
    head: FoldedHead,
    *,
    scale_bits: int,
) -> list[ts.CKKSVector]:
    """Masked-mean fusion and the folded head on ciphertexts.

    Args:
        embeddings: ``[m][j]``, feature ``j`` of modality ``m`` over the batch's slots,
            weighted by each record's ``mask / count``.
        head: the head, weights in plaintext.
        scale_bits: log2 of the CKKS scale (weights below 2^-scale_bits are dropped).

    Returns:
        ``C`` ciphertexts, logit ``c`` of every slot.
    """
    dim = head.embed_dim
    tiny = 2.0**-scale_bits
    fused = [_sum([embeddings[m][j] for m in range(len(embeddings))]) for j in range(dim)]
    hidden: list[ts.CKKSVector] = []
    live: list[int] = []  # units with a non-zero weight; a dead unit is the constant b1[k]
    const = head.c.copy()
    for k in range(head.w1.shape[0]):
        h = _linear(fused, head.w1[k].tolist(), float(head.b1[k]), tiny=tiny)
        if h is None:
            const += head.a[:, k] * head.b1[k] ** 2 + head.b[:, k] * head.b1[k]
            continue
        hidden.append(h)  # level 1
        live.append(k)
    if not hidden:
        raise ServiceError("the head's first layer has only zero weights")
    squares = [h.square() for h in hidden]  # level 2
    logits = []
    for c in range(head.num_classes):
        quad = _linear(squares, head.a[c, live].tolist(), tiny=tiny)
        lin = _linear(hidden, head.b[c, live].tolist(), tiny=tiny)
        parts = [p for p in (quad, lin) if p is not None]
        if not parts:
            raise ServiceError(f"logit {c} of the head has only zero weights")
        out = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        logits.append(out + float(const[c]))  # level 3
    return logits


def _sum(xs: list[ts.CKKSVector]) -> ts.CKKSVector:
    acc = xs[0]
    for x in xs[1:]:
        acc = acc + x
    return acc


class InferenceServer:
    """The model owner's encrypted-inference endpoint logic (transport-free).

    Holds the head in plaintext; for each request, loads the client's public context,
    checks every ciphertext, evaluates `evaluate_head` and returns the encrypted logits.
    """

    def __init__(
        self,
        head: FoldedHead,
        *,
        modalities: tuple[str, ...],
        params: ServiceParams = INFERENCE_PARAMS,
    ) -> None:
        if not modalities:
            raise ValueError("modalities must name at least one modality")
        if params.depth < 3:
            raise ValueError(f"encrypted inference needs CKKS depth >= 3, got {params.depth}")
        tiny = 2.0**-params.scale_bits
        if not (abs(head.w1) >= tiny).any():
            raise ValueError("the head's first layer has only zero weights")
        flat = [c for c in range(head.num_classes) if not (abs(head.a[c]) >= tiny).any()
                and not (abs(head.b[c]) >= tiny).any()]  # fmt: skip
        if flat:
            raise ValueError(f"logit {flat[0]} of the head does not depend on its input")
        self.head = head
        self.modalities = tuple(modalities)
        self.params = params

    @property
    def num_ciphertexts(self) -> int:
        """Ciphertexts a request carries after the context: M x D weighted embeddings."""
        return len(self.modalities) * self.head.embed_dim

    def describe(self) -> dict[str, object]:
        """Public facts a client needs (no weights)."""
        return {
            "service": "infer",
            "modalities": list(self.modalities),
            "dim": self.head.embed_dim,
            "classes": self.head.num_classes,
            "params": self.params.describe(),
        }

    def handle(self, body: bytes) -> bytes:
        """One request's bytes -> the reply's bytes; ServiceError for any bad input."""
        msg = decode(body, max_blobs=self.num_ciphertexts + 1)
        m, d = len(self.modalities), self.head.embed_dim
        got_m, got_d = msg.header.get("modalities"), msg.header.get("dim")
        if got_m != m or got_d != d:
            raise ServiceError(
                f"request has {got_m} modalities of dimension {got_d}; this model takes "
                f"{m} modalities ({', '.join(self.modalities)}) of dimension {d}"
            )
        if len(msg.blobs) != self.num_ciphertexts + 1:
            raise ServiceError(
                f"request holds {len(msg.blobs) - 1} ciphertexts; {m} modalities x {d} "
                f"features need {self.num_ciphertexts}"
            )
        cts = load_request(msg.blobs, self.params, "ciphertext")
        embeddings = [cts[i * d : (i + 1) * d] for i in range(m)]
        logits = evaluate_head(embeddings, self.head, scale_bits=self.params.scale_bits)
        reply = Message(
            {"service": "infer", "classes": self.head.num_classes},
            [lg.serialize() for lg in logits],
        )
        return encode(reply)
