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

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import stat
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.table import Table

from umbra.data.cache import atomic_savez, params_key, resolve_cache_dir
from umbra.data.dataset import MODALITIES, MultimodalData
from umbra.errors import DataError

__all__ = [
    "ON_BAD_ROWS",
    "BadRow",
    "FeatureCache",
    "ManifestData",
    "ManifestError",
    "ManifestSummary",
    "TabularMoments",
    "client_indices",
    "decode_audio",
    "decode_image",
    "inspect_manifest",
    "load_manifest",
    "moments_by_client",
    "public_moments",
    "read_tabular_stats",
    "standardize_tabular",
    "summarize_manifest",
    "tabular_moments",
]

#: Accepted values of ``on_bad_rows``.
ON_BAD_ROWS: tuple[str, ...] = ("error", "skip")
#: How many bad rows a :class:`ManifestError` message lists (the rest are counted).
MAX_REPORTED_ROWS = 50

TAB_PREFIX = "tab:"
_BASE_COLUMNS = ("label", "id", "client")
_MODALITY_COLUMNS = ("image", "audio", "text")
_CSV_SUFFIXES = frozenset({".csv"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_PARQUET_MAGIC = b"PAR1"
_WAV_FORMATS = frozenset({"WAV", "WAVEX"})
_IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
_CHANNEL_MODES = {1: "L", 3: "RGB"}
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BadRow:
    """One problem in a manifest.

    Attributes:
        row: CSV: the line number where the record starts (the header is line 1);
            Parquet: the record number, from 1.
        column: the column at fault (several, comma-separated, when the record as a whole is).
        reason: what is wrong, in plain words.
    """

    row: int
    column: str
    reason: str


class ManifestError(DataError):
    """Every bad row of a manifest (and every client-level problem), reported together.

    Attributes:
        bad_rows: all bad rows, in row order (the message lists the first
            :data:`MAX_REPORTED_ROWS` and counts the rest).
        problems: problems that belong to no single row (e.g. a client with no records).
    """

    def __init__(
        self,
        path: Path,
        bad_rows: Sequence[BadRow],
        problems: Sequence[str] = (),
        *,
        row_kind: str = "record number",
    ) -> None:
        self.path = path
        self.bad_rows = tuple(bad_rows)
        self.problems = tuple(problems)
        super().__init__(format_problems(path, self.bad_rows, self.problems, row_kind=row_kind))


def format_problems(
    path: Path, bad_rows: Sequence[BadRow], problems: Sequence[str], *, row_kind: str
) -> str:
    """A block of text listing ``problems`` and the first :data:`MAX_REPORTED_ROWS` bad rows."""
    lines: list[str] = []
    if bad_rows:
        n_rows = len({b.row for b in bad_rows})
        lines.append(
            f"manifest {path}: {n_rows} bad row{'s' * (n_rows != 1)} "
            f"({len(bad_rows)} problem{'s' * (len(bad_rows) != 1)}; row = {row_kind}):"
        )
        shown = bad_rows[:MAX_REPORTED_ROWS]
        w_row = max(len(str(b.row)) for b in shown)
        w_col = max(len(b.column) for b in shown)
        lines += [f"  row {b.row:>{w_row}}  {b.column:<{w_col}}  {b.reason}" for b in shown]
        if len(bad_rows) > len(shown):
            lines.append(f"  ... and {len(bad_rows) - len(shown)} more not shown")
    if problems:
        lines.append(f"manifest {path}:" if not bad_rows else "and:")
        lines += [f"  {p}" for p in problems]
    if bad_rows:
        lines.append("Fix these rows, or set data.on_bad_rows=skip to skip the bad rows.")
    return "\n".join(lines)


@dataclass(frozen=True)
class ManifestData:
    """A loaded manifest.

    Attributes:
        data: features (tabular values raw, not standardised), mask, labels, ids.
        clients: the client of each record of ``data``, or None without a ``client`` column.
        skipped: number of rows skipped (``on_bad_rows="skip"``); 0 otherwise.
        label_names: class names; ``data.labels`` index into them.
        tabular_columns: the ``tab:`` column names, in feature order.
        skipped_rows: the problems of the skipped rows.
        timings: seconds spent per phase (``validate``, ``image``, ``audio``, ``text``);
            the sentence encoder loads in the background during ``image``/``audio``,
            so ``text`` holds the embedding and only the rest of that load.
    """

    data: MultimodalData
    clients: tuple[str, ...] | None
    skipped: int
    label_names: tuple[str, ...]
    tabular_columns: tuple[str, ...] = ()
    skipped_rows: tuple[BadRow, ...] = field(default=())
    timings: dict[str, float] = field(default_factory=dict)

    def client_indices(self) -> dict[str, np.ndarray]:
        """Record indices of each client (raises DataError without a ``client`` column)."""
        if self.clients is None:
            raise DataError("the manifest has no 'client' column")
        return client_indices(self.clients)


def client_indices(clients: Sequence[str]) -> dict[str, np.ndarray]:
    """Record indices (int64, ascending) of each client, clients in first-seen order."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(clients):
        out.setdefault(c, []).append(i)
    return {c: np.asarray(ix, dtype=np.int64) for c, ix in out.items()}


# --------------------------------------------------------------------------- tabular statistics


@dataclass(frozen=True)
class TabularMoments:
    """Sufficient statistics of one partition's tabular features.

    ``count`` records, per-feature ``total`` (sum) and ``total_sq`` (sum of squares), all
    float64. Moments add: the moments of a union of partitions are the sum of their
    moments, which is what secure aggregation computes from each client's vector
    (:meth:`to_vector`) without revealing any single client's.
    """

    count: float
    total: np.ndarray
    total_sq: np.ndarray

    def __add__(self, other: TabularMoments) -> TabularMoments:
        return TabularMoments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    @property
    def mean(self) -> np.ndarray:
        """Per-feature mean (zeros when ``count`` is 0)."""
        return self.total / self.count if self.count > 0 else np.zeros_like(self.total)

    @property
    def std(self) -> np.ndarray:
        """Per-feature population standard deviation (``E[x²] − E[x]²``, clipped at 0)."""
        if self.count <= 0:
            return np.zeros_like(self.total)
        var = self.total_sq / self.count - self.mean**2
        return np.sqrt(np.maximum(var, 0.0))

    def to_vector(self) -> np.ndarray:
        """``[count, total..., total_sq...]`` (float64, length 2D+1) for vector aggregation."""
        return np.concatenate([[self.count], self.total, self.total_sq]).astype(np.float64)

    @classmethod
    def from_vector(cls, vec: np.ndarray) -> TabularMoments:
        """Inverse of :meth:`to_vector` (also for a sum of such vectors)."""
        vec = np.asarray(vec, dtype=np.float64)
        if vec.ndim != 1 or len(vec) % 2 != 1:
            raise ValueError(f"vec must be 1-D with odd length 2D+1, got shape {vec.shape}")
        d = (len(vec) - 1) // 2
        return cls(float(vec[0]), vec[1 : 1 + d].copy(), vec[1 + d :].copy())


def tabular_moments(values: np.ndarray, present: np.ndarray) -> TabularMoments:
    """(count, sum, sum of squares) of the rows of ``values`` (N, D) where ``present`` (N,)."""
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if values.ndim != 2 or present.shape != (len(values),):
        raise ValueError(
            f"values must be (N, D) and present (N,), got {values.shape} and {present.shape}"
        )
    x = values[present]
    return TabularMoments(float(len(x)), x.sum(axis=0), (x * x).sum(axis=0))


def moments_by_client(data: MultimodalData, clients: Sequence[str]) -> dict[str, TabularMoments]:
    """Each client's :func:`tabular_moments` (computed on that client's records only)."""
    if "tabular" not in data.modalities:
        raise ValueError("data has no 'tabular' modality")
    if len(clients) != len(data):
        raise ValueError(f"clients has {len(clients)} entries, data has {len(data)} records")
    j = data.modality_index("tabular")
    x = data.features["tabular"]
    return {
        c: tabular_moments(x[ix], data.mask[ix, j]) for c, ix in client_indices(clients).items()
    }


def public_moments(mean: Sequence[float], std: Sequence[float]) -> TabularMoments:
    """Fixed :class:`TabularMoments` whose ``mean`` and ``std`` are the given public values
    (no record enters them)."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    if m.shape != s.shape or m.ndim != 1:
        raise ValueError(f"mean and std must be 1-D of one length, got {m.shape} and {s.shape}")
    if not np.all(np.isfinite(m)) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("public statistics must be finite with std > 0")
    return TabularMoments(1.0, m, s * s + m * m)


def read_tabular_stats(
    stats: str | Mapping[str, Sequence[float]], columns: Sequence[str], *, base: Path | None = None
) -> TabularMoments:
    """Public per-column ``[mean, std]`` for the manifest's ``tab:`` ``columns``.

    Args:
        stats: ``{name: [mean, std]}`` (``name`` with or without the ``tab:`` prefix), or
            the path of a JSON file holding that object (relative to ``base``).
        columns: the tabular column names in feature order.

    Raises:
        DataError: unreadable file, a column without statistics, or a malformed entry.
    """
    if isinstance(stats, str):
        path = Path(stats)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"data.tabular_stats: cannot read {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise DataError(f"data.tabular_stats: {path} must hold a JSON object")
        stats = loaded
    table = {k.removeprefix("tab:"): v for k, v in stats.items()}
    names = [c.removeprefix("tab:") for c in columns]
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"data.tabular_stats has no [mean, std] for column(s) {missing}")
    try:
        pairs = [(float(table[n][0]), float(table[n][1])) for n in names]
        return public_moments([p[0] for p in pairs], [p[1] for p in pairs])
    except (TypeError, IndexError, ValueError) as err:
        raise DataError(f"data.tabular_stats: {err}") from None


