"""One split-learning step as pure functions: bottom forward, top step, bottom backward.

Per mini-batch of ``B`` entities chosen by the label holder:

1. each feature party ``p`` runs its bottom model on its rows of the batch:
   ``e_p = bottom_p(x_p)``, ``(n_p, D)``, and sends it (or its share of a secure sum);
2. the label holder scatters the rows into ``total = Σ_p e_p`` ``(B, D)``, divides by the
   count of modalities per entity (masked mean), runs the head, takes the cross-entropy
   and its gradient ``g = ∂L/∂total`` ``(B, D)``, and steps its optimizer;
3. each party receives ``g`` at its rows (the same rows for every party that holds the
   entity: ``∂total/∂e_p`` is the identity) and back-propagates ``e_p.backward(g_p)``.

Since ``total / count`` is exactly the masked mean of :class:`umbra.models.MultimodalNet`,
the parameter gradients are those of centralized training on the same batch (up to float
summation order), and SGD, being per parameter, steps identically when split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from umbra.vertical.top_model import TopModel

__all__ = ["bottom_backward", "make_optimizer", "scatter_rows", "top_step"]


def make_optimizer(
    module: nn.Module, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD over ``module``'s parameters (the same settings at every party)."""
    return torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)  # fmt: skip


def scatter_rows(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], batch: int, dim: int
) -> np.ndarray:
    """``Σ_p`` of each party's rows placed at their batch slots: ``(batch, dim)`` float64.

    ``parts``: per party, ``(slots (n_p,), rows (n_p, dim))``.
    """
    total = np.zeros((batch, dim), dtype=np.float64)
    for slots, rows in parts:
        np.add.at(total, np.asarray(slots, dtype=np.int64), np.asarray(rows, dtype=np.float64))
    return total


def top_step(
    top: TopModel,
    optimizer: torch.optim.Optimizer | None,
    total: np.ndarray | Tensor,
    count: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
) -> tuple[float, np.ndarray]:
    """Cross-entropy of ``head(total / count)`` against ``labels``; steps ``optimizer``
    (None: no step) and returns the loss and ``∂L/∂total`` ``(B, D)`` in the top model's
    dtype."""
    dtype = next(top.parameters()).dtype
    raw = total.detach() if isinstance(total, Tensor) else torch.from_numpy(np.asarray(total))
    t = raw.to(dtype).clone().requires_grad_(True)
    c = torch.as_tensor(np.asarray(count), dtype=torch.int64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    loss = nn.functional.cross_entropy(top(t, c), y)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    assert t.grad is not None
    return float(loss.detach()), t.grad.numpy().copy()


def bottom_backward(
    optimizer: torch.optim.Optimizer | None, embeddings: Tensor, grad: np.ndarray
) -> None:
    """Back-propagate the label holder's ``grad`` ``(n_p, D)`` through the party's
    ``embeddings`` (the graph of its forward pass) and step ``optimizer`` (None: no step)."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    embeddings.backward(torch.as_tensor(np.asarray(grad), dtype=embeddings.dtype))
    if optimizer is not None:
        optimizer.step()
