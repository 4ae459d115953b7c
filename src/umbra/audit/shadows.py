"""Shadow models for the offline LiRA: the run's model and feature pipeline trained
centrally, cheaply and without DP, on records the audited ones are not among."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from umbra.audit.query import model_logits
from umbra.data.dataset import MultimodalData
from umbra.federation.train import Batchable, TrainSettings, train_local
from umbra.models import ModelSpec, MultimodalNet

__all__ = ["shadow_logits"]


def shadow_logits(
    model_spec: ModelSpec,
    pool: MultimodalData,
    queries: MultimodalData,
    *,
    settings: TrainSettings,
    shadows: int,
    fraction: float,
    epochs: float,
    rng: np.random.Generator,
    on_shadow: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Train ``shadows`` models, each on a random ``fraction`` of ``pool`` for ``epochs``
    epochs of plain SGD with the run's local settings, from its own initialisation; return
    their logits on ``queries``, (S, N, C). None of them sees a record of ``queries``
    unless the pool holds it: the caller keeps them disjoint. ``rng`` draws the subsets
    and the seeds (non-private choices)."""
    if shadows < 1:
        raise ValueError(f"shadows must be >= 1, got {shadows}")
    size = max(2, round(fraction * len(pool)))
    run = replace(settings, epochs=epochs, proximal_mu=0.0)
    out = []
    for s in range(shadows):
        idx = np.sort(rng.choice(len(pool), size=min(size, len(pool)), replace=False))
        seed = int(rng.integers(2**31))
        torch.manual_seed(seed)
        model = MultimodalNet(model_spec)
        train_local(model, Batchable.from_data(pool.subset(idx)), run, seed=seed)
        out.append(model_logits(model, queries))
        if on_shadow is not None:
            on_shadow(s + 1)
    return np.stack(out)