def standardize_tabular(
    data: MultimodalData, moments: TabularMoments | None = None, *, min_std: float = 1e-6
) -> MultimodalData:
    """Standardise the tabular modality to zero mean and unit variance.

    Args:
        data: one partition (typically one client's records).
        moments: the statistics to use; None means ``data``'s own (per-client
            standardisation). Pass the securely aggregated sum of all clients' moments
            for global standardisation.
        min_std: a feature whose standard deviation is below this is only centred
            (divided by 1), so constant columns do not blow up. Must be > 0.

    Returns:
        A new ``MultimodalData``; absent tabular cells stay zero. ``data`` is returned
        unchanged when it has no tabular modality.
    """
    if not min_std > 0:
        raise ValueError(f"min_std must be > 0, got {min_std}")
    if "tabular" not in data.modalities:
        return data
    j = data.modality_index("tabular")
    x = data.features["tabular"]
    present = data.mask[:, j]
    if moments is None:
        moments = tabular_moments(x, present)
    if moments.total.shape != (x.shape[1],):
        raise ValueError(f"moments have {moments.total.shape[0]} features, data {x.shape[1]}")
    std = moments.std
    scale = np.where(std < min_std, 1.0, std)
    z = ((x - moments.mean) / scale).astype(x.dtype)
    z[~present] = 0
    feats = dict(data.features)
    feats["tabular"] = z
    return MultimodalData(
        feats, data.mask, data.labels, data.modalities, data.class_names, data.ids
    )


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode PNG/JPEG bytes to float32 ``shape`` = (C, H, W) with values in [0, 1].

    Any size and colour mode: converted to grayscale (C=1) or RGB (C=3), EXIF rotation
    applied, resized (bilinear, aspect ratio not kept) to H×W. 16-bit images are scaled
    by 65535. Raises ValueError for anything that is not a readable PNG or JPEG.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(io.BytesIO(data)) as src:
            if src.format not in _IMAGE_FORMATS:
                raise ValueError(f"not a PNG or JPEG image (it is {src.format})")
            src.draft(_CHANNEL_MODES[c], (w, h))  # JPEG: decode at reduced size, much faster
            img: Image.Image = ImageOps.exif_transpose(src)
            if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / float gray
                arr = np.asarray(img, dtype=np.float32)
                peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                gray = Image.fromarray(arr / peak, mode="F")
                out = np.asarray(gray.resize((w, h), Image.Resampling.BILINEAR))[None]
                return np.repeat(out, c, axis=0).clip(0.0, 1.0)
            img = img.convert(_CHANNEL_MODES[c]).resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ValueError("not an image file (PNG or JPEG expected)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"unreadable image: {exc}") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1).copy()  # (C, H, W)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV bytes to ``(wave (T,) float32 mono, sample rate in Hz)``.

    Channels are averaged. Raises ValueError for anything but a non-empty WAV file;
    resampling is left to :func:`umbra.data.sources.speech.log_mel`.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.format not in _WAV_FORMATS:
                raise ValueError(f"wrong audio format: {f.format}, WAV expected")
            wave = f.read(dtype="float32", always_2d=True)  # (T, C)
            rate = int(f.samplerate)
    except sf.LibsndfileError as exc:
        raise ValueError(f"not a readable WAV file ({exc.error_string})") from None
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"not a readable WAV file ({exc})") from None
    if wave.shape[0] == 0:
        raise ValueError("audio file has no samples")
    return wave.mean(axis=1), rate


