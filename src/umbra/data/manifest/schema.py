"""The data schema a federation agrees on, and an organisation's records fitted to it.

Every organisation of a manifest federation builds its model from the same public
schema: the class names in class-index order, the modalities, and the ``tab:`` columns in
feature order (the feature shapes follow from these: images are ``IMAGE_SHAPE``, audio the
speech log-mel, text the sentence embedding, tabular one value per column). The run config
carries it as ``data.labels``, ``data.modalities`` and ``data.tabular_columns``; no record
and no statistic of any organisation is in it.

:func:`check_manifest` refuses, in one line naming the file, a manifest that does not fit
(a label outside the vocabulary, a column the schema lacks, other ``tab:`` columns),
before any file is decoded. :func:`fit_to_schema` then gives the loaded records the
schema's modalities and column order: a modality the organisation lacks is missing in
every one of its records, and a class it lacks keeps its index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umbra.data.dataset import MODALITIES, MultimodalData
from umbra.data.manifest.load import IMAGE_SHAPE
from umbra.data.manifest.table import TAB_PREFIX, modality_columns, natural_order, read_table
from umbra.errors import DataError

__all__ = ["DataSchema", "check_manifest", "fit_to_schema", "modality_shape"]


@dataclass(frozen=True)
class DataSchema:
    """What every organisation of a federation builds its model from (public).

    Attributes:
        labels: class names in class-index order.
        modalities: the model's modalities, in canonical order (:data:`MODALITIES`).
        tabular_columns: the ``tab:`` column names in feature order (empty without tabular).
    """

    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    tabular_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct and non-empty, got {list(self.labels)}")
        if not self.modalities or set(self.modalities) - set(MODALITIES):
            raise ValueError(f"modalities must be some of {MODALITIES}, got {self.modalities}")
        canonical = tuple(m for m in MODALITIES if m in self.modalities)
        object.__setattr__(self, "modalities", canonical)
        if ("tabular" in self.modalities) != bool(self.tabular_columns):
            raise ValueError("tabular_columns are given exactly when modalities has tabular")

    @classmethod
    def of_manifest(cls, path: Path) -> DataSchema:
        """The schema of a manifest's cells (labels sorted as the loader sorts them)."""
        table = read_table(Path(path))
        columns = modality_columns(table.columns)
        return cls(
            labels=natural_order(v for v in table.cells["label"] if v),
            modalities=tuple(columns),
            tabular_columns=tuple(columns.get("tabular", ())),
        )

    def overrides(self) -> list[str]:
        """The ``--set`` assignments that declare this schema in a run config."""
        out = [
            f"data.labels={json.dumps(list(self.labels))}",
            f"data.modalities={json.dumps(list(self.modalities))}",
        ]
        if self.tabular_columns:
            out.append(f"data.tabular_columns={json.dumps(list(self.tabular_columns))}")
        return out


def modality_shape(modality: str, schema: DataSchema) -> tuple[int, ...]:
    """The feature shape of ``modality`` in a manifest's records (before
    ``data.image_features``)."""
    if modality == "image":
        return IMAGE_SHAPE
    if modality == "audio":
        from umbra.data.sources.speech import AUDIO_SHAPE

        return AUDIO_SHAPE
    if modality == "text":
        from umbra.data.sources.text import TEXT_DIM

        return (TEXT_DIM,)
    if modality == "tabular":
        return (len(schema.tabular_columns),)
    raise ValueError(f"unknown modality {modality!r}")


def check_manifest(path: Path, schema: DataSchema) -> None:
    """Refuse (one-line `DataError` naming ``path``) a manifest that does not fit ``schema``:
    a modality column the schema lacks, ``tab:`` columns other than the schema's (a
    manifest without any is fine: its records lack tabular values), or a label outside
    the vocabulary. A modality or class the manifest lacks is fine. Reads the cells only.
    """
    table = read_table(Path(path))
    columns = modality_columns(table.columns)
    extra = [c for m, cs in columns.items() if m not in schema.modalities for c in cs]
    if extra:
        raise DataError(
            f"manifest {path}: column(s) {extra} are not in the federation's data.modalities "
            f"{list(schema.modalities)}; drop them"
        )
    tab = columns.get("tabular", [])
    if tab and set(tab) != set(schema.tabular_columns):
        raise DataError(
            f"manifest {path} has {len(tab)} {TAB_PREFIX} column(s) {tab}; the federation's "
            f"data.tabular_columns has {len(schema.tabular_columns)}: "
            f"{list(schema.tabular_columns)}"
        )
    known = set(schema.labels)
    unknown = natural_order({v for v in table.cells["label"] if v and v not in known})
    if unknown:
        raise DataError(
            f"manifest {path}: label(s) {list(unknown[:5])}{' ...' * (len(unknown) > 5)} "
            f"are not in the federation's data.labels {list(schema.labels)}"
        )


def fit_to_schema(
    data: MultimodalData, tabular_columns: tuple[str, ...], schema: DataSchema
) -> MultimodalData:
    """``data`` (a manifest's records, labels already indexing ``schema.labels``) with the
    schema's modalities in its order and its ``tab:`` column order; a modality ``data``
    lacks is all zeros and absent in every record."""
    if tuple(data.class_names) != schema.labels:
        raise ValueError("data's class names are not the schema's labels")
    n = len(data)
    features: dict[str, np.ndarray] = {}
    present: list[np.ndarray] = []
    for m in schema.modalities:
        if m not in data.modalities:
            features[m] = np.zeros((n, *modality_shape(m, schema)), dtype=np.float32)
            present.append(np.zeros(n, dtype=bool))
            continue
        x = data.features[m]
        if m == "tabular" and tabular_columns != schema.tabular_columns:
            x = x[:, [tabular_columns.index(c) for c in schema.tabular_columns]]
        features[m] = x
        present.append(data.mask[:, data.modality_index(m)])
    mask = np.stack(present, axis=1)  # (N, M)
    return MultimodalData(features, mask, data.labels, schema.modalities, schema.labels, data.ids)
