"""What whoever holds a model sees of a record: the logits the model gives it."""

from __future__ import annotations

import numpy as np
import torch

from umbra.data.dataset import MultimodalData
from umbra.federation.train import Batchable
from umbra.models import MultimodalNet, channels_last

__all__ = ["model_logits"]


@torch.no_grad()
def model_logits(
    model: MultimodalNet, data: MultimodalData, *, batch_size: int = 1000
) -> np.ndarray:
    """Logits of every record of ``data`` (with its own presence mask), (N, C) float64;
    evaluation mode, so dropout and modality dropout play no part."""
    model.eval()
    rows = Batchable.from_data(data)
    out: list[np.ndarray] = []
    with channels_last(model):
        for lo in range(0, len(rows), batch_size):
            inputs, mask, _ = rows.take(torch.arange(lo, min(len(rows), lo + batch_size)))
            out.append(model(inputs, mask).double().numpy())
    if not out:
        return np.zeros((0, model.spec.num_classes))
    return np.concatenate(out)