@dataclass(frozen=True)
class _Featurizer:
    """How files of one modality become features.

    ``prepare`` turns one file's bytes into a fixed-shape array (ValueError: a bad file);
    ``finish`` maps a stacked batch of those to features ``(B, *shape)``, so that costly
    transforms (the log-mel STFT) run once per batch instead of once per file.
    """

    shape: tuple[int, ...]
    tag: str
    prepare: Callable[[bytes], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray]
    batch: int = 512


def _image_featurizer(shape: tuple[int, int, int]) -> _Featurizer:
    from PIL import Image

    Image.preinit()  # import the PNG/JPEG plugins now, not first in a worker thread
    c, h, w = shape
    return _Featurizer(
        shape=shape,
        tag=f"image-{c}x{h}x{w}",
        prepare=lambda raw: decode_image(raw, shape),
        finish=lambda batch: batch,
    )


def _audio_featurizer() -> _Featurizer:
    """WAV -> mono -> ``speech.SAMPLE_RATE`` (polyphase) -> 2 s window -> batched log-mel.

    Equal to :func:`umbra.data.sources.speech.log_mel` on each wave, batched. The cache tag
    hashes every upper-case constant of the speech module (rates, FFT sizes, feature
    normalisation), so cached features are recomputed when any of them changes.
    """
    import soundfile  # noqa: F401  (imported here, not first in a worker thread)
    from scipy.signal import firwin, resample_poly  # noqa: F401  (loaded before worker threads)

    from umbra.data.sources import speech

    length = int(speech.CLIP_SAMPLES)
    consts = {
        k: v
        for k, v in vars(speech).items()
        if k.isupper() and isinstance(v, int | float | str | tuple)
    }

    def prepare(raw: bytes) -> np.ndarray:
        wave, sr = decode_audio(raw)
        x = wave.astype(np.float64)
        x = speech.resample(x, sr)
        out = np.zeros(length, dtype=np.float32)  # zero-padded or cropped to the window
        out[: min(length, len(x))] = x[:length]
        return out

    return _Featurizer(
        shape=tuple(speech.AUDIO_SHAPE),
        tag=f"audio-{params_key(consts)}",
        prepare=prepare,
        finish=lambda batch: speech.log_mel_batch(batch),
    )


def _text() -> tuple[Callable[..., np.ndarray], int]:
    """``(embed_texts, TEXT_DIM)`` of the text source, imported lazily."""
    from umbra.data.sources import text

    return text.embed_texts, int(text.TEXT_DIM)


