"""Training losses: cross-entropy on the fused logits plus cross-modal InfoNCE alignment.

The alignment term is the symmetric InfoNCE loss of CLIP (Radford et al., 2021,
https://arxiv.org/abs/2103.00020), applied to every pair of modalities over the records that
hold both: a record's image embedding should be closer (cosine similarity / temperature) to
its own text embedding than to the text embeddings of the other records in the batch, and
vice versa.

**DP caveat.** InfoNCE couples the records of a batch (each record's loss has the other
records as negatives), so its "per-sample" gradients are not functions of one record alone
and the per-example sensitivity argument of DP-SGD does not cover them. Under example-level
DP pass ``dp_safe=True`` to :func:`multimodal_loss` (alignment off; cross-entropy is exactly
per-sample). Client-level DP, which clips a whole client update, is unaffected.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Reduction", "info_nce", "multimodal_loss"]

Reduction = Literal["mean", "none"]
_REDUCTIONS = ("mean", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def info_nce(
    embeddings: dict[str, Tensor],
    mask: Tensor,
    temperature: float = 0.1,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """Symmetric InfoNCE between the modalities of each record, averaged over modality pairs.

    For every pair (a, b) of modalities, over the ``n`` records holding both (pairs with
    ``n < 2`` have no negatives and are skipped): ``S = norm(z_a) @ norm(z_b).T / temperature``
    and ``loss_ab = (CE(S, diag) + CE(S.T, diag)) / 2`` averaged over the ``n`` records.

    Args:
        embeddings: modality -> ``(B, D)``, keys in the order of ``mask``'s columns.
        mask: ``(B, M)`` bool presence mask.
        temperature: softmax temperature, > 0 (0.07-0.1 is usual).
        reduction: ``"mean"``: the mean over usable pairs of each pair's mean (CLIP's loss).
            ``"none"``: ``(B,)`` per-record shares, scaled so that their mean equals the
            ``"mean"`` value (record i of pair p gets ``loss_p,i * B / (n_p * P)``); records in
            no usable pair get 0. The shares still depend on the other records (see module doc).

    Returns:
        A scalar (or ``(B,)``); zero when no pair of modalities has two records holding both.
    """
    _check_reduction(reduction)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mods = list(embeddings)
    if mask.dim() != 2 or mask.shape[1] != len(mods) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a (B, {len(mods)}) bool tensor matching the embeddings,"
            f" got {mask.dtype} {tuple(mask.shape)}"
        )
    first = embeddings[mods[0]]
    batch = mask.shape[0]
    pairs = list(itertools.combinations(range(len(mods)), 2))
    if not pairs or batch < 2:
        return first.new_zeros(()) if reduction == "mean" else first.new_zeros((batch,))
    # All pairs at once (one bmm, no per-pair gathers): a record outside a pair is masked out
    # of that pair's rows (no loss) and columns (no negative). Same values as looping over the
    # pairs on the records holding both; the batched form runs ~3x fewer small kernels.
    z = F.normalize(torch.stack([embeddings[m] for m in mods]), dim=2)  # (M, B, D)
    ia = torch.tensor([a for a, _ in pairs], device=z.device)
    ib = torch.tensor([b for _, b in pairs], device=z.device)
    both = mask[:, ia] & mask[:, ib]  # (B, P)
    valid = both.T  # (P, B)
    n = valid.sum(dim=1)  # (P,) records per pair
    sim = torch.bmm(z[ia], z[ib].transpose(1, 2)) / temperature  # (P, B, B)
    # exp(-inf) = 0, but a row with no valid column would be NaN: a large finite value
    # underflows to exactly 0 in the softmax and keeps every entry finite.
    hide = torch.finfo(sim.dtype).min / 4
    rows_ok = valid.unsqueeze(2)  # (P, B, 1)
    cols_ok = valid.unsqueeze(1)  # (P, 1, B)
    diag = torch.diagonal
    ce_ab = -diag(torch.log_softmax(sim.masked_fill(~cols_ok, hide), dim=2), dim1=1, dim2=2)
    ce_ba = -diag(torch.log_softmax(sim.masked_fill(~rows_ok, hide), dim=1), dim1=1, dim2=2)
    per_record = torch.where(valid, 0.5 * (ce_ab + ce_ba), torch.zeros_like(ce_ab))  # (P, B)
    usable = n >= 2  # pairs with a single record have no negatives: skipped
    n_pairs = int(usable.sum())
    if n_pairs == 0:
        return first.new_zeros(()) if reduction == "mean" else first.new_zeros((batch,))
    count = n.to(z.dtype)
    weight = torch.where(usable, 1.0 / count.clamp(min=1.0), torch.zeros_like(count))
    if reduction == "mean":
        return (per_record.sum(dim=1) * weight).sum() / n_pairs
    return (per_record * weight.unsqueeze(1)).sum(dim=0) * (batch / n_pairs)


def multimodal_loss(
    logits: Tensor,
    labels: Tensor,
    embeddings: dict[str, Tensor],
    mask: Tensor,
    *,
    align_weight: float,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
    dp_safe: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy on the fused logits plus ``align_weight`` x :func:`info_nce`.

    Args:
        logits: ``(B, C)`` fused logits; labels: ``(B,)`` int64 in ``[0, C)``.
        embeddings, mask: as returned by / fed to ``MultimodalNet.forward_with_embeddings``.
        align_weight: weight of the alignment term, >= 0 (0 switches it off).
        temperature: InfoNCE temperature, > 0.
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(B,)`` per-record losses for
            per-sample gradients; their mean equals the ``"mean"`` value).
        dp_safe: leave the batch-coupling alignment term out whatever ``align_weight`` is, so
            that per-record losses depend on their own record only (example-level DP-SGD).

    Returns:
        ``(total, parts)``; ``parts`` holds the batch means ``{"ce", "align", "total"}`` as floats.
    """
    _check_reduction(reduction)
    if align_weight < 0:
        raise ValueError(f"align_weight must be >= 0, got {align_weight}")
    ce = F.cross_entropy(logits, labels, reduction=reduction)
    if align_weight > 0 and not dp_safe:
        align = info_nce(embeddings, mask, temperature, reduction=reduction)
        total = ce + align_weight * align
    else:
        align = torch.zeros_like(ce)
        total = ce
    parts = {
        "ce": float(ce.detach().mean()),
        "align": float(align.detach().mean()),
        "total": float(total.detach().mean()),
    }
    return total, parts
