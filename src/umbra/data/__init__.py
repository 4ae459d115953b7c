"""The data layer: the in-memory multimodal data set, sources, partitioners, caching."""

from __future__ import annotations

from umbra.data.cache import default_cache_dir
from umbra.data.dataset import MODALITIES, MultimodalData, modality_subsets
from umbra.data.partition import (
    PARTITIONERS,
    absent_modalities,
    apply_missing,
    label_skew,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
    register_partitioner,
)
from umbra.data.sources import load_fmnist_avt, make_synthetic

__all__ = [
    "MODALITIES",
    "PARTITIONERS",
    "MultimodalData",
    "absent_modalities",
    "apply_missing",
    "default_cache_dir",
    "label_skew",
    "load_fmnist_avt",
    "make_synthetic",
    "modality_subsets",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity",
    "register_partitioner",
]