def _text_warm_up() -> Callable[..., bool]:
    """:func:`umbra.data.sources.text.warm_up`, imported lazily."""
    from umbra.data.sources import text

    return text.warm_up


def content_key(data: bytes) -> str:
    """The cache key of some content: BLAKE2b-128, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- cache


class FeatureCache:
    """Features of one kind keyed by content hash, in one ``<name>.npz`` pack.

    The pack holds ``keys`` (hex digests) and ``values`` (K, *shape) float32, and is
    loaded without pickle. New entries are merged and written atomically (temp file +
    ``os.replace``), so concurrent loaders at worst recompute. A pack that cannot be read
    or has the wrong shape is ignored.
    """

    def __init__(self, root: Path, name: str, shape: tuple[int, ...]) -> None:
        self.path = root / f"{name}.npz"
        self.shape = shape
        self._keys: dict[str, int] = {}
        self._values = np.zeros((0, *shape), dtype=np.float32)
        self._new: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path, allow_pickle=False) as pack:
                keys, values = pack["keys"], pack["values"]
            if values.shape[1:] == shape and len(keys) == len(values):
                self._values = values.astype(np.float32, copy=False)
                self._keys = {str(k): i for i, k in enumerate(keys.tolist())}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # no cache yet, or a damaged one: recompute

    def __contains__(self, key: str) -> bool:
        return key in self._keys or key in self._new

    def get(self, key: str) -> np.ndarray:
        if key in self._new:
            return self._new[key]
        return self._values[self._keys[key]]

    def take(self, keys: Sequence[str]) -> np.ndarray:
        """Values of ``keys`` stacked to (len(keys), *shape)."""
        if not self._new:  # e.g. after flush(): one gather, no per-key copies
            rows = np.fromiter((self._keys[k] for k in keys), dtype=np.intp, count=len(keys))
            return self._values[rows]
        out = np.empty((len(keys), *self.shape), dtype=np.float32)
        old = [(i, self._keys[k]) for i, k in enumerate(keys) if k not in self._new]
        if old:
            dst, src = map(list, zip(*old, strict=True))
            out[dst] = self._values[src]
        for i, k in enumerate(keys):
            if k in self._new:
                out[i] = self._new[k]
        return out

    def put(self, key: str, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        if value.shape != self.shape:
            raise ValueError(f"feature shape {value.shape} != {self.shape} for {self.path.name}")
        self._new[key] = value

    def flush(self) -> None:
        """Write new entries (if any) to the pack."""
        if not self._new:
            return
        keys = [*self._keys, *self._new]
        values = np.concatenate([self._values, np.stack(list(self._new.values()))])
        atomic_savez(self.path, keys=np.asarray(keys, dtype="U32"), values=values)
        self._keys = {k: i for i, k in enumerate(keys)}
        self._values = values
        self._new = {}


# --------------------------------------------------------------------------- reading the table


@dataclass
class _Table:
    columns: tuple[str, ...]
    cells: dict[str, list[str]]  # column -> one stripped string per record ("" = empty)
    rows: list[int]  # row number of each record, for messages
    row_kind: str
    shape_errors: list[BadRow]


def _read_table(path: Path) -> _Table:
    """Read a manifest into strings; file-level problems raise DataError."""
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    with path.open("rb") as f:
        head = f.read(4)
    if suffix in _PARQUET_SUFFIXES or head == _PARQUET_MAGIC:
        table = _read_parquet(path)
    elif suffix in _CSV_SUFFIXES:
        table = _read_csv(path)
    else:
        raise DataError(
            f"manifest {path} is not CSV or Parquet: expected a .csv, .parquet or .pq file"
        )
    _check_columns(path, table.columns)
    if not table.rows:
        raise DataError(f"manifest {path} has a header but no records")
    return table


def _read_csv(path: Path) -> _Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"manifest {path} is not a CSV text file (not UTF-8)") from None
    if "\x00" in text:
        raise DataError(f"manifest {path} is not a CSV text file (it holds NUL bytes)")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"manifest {path} is empty: it needs a header line")
        columns = tuple(h.strip() for h in header)
        cells: dict[str, list[str]] = {c: [] for c in columns}
        rows: list[int] = []
        errors: list[BadRow] = []
        line = reader.line_num
        for rec in reader:
            start, line = line + 1, reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            if len(rec) != len(columns):
                errors.append(
                    BadRow(start, "*", f"has {len(rec)} fields but the header has {len(columns)}")
                )
                rec = (rec + [""] * len(columns))[: len(columns)]
            rows.append(start)
            for c, v in zip(columns, rec, strict=True):
                cells[c].append(v.strip())
    except csv.Error as exc:
        raise DataError(
            f"manifest {path} is not valid CSV (line {reader.line_num}): {exc}"
        ) from None
    if len(set(columns)) != len(columns):
        dup = sorted(c for c, n in Counter(columns).items() if n > 1)
        raise DataError(f"manifest {path} repeats column(s) {', '.join(map(repr, dup))}")
    return _Table(columns, cells, rows, "line in the CSV file (header = line 1)", errors)


def _parquet_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bytes):
        return "<bytes>"
    return str(v).strip()


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a pinned dependency
        raise DataError("reading Parquet manifests needs the 'pyarrow' package") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "unreadable"
        raise DataError(f"manifest {path} is not a readable Parquet file: {exc}") from None
    columns = tuple(str(c).strip() for c in table.column_names)
    if len(set(columns)) != len(columns):
        dup = sorted(c for c, n in Counter(columns).items() if n > 1)
        raise DataError(f"manifest {path} repeats column(s) {', '.join(map(repr, dup))}")
    cells = {
        c: [_parquet_cell(v) for v in table.column(i).to_pylist()] for i, c in enumerate(columns)
    }
    return _Table(columns, cells, list(range(1, table.num_rows + 1)), "record number", [])


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    valid = (*_BASE_COLUMNS, *_MODALITY_COLUMNS, f"{TAB_PREFIX}<name>")
    unknown = [
        c
        for c in columns
        if c not in _BASE_COLUMNS
        and c not in _MODALITY_COLUMNS
        and not (c.startswith(TAB_PREFIX) and len(c) > len(TAB_PREFIX))
    ]
    if unknown:
        raise DataError(
            f"manifest {path} has unknown column(s) {', '.join(map(repr, unknown))}; "
            f"valid columns: {', '.join(valid)}"
        )
    if "label" not in columns:
        raise DataError(
            f"manifest {path} lacks the required 'label' column "
            f"(columns found: {', '.join(columns) or 'none'})"
        )
    if not _modality_columns(columns):
        raise DataError(
            f"manifest {path} has no modality column: add at least one of "
            f"{', '.join((*_MODALITY_COLUMNS, TAB_PREFIX + '<name>'))}"
        )


def _modality_columns(columns: Sequence[str]) -> dict[str, list[str]]:
    """Modality -> its columns, canonical order, only modalities with a column."""
    tab = [c for c in columns if c.startswith(TAB_PREFIX)]
    found = {m: [m] for m in _MODALITY_COLUMNS if m in columns}
    if tab:
        found["tabular"] = tab
    return {m: found[m] for m in MODALITIES if m in found}


def _natural_key(s: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``org2`` before ``org10``."""
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in re.split(r"(\d+)", s) if p)


