"""The synthetic data set on disk: every record's features, and the rendered images as a
manifest.

Folder layout (``umbra synth DIR --out OUT``):

================  ========================================================================
``features.npz``  ``ids``, ``labels``, ``mask`` (N, M), ``modalities``, ``class_names`` and
                  one ``(N, *shape)`` array per modality in the run's feature space
                  (zeros where the mask says missing); :func:`load_synthetic` reads it
``manifest.csv``  a manifest (docs/data.md) of the records whose image was rendered:
                  ``id``, ``label`` (class name), ``image`` (``images/<id>.png``)
``images/``       the rendered PNG files
================  ========================================================================

No array is pickled; numbers only.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from umbra.data.dataset import MultimodalData
from umbra.errors import DataError

__all__ = ["FEATURES_FILE", "load_synthetic", "save_synthetic", "write_image_manifest"]

FEATURES_FILE = "features.npz"


def save_synthetic(data: MultimodalData, folder: Path) -> Path:
    """Write ``data`` (ids ``s000000``, ...) as ``folder/features.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"s{i:06d}" for i in range(len(data))])
    path = folder / FEATURES_FILE
    arrays: dict[str, np.ndarray] = {
        "ids": ids,
        "labels": data.labels,
        "mask": data.mask,
        "modalities": np.array(data.modalities),
        "class_names": np.array(data.class_names),
    }
    for m in data.modalities:
        arrays[f"features.{m}"] = np.asarray(data.features[m], dtype=np.float32)
    np.savez_compressed(path, allow_pickle=False, **arrays)
    return path


def load_synthetic(folder: Path) -> MultimodalData:
    """The records :func:`save_synthetic` wrote into ``folder``.

    Raises:
        DataError: no ``features.npz`` there, or one that is not a synthetic set.
    """
    path = Path(folder) / FEATURES_FILE
    if not path.exists():
        raise DataError(f"{folder} holds no synthetic data set (no {FEATURES_FILE})")
    try:
        with np.load(path, allow_pickle=False) as z:
            modalities = tuple(str(m) for m in z["modalities"])
            return MultimodalData(
                features={m: z[f"features.{m}"] for m in modalities},
                mask=z["mask"].astype(bool),
                labels=z["labels"].astype(np.int64),
                modalities=modalities,
                class_names=tuple(str(c) for c in z["class_names"]),
                ids=z["ids"],
            )
    except (KeyError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a synthetic data set ({err})") from None


def write_image_manifest(
    folder: Path, ids: list[str], labels: list[str], images: list[Path]
) -> Path:
    """``folder/manifest.csv`` listing the rendered images (paths relative to ``folder``)."""
    path = folder / "manifest.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "image"])
        for i, y, p in zip(ids, labels, images, strict=True):
            writer.writerow([i, y, p.relative_to(folder).as_posix()])
    return path
