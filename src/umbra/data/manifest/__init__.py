"""Bring-your-own multimodal data: the manifest loader.

A manifest is a CSV or Parquet file with one row per record:

==============  ==========================================================================
column          meaning
==============  ==========================================================================
``label``       required; the class name (any string; integers are fine)
``id``          optional; a record id, unique within the manifest
``client``      optional; the organisation that holds the record (else the partitioner
                assigns records to clients)
``image``       path to a PNG or JPEG file, any size and colour mode
``audio``       path to a WAV file, any sample rate, mono or multi-channel
``text``        a string (embedded with the bundled all-MiniLM-L6-v2 sentence encoder)
``tab:<name>``  a number (one column per tabular feature, e.g. ``tab:heart_rate``)
==============  ==========================================================================

An empty cell is a missing modality. Paths are relative to the manifest's folder and must
stay inside it: a path that escapes it (``../x.png``, an absolute path elsewhere, a symlink
pointing out) is refused, so a manifest cannot make Umbra read arbitrary files.

Everything is validated before any training starts, and every bad row is reported at once
(row, column, reason) in one :class:`ManifestError`; with ``on_bad_rows="skip"`` the bad rows
are dropped and counted instead. Image and audio features are cached by the content hash
(BLAKE2b) of the file bytes, in one ``.npz`` pack per modality and feature configuration;
text embeddings by the text source's own store (keyed by the SHA-256 of the text). A second
load therefore only reads and hashes the files.

Modules, one job each: :mod:`~umbra.data.manifest.table` (reading CSV/Parquet),
:mod:`~umbra.data.manifest.rows` (cell validation), :mod:`~umbra.data.manifest.paths`
(paths kept inside the folder), :mod:`~umbra.data.manifest.media` (image/audio decoding),
:mod:`~umbra.data.manifest.features` and :mod:`~umbra.data.manifest.feature_cache`
(featurizers and the content-hash cache), :mod:`~umbra.data.manifest.load`
(:func:`load_manifest`), :mod:`~umbra.data.manifest.tabular` (moments and
standardisation), :mod:`~umbra.data.manifest.inspect` (counts for ``umbra data inspect``),
:mod:`~umbra.data.manifest.schema` (the labels, modalities and columns a federation agrees
on, and records fitted to them), :mod:`~umbra.data.manifest.subset` (some records written
out as a manifest of their own) and :mod:`~umbra.data.manifest.problems` (bad rows and
:class:`ManifestError`).

Tabular values are returned raw. Standardisation must not pool raw values across
organisations, so it is offered as pure functions on one partition:
:func:`standardize_tabular` with the partition's own statistics (per-client
standardisation), and :func:`tabular_moments` / :class:`TabularMoments` — (count, sum, sum of
squares) per client — whose sums can be aggregated securely and fed back to
:func:`standardize_tabular` as global statistics.

Under differential privacy neither is allowed: statistics computed from the records make
every record's standardised features depend on every other record's, so one record's
clipped gradient no longer bounds its influence (the sensitivity argument of DP-SGD,
Abadi et al. 2016, https://arxiv.org/abs/1607.00133, assumes each example's gradient is a
function of that example alone). :func:`public_moments` turns statistics the user declares
public (:func:`read_tabular_stats`) into fixed moments instead, and ``"identity"`` uses the
values as given.
"""

from umbra.data.manifest.feature_cache import FeatureCache
from umbra.data.manifest.inspect import ManifestSummary, inspect_manifest, summarize_manifest
from umbra.data.manifest.load import IMAGE_SHAPE, ManifestData, client_indices, load_manifest
from umbra.data.manifest.media import decode_audio, decode_image
from umbra.data.manifest.problems import MAX_REPORTED_ROWS, ON_BAD_ROWS, BadRow, ManifestError
from umbra.data.manifest.schema import DataSchema, check_manifest, fit_to_schema, modality_shape
from umbra.data.manifest.subset import MANIFEST_NAME, write_manifest_subset
from umbra.data.manifest.tabular import (
    TabularMoments,
    moments_by_client,
    public_moments,
    read_tabular_stats,
    standardize_tabular,
    tabular_moments,
    tabular_stats_table,
)

__all__ = [
    "IMAGE_SHAPE",
    "MANIFEST_NAME",
    "MAX_REPORTED_ROWS",
    "ON_BAD_ROWS",
    "BadRow",
    "DataSchema",
    "FeatureCache",
    "ManifestData",
    "ManifestError",
    "ManifestSummary",
    "TabularMoments",
    "check_manifest",
    "client_indices",
    "decode_audio",
    "decode_image",
    "fit_to_schema",
    "inspect_manifest",
    "load_manifest",
    "modality_shape",
    "moments_by_client",
    "public_moments",
    "read_tabular_stats",
    "standardize_tabular",
    "summarize_manifest",
    "tabular_moments",
    "tabular_stats_table",
    "write_manifest_subset",
]