def _natural_order(labels: Iterable[str]) -> tuple[str, ...]:
    """Sorted label names: numerically when all are integers, else lexicographically."""
    uniq = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", s) for s in uniq):
        return tuple(sorted(uniq, key=int))
    return tuple(sorted(uniq))


# --------------------------------------------------------------------------- validation


class _PathResolver:
    """Resolves path cells to real paths inside the manifest's folder, or says why not.

    Symlinks are followed before the containment check, so a link pointing outside is
    refused like ``../x``. Each directory is resolved once (``os.path.realpath``); per
    file only the last component is checked, which keeps 10,000 paths well under a second.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        self._dirs: dict[str, str] = {}

    def __call__(self, cell: str) -> tuple[str | None, str | None]:
        """``(real path, None)`` for a regular file inside the folder, else ``(None, reason)``."""
        if "\x00" in cell:
            return None, f"invalid path {cell!r} (NUL byte)"
        joined = os.path.join(self.root, cell)  # an absolute cell replaces the root
        head, name = os.path.split(joined)
        if name in ("", ".", ".."):
            full = os.path.realpath(joined)
        else:
            real_head = self._dirs.get(head)
            if real_head is None:
                real_head = self._dirs[head] = os.path.realpath(head)
            full = os.path.join(real_head, name)
            if os.path.islink(full):
                full = os.path.realpath(full)
        if not full.startswith(self.prefix):
            return None, f"path {cell!r} escapes the manifest's folder (refused)"
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None, f"file not found: {cell}"
        except OSError as exc:
            return None, f"cannot access {cell}: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode):
            return None, f"not a regular file: {cell}"
        return full, None


def _parse_number(cell: str) -> tuple[float | None, str | None]:
    try:
        x = float(cell)
    except ValueError:
        return None, f"not a number: {cell!r}"
    if not math.isfinite(x):
        return None, f"not a finite number: {cell!r}"
    return x, None


@dataclass
class _Rows:
    """Per-record values parsed from the table (None = missing)."""

    labels: list[str]
    ids: list[str] | None
    clients: list[str] | None
    paths: dict[str, list[str | None]]  # image/audio -> real path per record
    texts: list[str | None] | None
    tabular: np.ndarray | None  # (N, D) float64, zeros where missing
    tab_present: np.ndarray | None  # (N,) bool


def _validate_cells(
    table: _Table,
    root: Path,
    mod_cols: Mapping[str, list[str]],
    *,
    text_required: bool,
    label_names: Sequence[str] | None,
    expected_clients: Sequence[str] | None,
) -> tuple[_Rows, list[BadRow]]:
    """Check every cell that can be checked without decoding files."""
    n, rows, cells = len(table.rows), table.rows, table.cells
    bad: list[BadRow] = list(table.shape_errors)

    labels = cells["label"]
    known = set(label_names) if label_names is not None else None
    for i, lab in enumerate(labels):
        if not lab:
            bad.append(BadRow(rows[i], "label", "empty label"))
        elif known is not None and lab not in known:
            bad.append(BadRow(rows[i], "label", f"unknown label {lab!r}"))

    ids = cells.get("id")
    if ids is not None:
        first: dict[str, int] = {}
        for i, v in enumerate(ids):
            if not v:
                bad.append(BadRow(rows[i], "id", "empty id"))
            elif v in first:
                bad.append(BadRow(rows[i], "id", f"duplicate id {v!r} (first on row {first[v]})"))
            else:
                first[v] = rows[i]

    clients = cells.get("client")
    if clients is not None:
        allowed = set(expected_clients) if expected_clients is not None else None
        for i, v in enumerate(clients):
            if not v:
                bad.append(BadRow(rows[i], "client", "empty client"))
            elif allowed is not None and v not in allowed:
                bad.append(BadRow(rows[i], "client", f"unknown client {v!r}"))

    paths: dict[str, list[str | None]] = {}
    resolve = _PathResolver(root)
    for m in ("image", "audio"):
        if m not in mod_cols:
            continue
        col: list[str | None] = []
        for i, v in enumerate(cells[m]):
            full, reason = resolve(v) if v else (None, None)
            if reason:
                bad.append(BadRow(rows[i], m, reason))
            col.append(full)
        paths[m] = col

    texts: list[str | None] | None = None
    if "text" in mod_cols:
        texts = [v or None for v in cells["text"]]
        if text_required:
            bad += [
                BadRow(rows[i], "text", "empty text where text is required")
                for i, t in enumerate(texts)
                if t is None
            ]

    tabular = tab_present = None
    if "tabular" in mod_cols:
        tcols = mod_cols["tabular"]
        tabular = np.zeros((n, len(tcols)), dtype=np.float64)
        tab_present = np.zeros(n, dtype=bool)
        for i in range(n):
            row = [cells[c][i] for c in tcols]
            if not any(row):
                continue
            tab_present[i] = True
            for k, (c, v) in enumerate(zip(tcols, row, strict=True)):
                if not v:
                    bad.append(
                        BadRow(
                            rows[i],
                            c,
                            "empty value while other tab: columns of this record are "
                            "filled (fill all or none)",
                        )
                    )
                    continue
                x, reason = _parse_number(v)
                if reason:
                    bad.append(BadRow(rows[i], c, reason))
                else:
                    tabular[i, k] = x

    all_cols = [c for cs in mod_cols.values() for c in cs]
    for i in range(n):
        if not any(cells[c][i] for c in all_cols):
            bad.append(BadRow(rows[i], ", ".join(all_cols), "record has no modality (all empty)"))

    parsed = _Rows(labels, ids, clients, paths, texts, tabular, tab_present)
    return parsed, bad


# --------------------------------------------------------------------------- features


def _hash_file(path: str) -> str | BadRow:
    try:
        with open(path, "rb") as f:
            return content_key(f.read())
    except OSError as exc:
        return BadRow(0, "", f"cannot read file: {exc.strerror or exc}")


_T = TypeVar("_T")
_R = TypeVar("_R")


def _chunked_map(
    pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Sequence[_T], size: int = 256
) -> list[_R]:
    """``[fn(x) for x in items]`` in the pool, one task per ``size`` items (a future per
    item costs more than hashing a small file)."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return [r for part in pool.map(lambda c: [fn(x) for x in c], chunks) for r in part]


