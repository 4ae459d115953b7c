"""The server's half of the federation's model: the head made CKKS-ready, and a gallery of
one modality's embeddings (the model owner runs this on data it holds)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from umbra.data.dataset import MultimodalData
from umbra.models import MultimodalNet
from umbra.run.prepare import PreparedData
from umbra.services.embed import embed_records
from umbra.services.poly_head import PolyHead, fit_poly_head

__all__ = [
    "federation_records",
    "fused_embeddings",
    "gallery_embeddings",
    "relu_head",
    "served_head",
]

#: Training records the activation polynomial is fitted and fine-tuned on (a sample).
FIT_RECORDS = 20_000


def fused_embeddings(emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean ``(B, M, D), (B, M) -> (B, D)`` in float64 (as `umbra.models.masked_mean`)."""
    keep = mask[:, :, None]
    return np.where(keep, emb, 0.0).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)[:, None]


def relu_head(model: MultimodalNet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The trained head's ``W1, b1, W2, b2`` (``Linear -> ReLU -> Dropout -> Linear``)."""
    lin1, lin2 = model.head[0], model.head[3]
    if not isinstance(lin1, nn.Linear) or not isinstance(lin2, nn.Linear):
        raise ValueError("the model's head is not Linear -> ReLU -> Dropout -> Linear")

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy().copy()

    return arr(lin1.weight), arr(lin1.bias), arr(lin2.weight), arr(lin2.bias)


def federation_records(prep: PreparedData) -> MultimodalData:
    """The training records with the modality masks the organisations trained with."""
    idx = np.concatenate(prep.parts)
    return prep.train.subset(idx).with_mask(np.concatenate(prep.masks))


def served_head(
    model: MultimodalNet, train: MultimodalData, *, steps: int = 600, seed: int = 0
) -> PolyHead:
    """The head with its ReLU replaced by fitted quadratics, fine-tuned on (a sample of)
    ``train``'s fused embeddings under ``train``'s own masks."""
    n = len(train)
    idx = np.linspace(0, n - 1, min(n, FIT_RECORDS)).astype(np.int64)
    emb, mask = embed_records(model, train.subset(idx))
    w1, b1, w2, b2 = relu_head(model)
    return fit_poly_head(w1, b1, w2, b2, fused_embeddings(emb, mask), steps=steps, seed=seed)


def gallery_embeddings(
    model: MultimodalNet, data: MultimodalData, modality: str, *, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(G, D)`` embeddings of ``modality`` for the first ``size`` records holding it, and
    those records' indices into ``data``."""
    if modality not in data.modalities:
        raise ValueError(f"no modality {modality!r}; the data has {', '.join(data.modalities)}")
    j = data.modality_index(modality)
    holders = np.flatnonzero(data.mask[:, j])[:size]
    emb, _ = embed_records(model, data.subset(holders))
    return emb[:, j, :], holders
