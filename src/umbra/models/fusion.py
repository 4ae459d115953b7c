"""Masked late fusion of per-modality embeddings, and modality dropout.

Each modality's encoder output is projected into one shared ``embed_dim``-wide space; a
record's fused embedding is the mean of the projected embeddings of the modalities it
actually holds. Absent modalities enter through ``torch.where`` (not a multiplication), so a
record's output is bit-for-bit independent of whatever its missing features contain, even
non-finite values.

Modality dropout (randomly hiding present modalities during training, as in ModDrop,
Neverova et al., 2015, https://arxiv.org/abs/1501.00102) teaches the fused head to cope
with any subset of modalities at test time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MaskedMeanFusion", "masked_mean", "modality_dropout"]


def masked_mean(embeddings: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``embeddings`` over the modalities flagged in ``mask``.

    Args:
        embeddings: ``(B, M, D)`` per-modality embeddings.
        mask: ``(B, M)`` bool, True where the record holds the modality.

    Returns:
        ``(B, D)``. A record with no modality at all gets the zero vector (no data-dependent
        branching, so this stays usable under ``torch.func.vmap``).
    """
    if embeddings.dim() != 3 or mask.shape != embeddings.shape[:2]:
        raise ValueError(
            f"need embeddings (B, M, D) and mask (B, M); got {tuple(embeddings.shape)}"
            f" and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    keep = mask.unsqueeze(-1)  # (B, M, 1)
    total = torch.where(keep, embeddings, torch.zeros_like(embeddings)).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(embeddings.dtype)  # (B, 1)
    return total / count


class MaskedMeanFusion(nn.Module):
    """Parameter-free fusion module: :func:`masked_mean` over the modality axis."""

    def forward(self, embeddings: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(embeddings, mask)


def modality_dropout(mask: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Hide each present modality with probability ``p``, keeping at least one per record.

    Each present cell is dropped independently with probability ``p``; in a record where
    every present modality was dropped, one of them, chosen uniformly, is put back. The
    effective drop rate of a record with ``k`` present modalities is therefore
    ``p - p**k / k`` (below ``p`` for small ``k``; a record with one modality keeps it).
    Records with no modality stay empty. Never adds a modality.

    Args:
        mask: ``(B, M)`` bool presence mask.
        p: drop probability, in [0, 1]; 1 keeps exactly one random modality per record.
        generator: torch random generator for reproducibility (training noise, not secrets).

    Returns:
        A new ``(B, M)`` bool mask, a subset of ``mask``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, M) bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    if p == 0.0:
        return mask.clone()
    drop = torch.rand(mask.shape, generator=generator, device=mask.device) < p
    kept = mask & ~drop
    emptied = mask.any(dim=1) & ~kept.any(dim=1)  # (B,)
    # One uniformly chosen present modality per record: argmax of uniform scores over present cells.
    scores = torch.rand(mask.shape, generator=generator, device=mask.device)
    scores = torch.where(mask, scores, torch.full_like(scores, -1.0))
    restore = nn.functional.one_hot(scores.argmax(dim=1), mask.shape[1]).bool()  # (B, M)
    return kept | (restore & emptied.unsqueeze(1))