def _file_features(
    paths: Sequence[str | None],
    cache: FeatureCache,
    feat: _Featurizer,
    column: str,
    rows: Sequence[int],
) -> tuple[list[str | None], list[BadRow]]:
    """Hash every file, featurize the contents not cached yet; the key per record, errors.

    Reading, hashing and ``prepare`` run in a few threads (file I/O, BLAKE2b, PIL and
    scipy release the GIL); ``finish`` runs once per batch in this thread.
    """
    unique = list(dict.fromkeys(p for p in paths if p is not None))
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = _chunked_map(pool, _hash_file, unique)
        got: dict[str, str | BadRow] = dict(zip(unique, hashes, strict=True))
        todo: dict[str, str] = {}  # key -> a path holding that content
        for p, k in got.items():
            if isinstance(k, str) and k not in cache:
                todo.setdefault(k, p)

        def prepare(item: tuple[str, str]) -> np.ndarray | BadRow:
            key, path = item
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                if content_key(raw) != key:
                    return BadRow(0, "", "file changed while loading")
                return feat.prepare(raw)
            except OSError as exc:
                return BadRow(0, "", f"cannot read file: {exc.strerror or exc}")
            except ValueError as exc:
                return BadRow(0, "", str(exc))

        failed: dict[str, BadRow] = {}
        items = list(todo.items())
        for start in range(0, len(items), feat.batch):
            chunk = items[start : start + feat.batch]
            ok: dict[str, np.ndarray] = {}
            for (k, _), out in zip(chunk, _chunked_map(pool, prepare, chunk, 32), strict=True):
                if isinstance(out, BadRow):
                    failed[k] = out
                else:
                    ok[k] = out
            if ok:
                for k, v in zip(ok, feat.finish(np.stack(list(ok.values()))), strict=True):
                    cache.put(k, v)
    keys: list[str | None] = [None] * len(paths)
    bad: list[BadRow] = []
    for i, record_path in enumerate(paths):
        if record_path is None:
            continue
        key_or_err = got[record_path]
        err = key_or_err if isinstance(key_or_err, BadRow) else failed.get(key_or_err)
        if err is not None:
            bad.append(BadRow(rows[i], column, err.reason))
        elif isinstance(key_or_err, str):
            keys[i] = key_or_err
    return keys, bad


