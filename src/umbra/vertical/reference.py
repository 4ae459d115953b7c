"""The centralized reference of a vertical run: the same training without the split.

One :class:`~umbra.models.MultimodalNet` from the run's joint initial arrays, trained on the
pooled aligned records (each entity with the modalities of the parties that hold it, the
others masked, exactly as the label holder's ``count`` masks them) with the label holder's
batches (:meth:`LabelHolder.batches`, the same shuffle per epoch), its labels, and the split
optimizer's SGD settings. Split training computes the same gradients per step
(:mod:`umbra.vertical.split_step`), so after the same epochs the two models agree up to float
summation order: this is what "split vs centralized on the same records" compares.

Runs where only the simulation can (it pools the parties' records); for benchmarks and
tests. With ``model.dropout > 0`` the dropout masks differ (each party seeds its own), so
the two trajectories are equal in distribution only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from umbra.data.dataset import MultimodalData
from umbra.federation.train import Batchable, set_arrays
from umbra.models import ModelSpec, MultimodalNet
from umbra.vertical.build import VerticalSetup
from umbra.vertical.split_step import make_optimizer

__all__ = ["train_centralized"]


def train_centralized(
    setup: VerticalSetup,
    train: MultimodalData,
    model_spec: dict[str, object],
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    on_epoch: Callable[[int, MultimodalNet], None] | None = None,
) -> MultimodalNet:
    """Train the joint network as the split run would, epochs ``1..epochs`` (see the module
    docstring); ``on_epoch(epoch, model)`` after each (e.g. to evaluate it)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    pooled, _ = setup.pooled(train)
    data = Batchable.from_data(pooled)
    labels = torch.as_tensor(np.asarray(setup.train_labels, dtype=np.int64))
    model = MultimodalNet(ModelSpec.from_dict(dict(model_spec)))
    set_arrays(model, setup.init)
    opt = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in setup.holder.batches(epoch):
            idx = torch.as_tensor(batch, dtype=torch.int64)
            inputs, mask, _ = data.take(idx)
            loss = nn.functional.cross_entropy(model(inputs, mask), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    return model
