"""Validation of every cell that can be checked without decoding a file: labels, ids,
clients, paths, texts and tabular numbers. Every problem is collected, none raised."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umbra.data.manifest.paths import PathResolver
from umbra.data.manifest.problems import BadRow
from umbra.data.manifest.table import ManifestTable

__all__ = ["ParsedRows", "validate_cells"]


def _parse_number(cell: str) -> tuple[float | None, str | None]:
    try:
        x = float(cell)
    except ValueError:
        return None, f"not a number: {cell!r}"
    if not math.isfinite(x):
        return None, f"not a finite number: {cell!r}"
    return x, None


@dataclass
class ParsedRows:
    """Per-record values parsed from the table (None = missing)."""

    labels: list[str]
    ids: list[str] | None
    clients: list[str] | None
    paths: dict[str, list[str | None]]  # image/audio -> real path per record
    texts: list[str | None] | None
    tabular: np.ndarray | None  # (N, D) float64, zeros where missing
    tab_present: np.ndarray | None  # (N,) bool


def validate_cells(
    table: ManifestTable,
    root: Path,
    mod_cols: Mapping[str, list[str]],
    *,
    text_required: bool,
    label_names: Sequence[str] | None,
    expected_clients: Sequence[str] | None,
) -> tuple[ParsedRows, list[BadRow]]:
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
    resolve = PathResolver(root)
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

    parsed = ParsedRows(labels, ids, clients, paths, texts, tabular, tab_present)
    return parsed, bad