def _stack(keys: Sequence[str | None], cache: FeatureCache) -> tuple[np.ndarray, np.ndarray]:
    """(N, *shape) features (zeros where the key is None) and the (N,) presence mask."""
    present = np.array([k is not None for k in keys], dtype=bool)
    out = np.zeros((len(keys), *cache.shape), dtype=np.float32)
    idx = np.flatnonzero(present)
    if len(idx):
        out[idx] = cache.take([k for k in keys if k is not None])
    return out, present


# --------------------------------------------------------------------------- loading


class _Clock:
    """Seconds per phase, for ``ManifestData.timings``."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def load_manifest(
    path: Path,
    *,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    on_bad_rows: str = "error",
    text_required: bool = False,
    cache_dir: Path | None = None,
    label_names: Sequence[str] | None = None,
    expected_clients: Sequence[str] | None = None,
) -> ManifestData:
    """Validate a manifest and load its features.

    Args:
        path: the CSV (``.csv``) or Parquet (``.parquet``/``.pq``) manifest.
        image_shape: (C, H, W) images are converted to; C is 1 (grayscale) or 3 (RGB).
        on_bad_rows: ``"error"`` raises one :class:`ManifestError` listing every bad row;
            ``"skip"`` drops bad rows and reports their number in ``skipped``.
        text_required: an empty ``text`` cell is a bad row instead of a missing modality.
        cache_dir: cache root (default :func:`umbra.data.cache.default_cache_dir`); image
            and audio features go to ``<cache_dir>/manifest/``, text embeddings to the
            text source's store.
        label_names: the allowed labels, in class-index order; a label outside them is a
            bad row. None: the labels found, sorted (numerically if all are integers).
        expected_clients: the clients the federation expects; a record of another client
            is a bad row, and an expected client without records is a problem.

    Raises:
        DataError: the file is not a CSV/Parquet manifest, lacks ``label``, has unknown
            columns or no records (before anything else is checked).
        ManifestError: bad rows (with ``on_bad_rows="error"``), or a client left without
            records (always).
        ValueError: an argument is out of range.
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")
    if len(image_shape) != 3 or image_shape[0] not in _CHANNEL_MODES or min(image_shape) < 1:
        raise ValueError(
            f"image_shape must be (C, H, W) with C in (1, 3) and H, W >= 1, got {image_shape}"
        )
    image_shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
    for name, names in (("label_names", label_names), ("expected_clients", expected_clients)):
        if names is not None and (len(set(names)) != len(names) or not all(names)):
            raise ValueError(f"{name} must be distinct non-empty strings, got {list(names)}")
    path = Path(path)
    clock = _Clock()
    table = _read_table(path)
    root = path.parent.resolve()
    mod_cols = _modality_columns(table.columns)
    parsed, bad = _validate_cells(
        table,
        root,
        mod_cols,
        text_required=text_required,
        label_names=label_names,
        expected_clients=expected_clients,
    )
    clock.lap("validate")
    cache_root = resolve_cache_dir(cache_dir) / "manifest"
    rows = table.rows
    n = len(rows)
    # Files are decoded (or found in the cache) even for rows already bad on another
    # column, so that one report lists every problem at once.
    features: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    makers: dict[str, Callable[[], _Featurizer]] = {
        "image": lambda: _image_featurizer(image_shape),
        "audio": _audio_featurizer,
    }
    # Made (and their libraries imported) in this thread before the encoder warm-up starts.
    featurizers = {m: make() for m, make in makers.items() if m in mod_cols}
    if "text" in mod_cols and (on_bad_rows == "skip" or not bad):
        # Load the sentence encoder in the background while the files are decoded; texts
        # are still embedded only after validation passed.
        assert parsed.texts is not None
        _text_warm_up()([t for t in parsed.texts if t is not None], cache_dir=cache_dir)
    for m, feat in featurizers.items():
        cache = FeatureCache(cache_root, f"{feat.tag}-v{_CACHE_VERSION}", feat.shape)
        keys, errs = _file_features(parsed.paths[m], cache, feat, m, rows)
        bad += errs
        cache.flush()
        features[m], present[m] = _stack(keys, cache)
        clock.lap(m)
    if "tabular" in mod_cols:
        assert parsed.tabular is not None and parsed.tab_present is not None
        features["tabular"] = parsed.tabular.astype(np.float32)
        present["tabular"] = parsed.tab_present

    bad.sort(key=lambda b: b.row)
    bad_set = {b.row for b in bad}
    keep = np.array([r not in bad_set for r in rows], dtype=bool)
    problems = _client_problems(parsed.clients, keep, expected_clients)
    if on_bad_rows == "error" and (bad or problems):
        raise ManifestError(path, bad, problems, row_kind=table.row_kind)
    if problems:  # skipping cannot fix a client left without records
        raise ManifestError(path, [], problems, row_kind=table.row_kind)
    if not keep.any():
        raise ManifestError(
            path, [], ["no valid records left after skipping bad rows"], row_kind=table.row_kind
        )
    kept = np.flatnonzero(keep)

    if "text" in mod_cols:  # embedded only once validation passed (the model is slow)
        assert parsed.texts is not None
        embed_texts, dim = _text()
        texts = [parsed.texts[i] for i in kept]
        has_text = np.array([t is not None for t in texts], dtype=bool)
        vecs = np.asarray(
            embed_texts([t for t in texts if t is not None], cache_dir=cache_dir),
            dtype=np.float32,
        )
        if vecs.shape != (int(has_text.sum()), dim):
            raise DataError(
                f"text encoder returned shape {vecs.shape}, expected ({int(has_text.sum())}, {dim})"
            )
        full = np.zeros((n, dim), dtype=np.float32)
        full[kept[has_text]] = vecs
        features["text"] = full
        present["text"] = np.array([t is not None for t in parsed.texts], dtype=bool)
        clock.lap("text")

    names = (
        tuple(label_names)
        if label_names is not None
        else _natural_order(parsed.labels[i] for i in kept)
    )
    index = {lab: j for j, lab in enumerate(names)}
    modalities = tuple(mod_cols)
    everything = len(kept) == n  # no row skipped: no need to copy the feature arrays
    mask = np.stack([present[m] for m in modalities], axis=1)  # (N, M)
    data = MultimodalData(
        features={m: features[m] if everything else features[m][kept] for m in modalities},
        mask=mask if everything else mask[kept],
        labels=np.array([index[parsed.labels[i]] for i in kept], dtype=np.int64),
        modalities=modalities,
        class_names=names,
        ids=None if parsed.ids is None else np.array([parsed.ids[i] for i in kept], dtype=str),
    )
    clients = None if parsed.clients is None else tuple(parsed.clients[i] for i in kept)
    return ManifestData(
        data=data,
        clients=clients,
        skipped=n - len(kept),
        label_names=names,
        tabular_columns=tuple(mod_cols.get("tabular", ())),
        skipped_rows=tuple(bad),
        timings=clock.laps,
    )


