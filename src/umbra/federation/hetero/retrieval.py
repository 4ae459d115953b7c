"""Cross-modal retrieval in the shared embedding space: recall@k between two modalities.

For records that hold both modalities a and b, each record's a-embedding queries the
b-embeddings of all of them (cosine similarity); recall@k is the share of queries whose
own record's b-embedding ranks among the top k (Karpathy & Fei-Fei's image-text retrieval
measure, https://arxiv.org/abs/1412.2306). Chance level is ``k / n``; an embedding that
knows each record's class and nothing else scores :func:`class_level_recall` (``k / n_c``
for a class of ``n_c`` records), where a shared classification head puts models trained
without alignment. Used to check that alignment through a pivot modality (text) places
two modalities no organisation holds together in one space (ImageBind, Girdhar et al.
CVPR 2023, https://arxiv.org/abs/2305.05665).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from umbra.federation.train import Batchable
from umbra.models import MultimodalNet

__all__ = ["class_level_recall", "cross_modal_recall", "recall_at_k"]


def recall_at_k(queries: Tensor, gallery: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Share of rows i of ``queries`` ``(N, D)`` whose match ``gallery[i]`` ``(N, D)`` is
    among the k most cosine-similar gallery rows, for each k in ``ks``.

    Ties count against the query (a gallery row as similar as the match ranks above it),
    and so does a non-finite similarity (a diverged model retrieves nothing).
    """
    if queries.dim() != 2 or queries.shape != gallery.shape:
        raise ValueError(
            f"queries and gallery must both be (N, D), got {tuple(queries.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    n = queries.shape[0]
    if n == 0:
        raise ValueError("recall@k needs at least one query")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    sim = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T  # (N, N)
    own = sim.diagonal().unsqueeze(1)  # (N, 1)
    # gallery rows not less similar than the match (NaN compares false: counted), the match
    # excluded
    rank = (~(sim < own)).sum(dim=1) - 1
    return {int(k): float((rank < k).float().mean()) for k in ks}


def class_level_recall(labels: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Expected recall@k of an embedding that ranks a query's own class first, in random
    order, and knows nothing else about a record: the match is among the top k with
    probability ``min(k, n_c) / n_c`` for a class of ``n_c`` records (the match included),
    averaged over the queries ``labels`` ``(N,)``."""
    if labels.dim() != 1 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty (N,) tensor, got {tuple(labels.shape)}")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    n_c = counts[inverse].double()  # (N,) size of each query's class
    return {int(k): float((n_c.clamp(max=k) / n_c).mean()) for k in ks}


@torch.no_grad()
def cross_modal_recall(
    model: MultimodalNet,
    data: Batchable,
    a: str,
    b: str,
    *,
    ks: Sequence[int] = (1, 10),
    limit: int = 1000,
) -> dict[str, float]:
    """``a``->``b`` and ``b``->``a`` recall@k of ``model``'s embeddings over the first
    ``limit`` records of ``data`` that hold both, and their mean.

    Returns ``{"a->b@k": r, "b->a@k": r, "recall@k": mean, "class@k": c, ..., "queries":
    n}``, ``c`` the recall@k that knowing the class alone gives (:func:`class_level_recall`).
    """
    for m in (a, b):
        if m not in model.modalities:
            raise ValueError(f"the model has no {m!r} modality: {list(model.modalities)}")
    model.eval()
    ja, jb = model.modalities.index(a), model.modalities.index(b)
    both = torch.nonzero(data.mask[:, ja] & data.mask[:, jb]).flatten()[:limit]
    if len(both) < 2:
        raise ValueError(f"retrieval needs at least two records holding both {a} and {b}")
    inputs, mask, labels = data.take(both)
    emb = model.embed(inputs, mask)
    fwd = recall_at_k(emb[a], emb[b], ks)
    back = recall_at_k(emb[b], emb[a], ks)
    by_class = class_level_recall(labels, ks)
    out: dict[str, float] = {"queries": float(len(both))}
    for k in ks:
        out[f"{a}->{b}@{k}"] = fwd[k]
        out[f"{b}->{a}@{k}"] = back[k]
        out[f"recall@{k}"] = (fwd[k] + back[k]) / 2
        out[f"class@{k}"] = by_class[k]
    return out
