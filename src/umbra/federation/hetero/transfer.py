"""The unlabeled transfer set of server-side distillation.

Two sources: records of the run's own data source held out from every organisation
(``hetero.transfer = "held-out"``: public data of the same kind, disjoint from every
organisation's records), or any manifest (``hetero.transfer = PATH``), e.g. a synthetic
data set written in the manifest format. Labels are never read. A transfer set must hold
exactly the federation's modalities with the models' feature shapes; anything else is a
:class:`~umbra.errors.DataError` naming the mismatch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.errors import ConfigError, DataError
from umbra.run.prepare import PreparedData, image_features

__all__ = ["check_transfer", "hold_out_transfer", "load_transfer_manifest", "transfer_set"]


def hold_out_transfer(
    prep: PreparedData, n: int, *, seed: int
) -> tuple[PreparedData, MultimodalData]:
    """``n`` training records (uniform, every modality as loaded) removed from the
    organisations' parts: the organisations' data without them, and the transfer set."""
    total = sum(len(p) for p in prep.parts)
    if n >= total:
        raise ConfigError(
            f"hetero.transfer_records = {n} leaves no training records (the organisations "
            f"hold {total})"
        )
    rng = np.random.default_rng([int(seed), 0x7F5E])  # which public records: not a secret
    chosen = np.sort(rng.choice(np.concatenate(prep.parts), size=n, replace=False))
    parts, masks = [], []
    for i, (idx, mask) in enumerate(zip(prep.parts, prep.masks, strict=True)):
        keep = ~np.isin(idx, chosen)
        if not keep.any():
            raise ConfigError(
                f"hetero.transfer_records = {n} takes every record of organisation {i}"
            )
        parts.append(idx[keep])
        masks.append(mask[keep])
    return replace(prep, parts=parts, masks=masks), prep.train.subset(chosen)


def check_transfer(
    data: MultimodalData, shapes: dict[str, tuple[int, ...]], where: str
) -> MultimodalData:
    """``data`` if it holds exactly the modalities of ``shapes`` with those feature shapes."""
    if set(data.modalities) != set(shapes):
        raise DataError(
            f"transfer set {where} holds {list(data.modalities)}; the federation's models "
            f"take {list(shapes)}"
        )
    got = data.feature_shapes()
    bad = [m for m in shapes if tuple(got[m]) != tuple(shapes[m])]
    if bad:
        m = bad[0]
        raise DataError(
            f"transfer set {where}: {m} features of shape {got[m]}, the models take {shapes[m]}"
        )
    if len(data) == 0:
        raise DataError(f"transfer set {where} has no records")
    return data


def load_transfer_manifest(
    path: Path, cfg: Config, shapes: dict[str, tuple[int, ...]]
) -> MultimodalData:
    """A manifest's records as a transfer set, images featurised as the run's are."""
    from umbra.data.manifest import load_manifest

    if not path.is_file():
        raise DataError(f"transfer set {path} does not exist")
    loaded = load_manifest(
        path,
        on_bad_rows=cfg.data.on_bad_rows,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
    )
    data = loaded.data
    if "image" in data.modalities:
        data = image_features(data, cfg)
    return check_transfer(data, shapes, str(path))


def transfer_set(
    cfg: Config, prep: PreparedData, shapes: dict[str, tuple[int, ...]]
) -> tuple[PreparedData, MultimodalData]:
    """The organisations' data and the transfer set ``hetero.transfer`` names."""
    if cfg.hetero.transfer == "held-out":
        kept, transfer = hold_out_transfer(prep, cfg.hetero.transfer_records, seed=cfg.run.seed)
        return kept, check_transfer(transfer, shapes, "held-out")
    return prep, load_transfer_manifest(Path(cfg.hetero.transfer), cfg, shapes)
