"""The classifier head in a form CKKS can evaluate: ``Linear -> ReLU -> Linear`` with the
ReLU replaced by a per-unit quadratic (pure numpy, plus one torch fine-tuning step).

CKKS adds and multiplies; ReLU is neither. Each hidden unit ``k`` gets its own
least-squares quadratic ``a_k h^2 + b_k h + c_k`` fitted to ``max(h, 0)`` on the
pre-activations ``h`` that unit takes on real fused embeddings (the "embedding range"),
as in CryptoNets (Gilad-Bachrach et al., ICML 2016) and HCNN-style polynomial
activations. Then the head's weights are fine-tuned with the quadratic in place, by
distillation from the ReLU head's logits (Hinton et al. 2015), so the served model agrees
with the trained one more often. The degree is 2: one multiplicative level.

Folding: with the activation's coefficients merged into the second layer,
``W2 (a*h^2 + b*h + c) + b2 = (W2 diag a) h^2 + (W2 diag b) h + (W2 c + b2)``, so the
server needs one square and one plaintext matrix product after it: depth 2 for the
activation and the second layer together (`PolyHead.folded`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FoldedHead", "PolyHead", "fit_poly_head"]

#: Degree of the activation polynomial (one multiplicative level).
DEGREE = 2


@dataclass(frozen=True)
class FoldedHead:
    """The head as the server evaluates it: ``h = W1 x + b1`` then
    ``logits = A h^2 + B h + c`` (all float64)."""

    w1: np.ndarray  # (H, D)
    b1: np.ndarray  # (H,)
    a: np.ndarray  # (C, H): W2 diag(quadratic coefficients)
    b: np.ndarray  # (C, H): W2 diag(linear coefficients)
    c: np.ndarray  # (C,): W2 @ constants + b2

    @property
    def embed_dim(self) -> int:
        return int(self.w1.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.a.shape[0])

    def logits(self, fused: np.ndarray) -> np.ndarray:
        """Plaintext reference: ``(B, D) -> (B, C)``, exactly what the server computes
        homomorphically."""
        h = fused @ self.w1.T + self.b1  # (B, H)
        return (h * h) @ self.a.T + h @ self.b.T + self.c


@dataclass(frozen=True)
class PolyHead:
    """``Linear(D, H) -> a h^2 + b h + c (per unit) -> Linear(H, C)``."""

    w1: np.ndarray  # (H, D)
    b1: np.ndarray  # (H,)
    coeffs: np.ndarray  # (H, 3): a, b, c of each hidden unit
    w2: np.ndarray  # (C, H)
    b2: np.ndarray  # (C,)

    def __post_init__(self) -> None:
        h, d = self.w1.shape
        if self.b1.shape != (h,) or self.coeffs.shape != (h, DEGREE + 1):
            raise ValueError(f"first layer and activation must have {h} units")
        if self.w2.ndim != 2 or self.w2.shape[1] != h or self.b2.shape != (self.w2.shape[0],):
            raise ValueError(f"second layer must map {h} units to classes")
        if d < 1:
            raise ValueError("the head needs an embedding dimension >= 1")

    def activation(self, h: np.ndarray) -> np.ndarray:
        a, b, c = self.coeffs[:, 0], self.coeffs[:, 1], self.coeffs[:, 2]
        return a * h * h + b * h + c

    def logits(self, fused: np.ndarray) -> np.ndarray:
        """``(B, D) -> (B, C)`` in plaintext."""
        return self.activation(fused @ self.w1.T + self.b1) @ self.w2.T + self.b2

    def folded(self) -> FoldedHead:
        a, b, c = self.coeffs[:, 0], self.coeffs[:, 1], self.coeffs[:, 2]
        f64 = np.float64
        return FoldedHead(
            w1=self.w1.astype(f64),
            b1=self.b1.astype(f64),
            a=(self.w2 * a).astype(f64),
            b=(self.w2 * b).astype(f64),
            c=(self.w2 @ c + self.b2).astype(f64),
        )


def relu_fit(h: np.ndarray) -> np.ndarray:
    """Per-unit least-squares quadratic to ``max(h, 0)``: ``(N, H) -> (H, 3)`` (a, b, c)."""
    if h.ndim != 2 or len(h) < DEGREE + 1:
        raise ValueError(f"need (N >= {DEGREE + 1}, H) pre-activations, got {h.shape}")
    return np.stack(
        [np.polyfit(h[:, k], np.maximum(h[:, k], 0.0), DEGREE) for k in range(h.shape[1])]
    )


def fit_poly_head(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    fused: np.ndarray,
    *,
    steps: int = 600,
    seed: int = 0,
) -> PolyHead:
    """Replace the ReLU of a trained head by fitted quadratics and fine-tune it.

    Args:
        w1, b1, w2, b2: the trained head's two linear layers (ReLU between them).
        fused: ``(N, D)`` fused embeddings of training records (with the missing-modality
            patterns the service will see): the range the quadratics are fitted on.
        steps: Adam steps of distillation (batch 512, temperature 2); 0 keeps the plain
            least-squares fit.
        seed: seed of the batch order (model fitting, not a privacy mechanism).
    """
    import torch

    h = fused @ w1.T + b1
    coeffs = relu_fit(h)
    if steps <= 0:
        return PolyHead(w1, b1, coeffs, w2, b2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (512, D) x (D, H) products: threads only add contention
    try:
        gen = torch.Generator().manual_seed(seed)
        x = torch.as_tensor(fused, dtype=torch.float32)
        params = [
            torch.tensor(p, dtype=torch.float32, requires_grad=True) for p in (w1, b1, w2, b2)
        ]
        cf = torch.as_tensor(coeffs, dtype=torch.float32)
        temp = 2.0
        with torch.no_grad():
            teacher = torch.relu(x @ params[0].T + params[1]) @ params[2].T + params[3]  # (N, C)
            target = torch.log_softmax(teacher / temp, dim=1)
        opt = torch.optim.Adam(params, lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (min(512, len(x)),), generator=gen)
            hk = x[idx] @ params[0].T + params[1]  # (B, H)
            act = cf[:, 0] * hk * hk + cf[:, 1] * hk + cf[:, 2]
            out = act @ params[2].T + params[3]  # (B, C)
            loss = torch.nn.functional.kl_div(
                torch.log_softmax(out / temp, dim=1), target[idx], log_target=True,
                reduction="batchmean",
            )  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    n1, nb1, n2, nb2 = (p.detach().numpy().astype(np.float64) for p in params)
    return PolyHead(n1, nb1, coeffs, n2, nb2)
