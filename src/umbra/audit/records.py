"""Which records the membership audit asks about, and which the shadow models learn from.

Members are training records of the run, sampled from the union of the organisations'
partitions with the presence masks those organisations trained on (re-derived from the
run's config and seed by :func:`umbra.run.prepare.prepare_data`, as the run made them).
Non-members are held-out records the model never saw. The shadow pool is disjoint from
every audited record: the shadows are OUT models for all of them (offline LiRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from umbra.config import AuditConfig, Config
from umbra.data.dataset import MultimodalData
from umbra.errors import DataError
from umbra.run.prepare import PreparedData

__all__ = ["AuditRecords", "audit_records"]


@dataclass(frozen=True)
class AuditRecords:
    """The audited records and the shadow pool, each with the masks the model is queried
    with; ``origin`` says in words where each set came from (for results.json)."""

    members: MultimodalData
    non_members: MultimodalData
    shadow_pool: MultimodalData
    origin: dict[str, str]


def _held_out_masks(cfg: Config, test: MultimodalData, rng: np.random.Generator) -> np.ndarray:
    """Presence masks for held-out records drawn as the run drew its members' (the same
    per-record missing rates), so that no attack can tell the sides apart by which
    modalities a record holds. A manifest's empty cells are its own missingness: kept."""
    if cfg.data.source == "manifest" or not cfg.data.missing:
        return test.mask.copy()
    from umbra.data.partition import apply_missing

    rates = np.array([cfg.data.missing.get(m, 0.0) for m in test.modalities])
    return apply_missing(test.mask, rates=rates, seed=int(rng.integers(2**31)))


def audit_records(
    prep: PreparedData, cfg: Config, audit: AuditConfig, rng: np.random.Generator
) -> AuditRecords:
    """Draw up to ``audit.records`` members and as many non-members, and the shadow pool
    (``audit.shadow_data``: the held-out records not drawn as non-members, or the training
    records not drawn as members). ``rng`` drives only these non-private choices."""
    pooled_idx = np.concatenate(prep.parts)
    pooled_mask = np.concatenate(prep.masks)

    def training(sel: np.ndarray) -> MultimodalData:  # the chosen training records, as trained
        return prep.train.subset(pooled_idx[sel]).with_mask(pooled_mask[sel])

    held = prep.test.with_mask(_held_out_masks(cfg, prep.test, rng))
    n_members = min(audit.records, len(pooled_idx))
    m_order = rng.permutation(len(pooled_idx))
    h_order = rng.permutation(len(held))
    if audit.shadow_data == "held-out":
        n_non = min(audit.records, len(held) // 2)
        pool = held.subset(h_order[n_non:])
        pool_origin = (
            f"{len(pool)} held-out records not used as non-members (disjoint from every "
            "member of the run)"
        )
    else:
        n_non = min(audit.records, len(held))
        pool = training(m_order[n_members:])
        pool_origin = (
            f"{len(pool)} training records of the run not under audit (disjoint from the "
            "audited members)"
        )
    if n_non < 1 or len(pool) < 2:
        raise DataError(
            f"too few held-out records ({len(held)}) for a membership audit with "
            f"audit.shadow_data = {audit.shadow_data!r}"
        )
    source = "Fashion-MNIST t10k" if cfg.data.source == "fmnist-avt" else cfg.data.source
    return AuditRecords(
        members=training(m_order[:n_members]),
        non_members=held.subset(h_order[:n_non]),
        shadow_pool=pool,
        origin={
            "members": f"{n_members} of the {len(pooled_idx)} training records of the "
            f"{len(prep.parts)} organisations, with the modalities each trained on",
            "non_members": f"{n_non} held-out {source} records the model never saw"
            + (
                ", modalities dropped at the run's per-record missing rates"
                if cfg.data.source != "manifest" and cfg.data.missing
                else ""
            ),
            "shadow_pool": pool_origin,
        },
    )
