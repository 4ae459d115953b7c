"""The on-disk layout a client reads its records from (one folder per federation).

``write_federation_data`` stores the pooled features once as ``.npy`` files (memory-mapped
by every client process) plus each client's row indices and presence mask; a client reads
only its own rows. On real machines each organisation holds a folder of the same layout
with only its own records (partition 0).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from umbra.data.dataset import MultimodalData
from umbra.federation.train import Batchable

__all__ = ["client_records", "load_client_data", "load_pooled", "write_federation_data"]

#: Clients whose records one process keeps ready between rounds (a simulation actor serves
#: several clients; a SuperNode serves one).
CACHED_CLIENTS = 8


def write_federation_data(
    folder: Path, data: MultimodalData, parts: list[np.ndarray], masks: list[np.ndarray]
) -> None:
    """Write pooled features plus per-client indices and masks into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for m in data.modalities:
        np.save(folder / f"features_{m}.npy", np.ascontiguousarray(data.features[m]))
    np.save(folder / "labels.npy", data.labels)
    arrays = {f"idx_{i}": p for i, p in enumerate(parts)}
    arrays.update({f"mask_{i}": mk for i, mk in enumerate(masks)})
    np.savez(folder / "partition.npz", **arrays)  # type: ignore[arg-type]
    meta = {
        "modalities": list(data.modalities),
        "class_names": list(data.class_names),
        "num_clients": len(parts),
    }
    (folder / "meta.json").write_text(json.dumps(meta))


@lru_cache(maxsize=2)
def load_pooled(folder: str) -> tuple[MultimodalData, dict[str, np.ndarray]]:
    """Memory-mapped pooled features and the partition arrays (cached per process)."""
    root = Path(folder)
    meta = json.loads((root / "meta.json").read_text())
    mods = tuple(meta["modalities"])
    feats = {m: np.load(root / f"features_{m}.npy", mmap_mode="r") for m in mods}
    labels = np.load(root / "labels.npy")
    part = dict(np.load(root / "partition.npz"))
    mask = np.ones((len(labels), len(mods)), dtype=bool)
    data = MultimodalData(feats, mask, labels, mods, tuple(meta["class_names"]))
    return data, part


def load_client_data(folder: str, client: int) -> MultimodalData:
    """Client ``client``'s records with its presence mask (absent features zeroed)."""
    pooled, part = load_pooled(folder)
    idx = part[f"idx_{client}"]
    return pooled.subset(idx).with_mask(part[f"mask_{client}"])


def client_records(folder: str, client: int) -> tuple[MultimodalData, Batchable]:
    """Client ``client``'s records and their tensors, kept per process between rounds.

    Loading, masking and converting 6,000 records costs about 100 ms, more than a DP-SGD
    step; the cache is keyed by the partition file's modification time, so a folder written
    again is read again.
    """
    stamp = (Path(folder) / "partition.npz").stat().st_mtime_ns
    return _client_records(folder, client, stamp)


@lru_cache(maxsize=CACHED_CLIENTS)
def _client_records(folder: str, client: int, stamp: int) -> tuple[MultimodalData, Batchable]:
    data = load_client_data(folder, client)
    return data, Batchable.from_data(data)
