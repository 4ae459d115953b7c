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
    pair_losses: list[tuple[Tensor, Tensor]] = []  # (records index (n,), per-record loss (n,))
    for a, b in itertools.combinations(range(len(mods)), 2):
        rows = torch.nonzero(mask[:, a] & mask[:, b]).squeeze(1)  # (n,)
        if rows.numel() < 2:
            continue
        za = F.normalize(embeddings[mods[a]][rows], dim=1)  # (n, D)
        zb = F.normalize(embeddings[mods[b]][rows], dim=1)  # (n, D)
        sim = za @ zb.T / temperature  # (n, n)
        target = torch.arange(rows.numel(), device=sim.device)
        per_record = 0.5 * (
            F.cross_entropy(sim, target, reduction="none")
            + F.cross_entropy(sim.T, target, reduction="none")
        )  # (n,)
        pair_losses.append((rows, per_record))
    if not pair_losses:
        zero = first.new_zeros(())
        return zero if reduction == "mean" else first.new_zeros((batch,))
    if reduction == "mean":
        return torch.stack([loss.mean() for _, loss in pair_losses]).mean()
    shares = first.new_zeros((batch,))
    scale = batch / len(pair_losses)
    for rows, loss in pair_losses:
        shares = shares.index_add(0, rows, loss * (scale / rows.numel()))
    return shares


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
