"""Architecture-grouped averaging: each part of the model is averaged only over the
organisations whose architecture of that part matches.

Organisations may choose their own encoder (or width) for a modality
(``hetero.organisations``). Their models then share some parts and not others: the text
encoder of two organisations that differ only in their image encoder is the same network,
their image encoders are not. The model is cut into parameter groups (one per modality:
its encoder and projection; ``"shared"``: fusion and head); every group carries an
architecture signature (:func:`architecture_signature`), and :func:`grouped_average` runs
the modality-aware mean (:func:`~umbra.federation.strategies.modality.modality_weighted_average`)
separately over each set of organisations with equal signatures. With one architecture for
everybody it is exactly the modality-aware mean. The head is shared whenever the embedding
size is, which is what joins organisations whose encoders differ (FedDF distillation,
:mod:`umbra.federation.hetero.distillation`, does the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from umbra.federation.strategies.modality import modality_weighted_average
from umbra.models.multimodal import SHARED_GROUP, ModelSpec

__all__ = ["architecture_signature", "grouped_average", "signature_groups"]


def architecture_signature(spec: ModelSpec) -> dict[str, str]:
    """Parameter group -> a string equal for two models exactly when that group's
    networks are the same architecture (same encoder, input shape and widths).

    Groups are the spec's modalities and ``"shared"`` (fusion and head, which depend on
    the embedding size and the classes only).
    """
    out = {
        m: f"{spec.encoders.get(m, m)}|in={shape}|hidden={spec.hidden}|embed={spec.embed_dim}"
        f"|dropout={spec.dropout}"
        for m, shape in spec.input_shapes.items()
    }
    out[SHARED_GROUP] = f"head|embed={spec.embed_dim}|classes={spec.num_classes}"
    return out


def signature_groups(signatures: Sequence[Mapping[str, str]], group: str) -> list[list[int]]:
    """Indices of the organisations sharing each architecture of ``group``, in order of
    first appearance (an organisation whose model lacks the group is in none)."""
    found: dict[str, list[int]] = {}
    for i, sig in enumerate(signatures):
        if group in sig:
            found.setdefault(sig[group], []).append(i)
    return list(found.values())


def grouped_average(
    arrays: Sequence[Mapping[str, np.ndarray]],
    counts: Sequence[Mapping[str, float]],
    key_modality: Callable[[str], str | None],
    signatures: Sequence[Mapping[str, str]],
    previous: Sequence[Mapping[str, np.ndarray]],
) -> list[dict[str, np.ndarray]]:
    """Each organisation's new model: every parameter group averaged over the
    organisations with the same architecture of that group.

    Args:
        arrays: one mapping per organisation, name -> array (its own model's names).
        counts: one mapping per organisation with ``num-examples`` and ``n-<modality>``.
        key_modality: name -> modality, or None for shared parameters.
        signatures: one :func:`architecture_signature` per organisation.
        previous: each organisation's current model, kept for a modality nobody in its
            group holds this round.

    Returns:
        One mapping per organisation, name -> averaged array; equal for organisations
        with equal signatures.
    """
    n = len(arrays)
    if n == 0:
        raise ValueError("arrays: need at least one organisation")
    if not len(counts) == len(signatures) == len(previous) == n:
        raise ValueError(
            f"arrays ({n}), counts ({len(counts)}), signatures ({len(signatures)}) and "
            f"previous ({len(previous)}) differ in length"
        )
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    group_names = {g for sig in signatures for g in sig}
    for group in sorted(group_names):
        for members in signature_groups(signatures, group):
            keys = [k for k in arrays[members[0]] if (key_modality(k) or SHARED_GROUP) == group]
            if not keys:
                continue
            shapes = {k: np.shape(arrays[members[0]][k]) for k in keys}
            for i in members:
                bad = [k for k in keys if k not in arrays[i] or np.shape(arrays[i][k]) != shapes[k]]
                if bad:
                    raise ValueError(
                        f"organisation {i} has the architecture of group {group!r} but "
                        f"other shapes for {bad[:3]}"
                    )
            averaged = modality_weighted_average(
                [{k: arrays[i][k] for k in keys} for i in members],
                [counts[i] for i in members],
                key_modality,
                {k: previous[members[0]][k] for k in keys if k in previous[members[0]]},
            )
            for i in members:
                out[i].update({k: v.copy() for k, v in averaged.items()})
    return out
