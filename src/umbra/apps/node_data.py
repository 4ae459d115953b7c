"""A SuperNode's records from its own manifest, prepared once and kept in its state folder.

A node whose ``--node-config`` names ``manifest`` reads that file itself: it checks the
file against the schema the run config declares (`umbra.data.manifest.check_manifest`:
one line naming the file for a label outside ``data.labels``, a column the schema lacks,
other ``tab:`` columns), loads it with the feature cache of a local run, fits the records
to the schema (a modality it lacks is missing, a class it lacks keeps its index), scales
its tabular values as ``data.tabular_stats`` says and turns images into the configured
features, with the coordinator's own functions (`umbra.run.prepare`). Nothing of another
organisation enters it.

The ClientApp is a fresh process per message, so the prepared records are written once
(the layout of `umbra.federation.client_data`, one partition) into
``<state root>/client_<partition-id>/records/<key>``; ``key`` hashes the manifest's bytes,
the size and modification time of every media file it names, the schema and the settings
that shape the features. Later messages find the folder and memory-map it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.data.manifest import DataSchema, check_manifest, fit_to_schema, load_manifest
from umbra.data.manifest.table import read_table
from umbra.errors import ConfigError, DataError
from umbra.federation.client_data import write_federation_data
from umbra.run.prepare import (
    declared_schema,
    image_features,
    scale_own_tabular,
    text_token_length,
)

__all__ = ["RECORDS_VERSION", "node_schema", "own_records", "prepared_records"]

#: Bumped when the same manifest and settings give other prepared records.
RECORDS_VERSION = 1


def node_schema(cfg: Config) -> DataSchema:
    """The schema the run config declares; a node reading its own manifest needs one."""
    schema = declared_schema(cfg)
    if schema is None:
        raise ConfigError(
            "node config manifest: the run config declares no data schema; set data.labels "
            "and data.modalities (umbra data schema MANIFEST prints them)"
        )
    return schema


def own_records(cfg: Config, manifest: Path) -> MultimodalData:
    """This organisation's records from ``manifest``, prepared as the coordinator prepares
    a partition (the checks of the module docstring first)."""
    schema = node_schema(cfg)
    check_manifest(manifest, schema)
    md = load_manifest(
        manifest,
        on_bad_rows=cfg.data.on_bad_rows,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
        label_names=schema.labels,
        text_tokens=text_token_length(cfg),
    )
    data = fit_to_schema(md.data, md.tabular_columns, schema)
    data = scale_own_tabular(cfg, data, schema.tabular_columns, manifest.parent)
    return image_features(data, cfg)


def _records_key(cfg: Config, manifest: Path, schema: DataSchema) -> str:
    """Hash of what the prepared records depend on (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(manifest.read_bytes())
    table = read_table(manifest)
    root = manifest.parent
    for column in ("image", "audio"):
        for cell in table.cells.get(column, ()):
            if cell:
                try:
                    st = (root / cell).stat()
                    h.update(f"{cell}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{cell}\0missing\n".encode())  # the loader reports it
    d = cfg.data
    settings = {"version": RECORDS_VERSION, "labels": schema.labels,
                "modalities": schema.modalities, "tabular": schema.tabular_columns,
                "stats": d.tabular_stats, "images": d.image_features,
                "bad_rows": d.on_bad_rows, "privacy": cfg.privacy.mode}  # fmt: skip
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def prepared_records(cfg: Config, manifest: Path, folder: Path) -> Path:
    """The folder (under ``folder``) holding the prepared records of ``manifest``: found,
    or prepared and written now (other keys' folders there are removed)."""
    if not manifest.is_file():
        raise DataError(f"node config manifest = {str(manifest)!r} does not exist or is not a file")
    if not os.access(manifest, os.R_OK):
        raise DataError(f"node config manifest = {str(manifest)!r} is not readable")
    schema = node_schema(cfg)
    out = folder / _records_key(cfg, manifest, schema)
    if (out / "meta.json").is_file():
        return out
    data = own_records(cfg, manifest)
    tmp = folder / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_federation_data(tmp, data, [np.arange(len(data))], [data.mask])
    try:
        tmp.rename(out)
    except OSError:  # another process of this node wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    for old in folder.iterdir():  # earlier versions of this node's manifest
        if old.name != out.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return out
