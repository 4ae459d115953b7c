"""The server's global model of a heterogeneous federation: the ensemble of the
architectures' models, whose mean logits classify (as FedDF's teacher, here on test data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from umbra.data.dataset import modality_subsets
from umbra.federation.train import Batchable
from umbra.models import MultimodalNet

__all__ = ["evaluate_ensemble"]


@torch.no_grad()
def evaluate_ensemble(
    models: Sequence[MultimodalNet], data: Batchable, *, batch_size: int = 1000
) -> dict[str, object]:
    """Accuracy of the mean logits of ``models`` (equal modalities), fused and per
    modality subset, as :func:`umbra.federation.train.evaluate` reports a single model's
    (a record holding none of a subset's modalities counts as wrong)."""
    if not models:
        raise ValueError("the ensemble needs at least one model")
    mods = models[0].modalities
    if any(m.modalities != mods for m in models):
        raise ValueError("every model of the ensemble must have the same modalities")
    for m in models:
        m.eval()
    subsets = modality_subsets(mods)
    n = len(data)
    hits = {s: 0 for s in subsets}
    fused = 0
    for lo in range(0, n, batch_size):
        idx = torch.arange(lo, min(n, lo + batch_size))
        inputs, mask, labels = data.take(idx)
        fused += int((_mean_logits(models, inputs, mask).argmax(1) == labels).sum())
        for s in subsets:
            sub = torch.tensor([m in s for m in mods]).unsqueeze(0) & mask  # (B, M)
            pred = _mean_logits(models, inputs, sub).argmax(1)
            pred[~sub.any(1)] = -1
            hits[s] += int((pred == labels).sum())
    return {
        "accuracy": fused / max(1, n),
        "subsets": {"+".join(s): hits[s] / max(1, n) for s in subsets},
    }


def _mean_logits(
    models: Sequence[MultimodalNet], inputs: dict[str, Tensor], mask: Tensor
) -> Tensor:
    return torch.stack([m(inputs, mask) for m in models]).mean(dim=0)  # (K, B, C) -> (B, C)
