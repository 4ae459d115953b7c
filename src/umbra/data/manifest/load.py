"""Loading a manifest: validate every row, decode (or find cached) the features, embed the
texts once validation passed, and return :class:`ManifestData`."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from umbra.data.cache import resolve_cache_dir
from umbra.data.dataset import MultimodalData
from umbra.data.manifest.feature_cache import CACHE_VERSION, FeatureCache
from umbra.data.manifest.features import (
    Featurizer,
    audio_featurizer,
    file_features,
    image_featurizer,
    stack_features,
    text_encoder,
    text_warm_up,
)
from umbra.data.manifest.media import CHANNEL_MODES
from umbra.data.manifest.problems import ON_BAD_ROWS, BadRow, ManifestError
from umbra.data.manifest.rows import validate_cells
from umbra.data.manifest.table import modality_columns, natural_order, read_table
from umbra.errors import DataError

__all__ = ["IMAGE_SHAPE", "ManifestData", "client_indices", "load_manifest"]

#: (C, H, W) a manifest's images are converted to unless asked otherwise.
IMAGE_SHAPE: tuple[int, int, int] = (1, 28, 28)


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
        source_records: the position of each record of ``data`` among the table's records
            (0-based; bad rows skipped leave gaps), to write a subset of the manifest back.
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
    source_records: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
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
    image_shape: tuple[int, int, int] = IMAGE_SHAPE,
    on_bad_rows: str = "error",
    text_required: bool = False,
    cache_dir: Path | None = None,
    label_names: Sequence[str] | None = None,
    expected_clients: Sequence[str] | None = None,
    text_tokens: int | None = None,
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
        text_tokens: texts become this many MiniLM token ids
            (:func:`umbra.data.text_tokens.tokenize_texts`, for the MiniLM text encoders)
            instead of sentence embeddings; None: embeddings.

    Raises:
        DataError: the file is not a CSV/Parquet manifest, lacks ``label``, has unknown
            columns or no records (before anything else is checked).
        ManifestError: bad rows (with ``on_bad_rows="error"``), or a client left without
            records (always).
        ValueError: an argument is out of range.
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")
    if len(image_shape) != 3 or image_shape[0] not in CHANNEL_MODES or min(image_shape) < 1:
        raise ValueError(
            f"image_shape must be (C, H, W) with C in (1, 3) and H, W >= 1, got {image_shape}"
        )
    image_shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
    for name, names in (("label_names", label_names), ("expected_clients", expected_clients)):
        if names is not None and (len(set(names)) != len(names) or not all(names)):
            raise ValueError(f"{name} must be distinct non-empty strings, got {list(names)}")
    path = Path(path)
    clock = _Clock()
    table = read_table(path)
    root = path.parent.resolve()
    mod_cols = modality_columns(table.columns)
    parsed, bad = validate_cells(
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
    makers: dict[str, Callable[[], Featurizer]] = {
        "image": lambda: image_featurizer(image_shape),
        "audio": audio_featurizer,
    }
    # Made (and their libraries imported) in this thread before the encoder warm-up starts.
    featurizers = {m: make() for m, make in makers.items() if m in mod_cols}
    if "text" in mod_cols and text_tokens is None and (on_bad_rows == "skip" or not bad):
        # Load the sentence encoder in the background while the files are decoded; texts
        # are still embedded only after validation passed.
        assert parsed.texts is not None
        text_warm_up()([t for t in parsed.texts if t is not None], cache_dir=cache_dir)
    for m, feat in featurizers.items():
        cache = FeatureCache(cache_root, f"{feat.tag}-v{CACHE_VERSION}", feat.shape)
        keys, errs = file_features(parsed.paths[m], cache, feat, m, rows)
        bad += errs
        cache.flush()
        features[m], present[m] = stack_features(keys, cache)
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
        if text_tokens is None:
            embed_texts, dim = text_encoder()
        else:  # the model reads the text itself, as token ids
            from umbra.data.text_tokens import tokenize_texts

            embed_texts, dim = partial(tokenize_texts, length=int(text_tokens)), int(text_tokens)
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
        else natural_order(parsed.labels[i] for i in kept)
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
        source_records=kept.astype(np.int64),
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