def _client_problems(
    clients: Sequence[str] | None, keep: np.ndarray, expected: Sequence[str] | None
) -> list[str]:
    """Clients that would take part without any record."""
    total: Counter[str] = Counter()
    valid: Counter[str] = Counter()
    if clients is not None:
        for c, k in zip(clients, keep, strict=True):
            if c:
                total[c] += 1
                valid[c] += int(k)
    names = list(expected) if expected is not None else list(total)
    problems = []
    for c in names:
        if valid[c] == 0:
            detail = f"all {total[c]} of its rows are bad" if total[c] else "no row names it"
            problems.append(f"client {c!r} has no records ({detail})")
    if expected is not None and clients is None:
        problems.append("clients are expected but the manifest has no 'client' column")
    return problems


# --------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class ManifestSummary:
    """Counts over a manifest's records, from the cells alone (no file is opened).

    ``patterns`` maps the tuple of present modalities (canonical order) to its count.
    """

    path: Path
    records: int
    per_client: dict[str, int] | None
    per_label: dict[str, int]
    per_modality: dict[str, int]
    patterns: dict[tuple[str, ...], int]


def summarize_manifest(path: Path) -> ManifestSummary:
    """Count records per client, label, modality and missing-modality pattern."""
    path = Path(path)
    table = _read_table(path)
    cells = table.cells
    mod_cols = _modality_columns(table.columns)
    n = len(table.rows)
    has = {m: [any(cells[c][i] for c in cols) for i in range(n)] for m, cols in mod_cols.items()}
    patterns: Counter[tuple[str, ...]] = Counter(
        tuple(m for m in mod_cols if has[m][i]) for i in range(n)
    )
    per_label = Counter(cells["label"])
    return ManifestSummary(
        path=path,
        records=n,
        per_client=(
            dict(sorted(Counter(cells["client"]).items(), key=lambda kv: _natural_key(kv[0])))
            if "client" in cells
            else None
        ),
        per_label={k: per_label[k] for k in _natural_order(per_label)},
        per_modality={m: sum(v) for m, v in has.items()},
        patterns=dict(sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def inspect_manifest(path: Path) -> Table:
    """A rich table: records per client, per label, per modality, and per modality pattern."""
    s = summarize_manifest(path)
    mods = list(s.per_modality)

    def share(k: int) -> str:
        return f"{100 * k / s.records:.1f}%"

    table = Table(title=f"{s.path} — {s.records} records", title_justify="left")
    table.add_column("group")
    table.add_column("value")
    table.add_column("records", justify="right")
    table.add_column("share", justify="right")

    def section(name: str, items: Iterable[tuple[str, int]]) -> None:
        items = list(items)
        for j, (key, k) in enumerate(items):
            table.add_row(
                name if j == 0 else "", key, str(k), share(k), end_section=j == len(items) - 1
            )

    def pattern(p: tuple[str, ...]) -> str:
        missing = [m for m in mods if m not in p]
        return (" + ".join(p) or "(none)") + (f"  (missing {', '.join(missing)})" * bool(missing))

    if s.per_client is not None:
        section("client", [(c or "(empty)", k) for c, k in s.per_client.items()])
    section("label", [(lab or "(empty)", k) for lab, k in s.per_label.items()])
    section("modality", s.per_modality.items())
    section("present / missing", [(pattern(p), k) for p, k in s.patterns.items()])
    return table
