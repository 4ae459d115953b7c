"""The client's half of the federation's model: per-modality embeddings of its own
records in the shared space (encoders + projections, run locally, never sent in clear)."""

from __future__ import annotations

import numpy as np
import torch

from umbra.data.dataset import MultimodalData
from umbra.models import MultimodalNet

__all__ = ["embed_records"]


def embed_records(
    model: MultimodalNet, data: MultimodalData, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, M, D)`` embeddings (zeros where a record lacks a modality) and the ``(B, M)``
    bool mask, in the model's modality order, with the model in eval mode."""
    from umbra.federation.train import Batchable

    if tuple(data.modalities) != model.modalities:
        raise ValueError(f"data has modalities {data.modalities}, the model {model.modalities}")
    was_training = model.training
    model.eval()
    batches = Batchable.from_data(data)
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(batches), batch_size):
                idx = torch.arange(start, min(start + batch_size, len(batches)))
                inputs, mask, _ = batches.take(idx)
                emb = model.embed(inputs, mask)
                out.append(torch.stack([emb[m] for m in model.modalities], dim=1).double())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy(), np.asarray(data.mask, dtype=bool)
