"""Reading a manifest's table (CSV or Parquet) into stripped strings, and its columns.

File-level problems (not a CSV or Parquet file, unknown or missing columns, no records)
raise :class:`~umbra.errors.DataError` before any cell is checked; a CSV record with the
wrong number of fields is kept as a :class:`~umbra.data.manifest.problems.BadRow`.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umbra.data.dataset import MODALITIES
from umbra.data.manifest.problems import BadRow
from umbra.errors import DataError

__all__ = [
    "TAB_PREFIX",
    "ManifestTable",
    "modality_columns",
    "natural_key",
    "natural_order",
    "read_table",
]


TAB_PREFIX = "tab:"
_BASE_COLUMNS = ("label", "id", "client")
_MODALITY_COLUMNS = ("image", "audio", "text")
_CSV_SUFFIXES = frozenset({".csv"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_PARQUET_MAGIC = b"PAR1"


@dataclass
class ManifestTable:
    """A manifest as strings: its columns, every cell, and where each record starts."""

    columns: tuple[str, ...]
    cells: dict[str, list[str]]  # column -> one stripped string per record ("" = empty)
    rows: list[int]  # row number of each record, for messages
    row_kind: str
    shape_errors: list[BadRow]


def read_table(path: Path) -> ManifestTable:
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


def _read_csv(path: Path) -> ManifestTable:
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
    return ManifestTable(columns, cells, rows, "line in the CSV file (header = line 1)", errors)


def _parquet_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bytes):
        return "<bytes>"
    return str(v).strip()


def _read_parquet(path: Path) -> ManifestTable:
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
    return ManifestTable(columns, cells, list(range(1, table.num_rows + 1)), "record number", [])


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
    if not modality_columns(columns):
        raise DataError(
            f"manifest {path} has no modality column: add at least one of "
            f"{', '.join((*_MODALITY_COLUMNS, TAB_PREFIX + '<name>'))}"
        )


def modality_columns(columns: Sequence[str]) -> dict[str, list[str]]:
    """Modality -> its columns, canonical order, only modalities with a column."""
    tab = [c for c in columns if c.startswith(TAB_PREFIX)]
    found = {m: [m] for m in _MODALITY_COLUMNS if m in columns}
    if tab:
        found["tabular"] = tab
    return {m: found[m] for m in MODALITIES if m in found}


def natural_key(s: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``org2`` before ``org10``."""
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in re.split(r"(\d+)", s) if p)


def natural_order(labels: Iterable[str]) -> tuple[str, ...]:
    """Sorted label names: numerically when all are integers, else lexicographically."""
    uniq = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", s) for s in uniq):
        return tuple(sorted(uniq, key=int))
    return tuple(sorted(uniq))
